#!/usr/bin/env bash
# The README's test command: set up a virtualenv, install the provider with its test tools (and,
# when npm is available, the Azurite storage emulator), and run pytest (arguments go to pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/_venv.sh
ensure_venv ".[${MAI_TEST_EXTRAS:-test}]"
if command -v npm >/dev/null && [ ! -x .ci/node/node_modules/.bin/azurite-blob ]; then
  echo "Installing Azurite (Azure Blob emulator) into .ci/node with npm ..."
  npm install --prefix .ci/node --no-audit --no-fund --silent azurite@3 >/dev/null
fi
exec "$VENV/bin/python" -m pytest "$@"
