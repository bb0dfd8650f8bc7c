#!/usr/bin/env bash
# The README's test command: set up a virtualenv (once; later runs only check it is current), install
# the provider with its test tools (and, when npm is available, the Azurite storage emulator), and
# run pytest (arguments go to pytest).
#
#   bash scripts/test.sh [PYTEST ARGS]        the suite (stack tests deselected: -m stack runs them)
#   bash scripts/test.sh --under-load [ARGS]  the tests most sensitive to order and speed (UNDER_LOAD
#                                             below) in a random order, with two busy processes per
#                                             core beside them for the whole run: they must pass
#                                             there too. The seed is printed; MAI_ORDER_SEED=N repeats
#                                             an order, MAI_ORDER=reverse runs them last to first.
#
#   MAI_TEST_GROUPS  the dependency groups of pyproject.toml to install (default "test lint"; CI's
#                    oldest-Airflow run: "test-core", the test runner without object stores,
#                    lineage or browser tools)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
# shellcheck disable=SC2086
ensure_venv ".[emulator,ui,redis]" ${MAI_TEST_GROUPS:-test lint}
if command -v npm >/dev/null && [ ! -x .ci/node/node_modules/.bin/azurite-blob ]; then
  echo "Installing Azurite (Azure Blob emulator) into .ci/node with npm ..."
  npm install --prefix .ci/node --no-audit --no-fund --silent azurite@3 >/dev/null
fi
if [ "${1:-}" != "--under-load" ]; then
  exec "$VENV/bin/python" -m pytest "$@"
fi
shift

# The stack-free tests that start servers, run DAGs or measure time: pacing (file and Redis), the
# emulator, deadlines and hostile servers, the fault matrix, DAG runs and the UI in a browser.
# Selected by the names of their files and folders (which -k matches) until a marker names them.
UNDER_LOAD=(-k "pacing or emulator or hostile or fault_matrix or test_dags or plugin_ui or browser")
# Bounded: each busy process stops by itself after an hour should this script be killed outright.
BUSY='import time
end = time.monotonic() + 3600
while time.monotonic() < end:
    pass'
cores="$(getconf _NPROCESSORS_ONLN 2>/dev/null || echo 2)"
busy=()
stop_busy() {
  [ ${#busy[@]} -eq 0 ] || { kill "${busy[@]}" 2>/dev/null || true; wait "${busy[@]}" 2>/dev/null || true; }
  busy=()
}
trap stop_busy EXIT
trap 'stop_busy; exit 130' INT TERM
for _ in $(seq $((2 * cores))); do
  "$VENV/bin/python" -c "$BUSY" &
  busy+=($!)
done
order="${MAI_ORDER:-random}"
seed="${MAI_ORDER_SEED:-$(( (RANDOM << 15 | RANDOM) % 1000000 ))}"
echo "Under load: ${#busy[@]} busy processes beside the tests (PIDs ${busy[*]}), order $order" \
  "$([ "$order" = random ] && echo "(seed $seed; MAI_ORDER_SEED=$seed repeats it)")"
started=$SECONDS
status=0
"$VENV/bin/python" -m pytest -p tests.support.order --order="$order" --order-seed="$seed" \
  "${UNDER_LOAD[@]}" "$@" || status=$?
stop_busy
echo "Under load: pytest took $((SECONDS - started)) s (order $order, seed $seed)"
exit "$status"
