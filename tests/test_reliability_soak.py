"""scripts/soak.py, once, with a small count: mixed requests with client disconnects through a real gateway
process, then no leaked instance and bounded memory growth. The full run (10,000 requests) is manual:
`python scripts/soak.py` (docs/performance.md)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SOAK = Path(__file__).resolve().parents[1] / "scripts" / "soak.py"


def test_a_short_soak_passes() -> None:
    command = [
        sys.executable,
        str(SOAK),
        "--requests",
        "300",
        "--concurrency",
        "8",
        "--seed",
        "7",
        "--max-seconds",
        "40",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=100)
    report = result.stdout[-3000:] + result.stderr[-3000:]
    assert result.returncode == 0, report
    assert "PASS" in result.stdout and "leaked" not in result.stdout, report
    assert "device instances after the gateway stopped: 0" in result.stdout, report
