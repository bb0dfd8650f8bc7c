#!/usr/bin/env bash
# The README's "run it" command: set up a virtualenv, install the provider with its emulator,
# and run the generate-then-edit example DAG end to end on real Airflow against the emulator.
# --ui: then show the images in Airflow's UI (api-server on 127.0.0.1) until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv ".[emulator,ui]"
exec "$VENV/bin/python" scripts/run_demo.py "$@"
