#!/usr/bin/env bash
# Everything in one command: a virtual environment in .venv with the gateway and its dev tools, the
# emulator's local CPU engines (real answers from `serve --emulator`, no device needed) and, as root,
# Debian's chromium and firefox-esr for the browser tests. Then activate it:  . .venv/bin/activate
#
#   VENV=/path/to/venv bash scripts/install.sh    # another place for the environment
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    python3 -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install -q --upgrade pip
echo "==> installing stackflow-openai[dev] into $VENV"
"$VENV/bin/python" -m pip install -q -e "$ROOT[dev]"
PYTHON="$VENV/bin/python" bash "$ROOT/scripts/install-local-engines.sh"
bash "$ROOT/scripts/install-debian-packages.sh"
echo "==> done: . ${VENV#"$PWD"/}/bin/activate && stackflow-openai serve --emulator"
