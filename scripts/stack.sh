#!/usr/bin/env bash
# A production-shaped Airflow on this machine (CeleryExecutor workers, PostgreSQL, Redis, the MAI
# emulator), everything on 127.0.0.1:
#   bash scripts/stack.sh up [--dags DIR] [--connection ID=URI] [--connections-file FILE]
#   bash scripts/stack.sh status [--json] | trigger DAG_ID [CONF_JSON] | restart COMPONENT... | down [--purge]
#   bash scripts/stack.sh COMMAND --help
# `up` first makes sure the provider and its `stack` extra are installed in the project's
# virtualenv (.venv); help never installs anything. Paths you give are from your current folder.
# Details: scripts/stack/ (python -m stack), and README "Run it like production".
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
source "$ROOT/scripts/_venv.sh"
case "$VENV" in /*) ;; *) VENV="$ROOT/$VENV" ;; esac

wants_help() {
  local arg
  for arg in "$@"; do
    case "$arg" in -h | --help) return 0 ;; esac
  done
  return 1
}

if [ "${1:-}" = "up" ] && ! wants_help "$@"; then
  (cd "$ROOT" && ensure_venv ".[stack]")
fi
# Help, status and down need nothing beyond the standard library before the stack exists.
PY="$VENV/bin/python"
[ -x "$PY" ] || PY="${PYTHON:-python3}"
PYTHONPATH="$ROOT/scripts${PYTHONPATH:+:$PYTHONPATH}" exec "$PY" -m stack "$@"
