#!/usr/bin/env bash
# Release smoke test (CI runs it on every run): what a user gets from the built distributions, not
# from the editable checkout.
#  1. builds the sdist and, from it, the wheel (python -m build) and checks both (twine check --strict);
#  2. installs the wheel with its emulator extra into a fresh virtualenv, with nothing else than what
#     it requires (apache-airflow), and works from a folder outside the repository;
#  3. checks that `airflow providers list` shows the provider, `airflow plugins` lists mai_images
#     once, the `mai-emulator` console script serves, and one example DAG (mai_generate_then_edit)
#     runs with `airflow dags test` against that emulator and writes its two images.
#   MAI_SMOKE_DIR  where to work (default: a new folder under /tmp, removed when all passed)
#   MAI_AIRFLOW    as in scripts/_venv.sh: requirements to install beside the wheel
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
source scripts/_venv.sh
ensure_venv ".[emulator,ui,redis]" release
WORK="${MAI_SMOKE_DIR:-$(mktemp -d /tmp/mai-smoke.XXXXXX)}"
mkdir -p "$WORK"
started=$SECONDS
emulator_pid=""
cleanup() {
  local status=$?
  if [ -n "$emulator_pid" ] && kill -0 "$emulator_pid" 2>/dev/null; then
    kill "$emulator_pid" 2>/dev/null || true
    wait "$emulator_pid" 2>/dev/null || true
  fi
  if [ "$status" -eq 0 ] && [ -z "${MAI_SMOKE_DIR:-}" ]; then
    rm -rf "$WORK"
  elif [ "$status" -ne 0 ]; then
    echo "SMOKE TEST FAILED (exit $status); its files and logs are in $WORK" >&2
  fi
}
trap cleanup EXIT
fail() { echo "SMOKE TEST FAILED: $*" >&2; exit 1; }
say() { printf '%s (at %d s)\n' "$*" "$((SECONDS - started))"; }

say "Building the sdist and the wheel into $WORK/dist"
rm -rf "$WORK/dist"
"$VENV/bin/python" -m build --outdir "$WORK/dist" . >"$WORK/build.log" 2>&1 ||
  fail "python -m build failed; the end of $WORK/build.log: $(tail -20 "$WORK/build.log")"
sdist="$(ls "$WORK"/dist/*.tar.gz)"
wheel="$(ls "$WORK"/dist/*.whl)"
ls -l "$WORK/dist"
"$VENV/bin/python" -m twine check --strict "$sdist" "$wheel" ||
  fail "twine check --strict refused the distributions (the package index would render or accept them badly)"

# What users install is the published extras; the tools we work with are dependency groups, which
# never reach the package's metadata.
"$VENV/bin/python" - "$wheel" <<'PY' || fail "the wheel's metadata publishes development tools (see above)"
import re, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as wheel:
    name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
    metadata = wheel.read(name).decode()
extras = set(re.findall(r"^Provides-Extra: (\S+)", metadata, re.M))
tools = re.findall(r"^Requires-Dist: ((?:pytest|ruff|mypy|moto|playwright|types-|build|twine)\S*)", metadata, re.M)
print(f"extras: {', '.join(sorted(extras))}")
unexpected = extras - {"emulator", "ui", "redis", "stack"}
if unexpected or tools:
    sys.exit(f"unexpected extras {sorted(unexpected)}, development tools {tools}")
PY

say "Installing the wheel into a fresh virtualenv $WORK/venv"
"$PYTHON" -m venv "$WORK/venv"
SMOKE="$WORK/venv/bin"
"$SMOKE/python" -m pip install --quiet --upgrade pip 2> >(grep -v "^WARNING: Location" >&2)
# shellcheck disable=SC2086
"$SMOKE/python" -m pip install --quiet "${wheel}[emulator]" ${MAI_AIRFLOW:-} >"$WORK/install.log" 2>&1 ||
  fail "pip install of the wheel failed; see $WORK/install.log: $(tail -20 "$WORK/install.log")"

