"""The README's run line with the README's install: `stackflow-openai serve --emulator` (engine auto →
the local models) answers a factual question with no max_tokens, as a newcomer would ask it."""

from __future__ import annotations

import re
import signal
import subprocess
import sys

import httpx
import pytest
from local_support import require

for kind in ("llm", "tts", "asr"):
    require(kind)

pytestmark = pytest.mark.local


def test_serve_emulator_answers_paris():
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackflow_openai", "serve", "--emulator", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert proc.stdout is not None
        lines = []
        for _ in range(30):
            lines.append(proc.stdout.readline())
            if match := re.search(r"(http://[\d.]+:\d+/v1)", lines[-1]):
                break
        else:
            raise AssertionError(f"no API address printed: {lines}")
        assert any("engine: local CPU models" in line for line in lines), lines
        reply = httpx.post(
            f"{match.group(1)}/chat/completions",
            json={
                "model": "gpt-4o-mini",
                "messages": [{"role": "user", "content": "What is the capital of France?"}],
            },
            timeout=120,
        )
        assert reply.status_code == 200
        assert "paris" in reply.json()["choices"][0]["message"]["content"].lower()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(20)
        finally:
            if proc.poll() is None:
                proc.kill()
