#!/usr/bin/env bash
# The local-engine test group: real CPU models behind the emulator (install them first with
# scripts/install-local-engines.sh). Fails, rather than skips, when the engines are missing.
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import sys
from stackflow_openai.emulator.engines.local import local_engines_status
status = local_engines_status()
missing = {k: status[k] for k in ("llm", "tts", "asr") if status.get(k) is not True}
if missing:
    sys.exit(f"local engines not ready: {missing}; run scripts/install-local-engines.sh")
PY
python -m pytest -q -m local tests/local "$@"
