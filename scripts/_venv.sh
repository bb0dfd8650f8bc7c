# Shared by demo.sh and test.sh: create (once) and fill the project's virtualenv.
VENV="${MAI_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"

ensure_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    echo "Creating virtualenv $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
  fi
  echo "Installing the provider ($1) into $VENV (first time: about a minute) ..."
  # Keep pip quiet, but let real errors through.
  "$VENV/bin/python" -m pip install --quiet --upgrade pip 2> >(grep -v '^WARNING: Location' >&2)
  "$VENV/bin/python" -m pip install --quiet -e "$1" 2> >(grep -v '^WARNING: Location' >&2)
}
