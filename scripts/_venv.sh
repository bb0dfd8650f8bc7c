# Shared by demo.sh and test.sh: create (once) and fill the project's virtualenv.
#   MAI_VENV        the virtualenv's folder (default .venv)
#   PYTHON          the interpreter that creates it (default python3)
#   MAI_AIRFLOW     requirements installed with it, space-separated, e.g. "apache-airflow==3.2.0"
#                   (CI's oldest-version run); default: the newest releases the project allows
VENV="${MAI_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating virtualenv $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
  fi
  echo "Installing the provider ($1) into $VENV (first time: a few minutes) ..."
  # Keep pip quiet, but let real errors through.
  "$VENV/bin/python" -m pip install --quiet --upgrade pip 2> >(grep -v '^WARNING: Location' >&2)
  # shellcheck disable=SC2086
  "$VENV/bin/python" -m pip install --quiet -e "$1" ${MAI_AIRFLOW:-} \
    2> >(grep -v -e '^WARNING: Location' -e 'BuildBackendWarning' -e '^ *!!$' -e '^ *\*\*\*' \
         -e 'Please be careful with folders' -e 'name as your package' -e 'with strategy, WheelFile' \
         -e '^ *$' -e "return '\\\\n'.join" >&2)
}
