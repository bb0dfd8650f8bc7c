#!/usr/bin/env bash
# A production-shaped Airflow on this machine (CeleryExecutor workers, PostgreSQL, Redis, the MAI
# emulator), everything on 127.0.0.1:
#   bash scripts/stack.sh up | status [--json] | trigger DAG_ID [CONF_JSON] | down [--purge]
# `up` first installs the provider with its `stack` extra into the project's virtualenv (.venv).
# Details: scripts/stack/ (python -m stack), and README "Run it like production".
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
if [ "${1:-}" = "up" ] || [ ! -x "$VENV/bin/python" ]; then
  ensure_venv ".[stack]"
fi
PYTHONPATH="$PWD/scripts${PYTHONPATH:+:$PYTHONPATH}" exec "$VENV/bin/python" -m stack "$@"
