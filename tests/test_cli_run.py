"""The commands a newcomer runs: `stackflow-openai emulator` and `serve --emulator`, as real processes."""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys

import httpx


def start(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "stackflow_openai", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def read_until(proc: subprocess.Popen[str], pattern: str) -> re.Match[str]:
    assert proc.stdout is not None
    seen = []
    for _ in range(20):
        line = proc.stdout.readline()
        seen.append(line)
        if match := re.search(pattern, line):
            return match
    raise AssertionError(f"{pattern!r} not printed: {seen}")


def stop(proc: subprocess.Popen[str]) -> int:
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends
    try:
        return proc.wait(15)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_emulator_command_prints_its_port_answers_and_stops_on_ctrl_c():
    proc = start("emulator", "--host", "127.0.0.1", "--port", "0")
    try:
        port = int(read_until(proc, r"listening on 127\.0\.0\.1:(\d+)").group(1))
        with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
            sock.sendall(b'{"request_id":"1","work_id":"sys","action":"version"}\n')
            reply = json.loads(sock.makefile("rb").readline())
        assert reply["data"] == "v1.6" and reply["request_id"] == "1"
    finally:
        assert stop(proc) == 0


def test_serve_with_emulator_serves_the_api_and_stops_on_ctrl_c():
    # Scripted: fast and the same wherever the suite runs (the local engines are installed by the
    # README's install line; tests/local/test_local_cli.py runs this command with them).
    proc = start("serve", "--emulator", "--engine", "scripted", "--port", "0")
    try:
        base = read_until(proc, r"(http://[\d.]+:\d+/v1)").group(1)
        models = httpx.get(f"{base}/models", timeout=10).json()
        assert "qwen2.5-0.5B-p256-ax630c" in [m["id"] for m in models["data"]]
        reply = httpx.post(
            f"{base}/chat/completions",
            json={"model": "qwen2.5-0.5B-p256-ax630c", "messages": [{"role": "user", "content": "hi"}]},
            timeout=60,
        )
        assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"]
    finally:
        assert stop(proc) == 0
