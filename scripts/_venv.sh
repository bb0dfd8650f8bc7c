# Shared by demo.sh, test.sh, stack.sh and .ci/run: create (once) and fill the project's virtualenv.
#   MAI_VENV        the virtualenv's folder (default .venv)
#   PYTHON          the interpreter that creates it (default python3)
#   MAI_AIRFLOW     requirements installed with it, space-separated, e.g. "apache-airflow==3.2.0"
#                   (CI's oldest-version run); default: the newest releases the project allows
#
# ensure_venv SPEC [GROUP ...] installs the project editable with SPEC's extras (e.g. ".[stack]")
# and the named PEP 735 dependency groups of pyproject.toml (e.g. test lint). It writes what it
# installed to $VENV/.mai-installed and runs pip only when the request is not already covered:
# when pyproject.toml, the provider's version, MAI_AIRFLOW or the venv's Python changed, or when
# extras or groups are asked for that were never installed. Requests add up: pip is always given
# the union of everything installed since the last change (so `.[stack]` after `.[emulator,ui]
# --group test` installs both, resolved together, and neither evicts the other). `rm -r .venv`
# starts over.
VENV="${MAI_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"


# The words of a comma- or space-separated list, sorted and unique, space-separated.
_mai_words() { tr ', ' '\n\n' <<<"$*" | sed '/^$/d' | sort -u | tr '\n' ' ' | sed 's/ $//'; }

ensure_venv() {
  local spec="$1"
  shift
  local extras groups key stamp="$VENV/.mai-installed"
  extras="$(_mai_words "$(sed -n 's/^[^[]*\[\(.*\)\]$/\1/p' <<<"$spec")")"
  groups="$(_mai_words "$*")"
  if ! "$VENV/bin/python" -c '' 2>/dev/null; then  # missing, or its interpreter is gone
    echo "Creating virtualenv $VENV with $("$PYTHON" --version) (then installing: a few minutes) ..."
    "$PYTHON" -m venv --clear "$VENV"
  fi
  # What an install depends on; any change means pip must run again.
  key="$("$VENV/bin/python" - "${MAI_AIRFLOW:-}" <<'PY'
import hashlib, re, sys
from pathlib import Path
version = re.search(r'__version__\s*=\s*"([^"]+)"', Path("airflow_provider_mai/__init__.py").read_text())
digest = hashlib.sha256(Path("pyproject.toml").read_bytes()).hexdigest()[:16]
print(f"pyproject={digest} version={version and version[1]} airflow={sys.argv[1]!r} python={sys.version.split()[0]}")
PY
)"
  if [ -f "$stamp" ] && [ "$(sed -n 1p "$stamp")" = "$key" ]; then
    local had_extras had_groups
    had_extras="$(sed -n 's/^extras=//p' "$stamp")"
    had_groups="$(sed -n 's/^groups=//p' "$stamp")"
    if [ "$(_mai_words "$had_extras $extras")" = "$had_extras" ] &&
       [ "$(_mai_words "$had_groups $groups")" = "$had_groups" ]; then
      echo "Virtualenv $VENV is current (extras: ${had_extras:-none}; groups: ${had_groups:-none})"
      return 0
    fi
    extras="$(_mai_words "$had_extras $extras")"
    groups="$(_mai_words "$had_groups $groups")"
  fi
  rm -f "$stamp"  # no stamp while pip runs: an interrupted install is redone next time
  echo "Installing the provider into $VENV (extras: ${extras:-none}; groups: ${groups:-none}) ..."
  # Keep pip quiet, but let real errors through.
  "$VENV/bin/python" -m pip install --quiet --upgrade pip 2> >(grep -v '^WARNING: Location' >&2)
  local group_args=() group
  for group in $groups; do group_args+=(--group "$group"); done
  if [ -n "$groups" ] && ! "$VENV/bin/python" -c '
import sys
from pip import __version__ as v
sys.exit(tuple(int(p) for p in v.split(".")[:2] if p.isdigit()) < (25, 1))'; then
    echo "pip in $VENV cannot install dependency groups (needs pip >= 25.1): $("$VENV/bin/python" -m pip --version)" >&2
    return 1
  fi
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet -e ".${extras:+[${extras// /,}]}" ${group_args[@]+"${group_args[@]}"} ${MAI_AIRFLOW:-} \
    2> >(grep -v -e '^WARNING: Location' -e 'BuildBackendWarning' -e '^ *!!$' -e '^ *\*\*\*' \
         -e 'Please be careful with folders' -e 'name as your package' -e 'with strategy, WheelFile' \
         -e '^ *$' -e "return '\\\\n'.join" >&2)
  printf '%s\nextras=%s\ngroups=%s\n' "$key" "$extras" "$groups" >"$stamp"
}
