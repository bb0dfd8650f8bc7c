#!/usr/bin/env bash
# The README's test command: set up a virtualenv (once; later runs only check it is current), install
# the provider with its test tools (and, when npm is available, the Azurite storage emulator), and
# run pytest (arguments go to pytest).
#
#   bash scripts/test.sh [PYTEST ARGS]        the suite (stack tests deselected: -m stack runs them)
#   bash scripts/test.sh --under-load [ARGS]  the tests most sensitive to order and speed (UNDER_LOAD
#                                             below; test paths in ARGS replace it) in a random order,
#                                             with two busy processes per core beside them for the
#                                             whole run: they must pass there too. The seed is
#                                             printed; MAI_ORDER_SEED=N repeats an order,
#                                             MAI_ORDER=reverse runs them last to first.
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

# The stack-free tests that start servers or measure time: pacing (file and Redis), the emulator,
# deadlines and hostile servers, retries (the fault matrix), DAG runs (order: Assets, homes) and the
# object-store servers. Not the browser tests: they start a whole Airflow and Chromium and would
# triple this run. Test paths given after --under-load replace this selection (a marker will).
UNDER_LOAD=(tests/unit/client/pacing tests/unit/emulator tests/integration/test_hostile_endpoints.py
  tests/integration/test_fault_matrix.py tests/integration/test_dags.py tests/integration/test_object_stores.py)
for arg in "$@"; do
  if [ -e "${arg%%::*}" ]; then UNDER_LOAD=(); break; fi
done
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
  ${UNDER_LOAD[@]+"${UNDER_LOAD[@]}"} "$@" || status=$?
stop_busy
echo "Under load: pytest took $((SECONDS - started)) s (order $order, seed $seed)"
exit "$status"
