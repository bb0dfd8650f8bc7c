# Shared by demo.sh and test.sh: create (once) and fill the project's virtualenv.
#   MAI_VENV        the virtualenv's folder (default .venv)
#   PYTHON          the interpreter that creates it (default python3)
#   MAI_AIRFLOW     an Airflow requirement to install with it, e.g. "apache-airflow==3.0.6" (CI's
#                   oldest-version run); default: the newest release the project allows
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
  "$VENV/bin/python" -m pip install --quiet -e "$1" ${MAI_AIRFLOW:+"$MAI_AIRFLOW"} \
    2> >(grep -v -e '^WARNING: Location' -e 'BuildBackendWarning' -e '^ *!!$' -e '^ *\*\*\*' \
         -e 'Please be careful with folders' -e 'name as your package' -e 'with strategy, WheelFile' \
         -e '^ *$' -e "return '\\\\n'.join" >&2)
}
