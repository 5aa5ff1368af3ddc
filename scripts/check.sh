#!/usr/bin/env bash
# The project's test command: lint, type-check, then the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
ruff check src tests benchmarks
ruff format --check src tests benchmarks
mypy
python -m pytest -q -m "not local" "$@"
