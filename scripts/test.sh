#!/usr/bin/env bash
# The README's test command: set up a virtualenv, install the provider with its test tools,
# and run pytest (arguments are passed on to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv ".[test]"
exec "$VENV/bin/python" -m pytest "$@"