# From here on: outside the repository, with a home and a DAG folder of its own.
mkdir -p "$WORK/run" "$WORK/dags" "$WORK/home"
cp "$ROOT/dags/mai_generate_then_edit.py" "$WORK/dags/"
cd "$WORK/run"
export AIRFLOW_HOME="$WORK/home" AIRFLOW__CORE__DAGS_FOLDER="$WORK/dags" AIRFLOW__CORE__LOAD_EXAMPLES=False
unset PYTHONPATH

installed="$("$SMOKE/python" -c 'import airflow_provider_mai as m; print(m.__file__)')"
case "$installed" in
  "$WORK/venv/"*) echo "provider imported from $installed" ;;
  *) fail "the provider was imported from $installed, not from the wheel's virtualenv" ;;
esac

# The last line of a CLI's JSON output (Airflow may print warnings before it), as one Python value.
json_of() { grep '^\[' | tail -1; }

say "airflow providers list"
"$SMOKE/airflow" providers list -o json >"$WORK/providers.json" 2>"$WORK/providers.err" ||
  fail "airflow providers list failed: $(cat "$WORK/providers.err")"
version="$(json_of <"$WORK/providers.json" | "$SMOKE/python" -c '
import json, sys
found = [p["version"] for p in json.load(sys.stdin) if p["package_name"] == "airflow-provider-mai"]
print(found[0] if len(found) == 1 else "")')"
[ -n "$version" ] || fail "airflow providers list does not show airflow-provider-mai exactly once: $(cat "$WORK/providers.json")"
echo "airflow-provider-mai $version is listed"

say "airflow plugins"
"$SMOKE/airflow" plugins -o json >"$WORK/plugins.json" 2>"$WORK/plugins.err" ||
  fail "airflow plugins failed: $(cat "$WORK/plugins.err")"
json_of <"$WORK/plugins.json" | "$SMOKE/python" -c '
import json, sys
names = [p["name"] for p in json.load(sys.stdin)]
sys.exit(0 if names.count("mai_images") == 1 else f"SMOKE TEST FAILED: airflow plugins lists {names}")'
! grep -q "already registered" "$WORK/plugins.err" "$WORK/plugins.json" ||
  fail "Airflow reported a plugin import error: $(grep "already registered" "$WORK/plugins.err" "$WORK/plugins.json")"
echo "mai_images is loaded once"

say "mai-emulator (console script)"
"$SMOKE/mai-emulator" --port 0 >"$WORK/emulator.log" 2>&1 &
emulator_pid=$!
url=""
for _ in $(seq 1 240); do  # up to 60 s for the first line
  url="$(sed -n 's/^MAI emulator listening on //p' "$WORK/emulator.log")"
  [ -n "$url" ] && break
  kill -0 "$emulator_pid" 2>/dev/null || fail "mai-emulator exited: $(cat "$WORK/emulator.log")"
  sleep 0.25
done
[ -n "$url" ] || fail "mai-emulator printed no URL within 60 s: $(cat "$WORK/emulator.log")"
echo "emulator at $url"
export AIRFLOW_CONN_MAI_DEFAULT="{\"conn_type\": \"mai\", \"host\": \"$url\", \"password\": \"emulator-key\", \"extra\": {\"deployment\": \"mai-image-2-5\"}}"

say "airflow db migrate; airflow dags test mai_generate_then_edit"
"$SMOKE/airflow" db migrate >"$WORK/migrate.log" 2>&1 || fail "airflow db migrate failed; see $WORK/migrate.log"
"$SMOKE/airflow" dags test mai_generate_then_edit --conf "{\"output_base\": \"$WORK/out\"}" \
  >"$WORK/dags-test.log" 2>&1 || fail "airflow dags test failed: $(tail -40 "$WORK/dags-test.log")"
grep -q "state=success" "$WORK/dags-test.log" || fail "the DAG run did not succeed: $(tail -40 "$WORK/dags-test.log")"
images="$(find "$WORK/out" -name '*.png' | wc -l)"
[ "$images" -eq 2 ] || fail "expected 2 images under $WORK/out, found $images"
kill "$emulator_pid"
wait "$emulator_pid" 2>/dev/null || true
emulator_pid=""
grep "stopped after" "$WORK/emulator.log" || true
say "Wheel smoke test passed: $(basename "$wheel") and $(basename "$sdist")"
