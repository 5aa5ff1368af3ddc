"""Crash safety of stored responses: a gateway killed with SIGKILL while clients are storing responses,
then restarted on the same data dir, serves every response it had answered, and the database is sound."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from stackflow_openai.store.sqlite import DB_NAME

SRC = Path(__file__).resolve().parents[1] / "src"
LLM = "qwen2.5-0.5B-p256-ax630c"


@contextmanager
def gateway(data_dir: Path) -> Iterator[tuple[subprocess.Popen[str], str]]:
    """`stackflow-openai serve --emulator` in a subprocess (its own process, so it can be SIGKILLed)."""
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "stackflow_openai", "serve", "--emulator", "--engine", "scripted"]
    command += ["--port", "0", "--data-dir", str(data_dir)]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert process.stdout is not None
        deadline = time.monotonic() + 60
        url = ""
        while not url:
            line = process.stdout.readline()
            assert line and time.monotonic() < deadline, "the gateway did not start"
            if line.startswith("OpenAI-compatible API on "):
                url = line.split(" on ", 1)[1].strip()
        yield process, url
    finally:
        if process.poll() is None:
            process.kill()
        process.wait(10)


def _client_loop(url: str, answered: list[str], stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=10) as http:
        while not stop.is_set():
            try:
                response = http.post("/responses", json={"model": LLM, "input": "one two three " * 5})
            except httpx.HTTPError:
                return  # the gateway is gone
            if response.status_code == 200:
                answered.append(response.json()["id"])


def test_kill_9_during_writes_loses_no_answered_response(tmp_path: Path) -> None:
    answered: list[str] = []
    with gateway(tmp_path) as (process, url):
        stop = threading.Event()
        clients = [threading.Thread(target=_client_loop, args=(url, answered, stop)) for _ in range(4)]
        for thread in clients:
            thread.start()
        deadline = time.monotonic() + 60
        while len(answered) < 30:  # well into a stream of writes
            assert time.monotonic() < deadline, f"only {len(answered)} responses answered"
            time.sleep(0.01)
        os.kill(process.pid, signal.SIGKILL)  # mid-write: four clients keep the store busy
        stop.set()
        for thread in clients:
            thread.join(15)
    killed_at = list(answered)
    with sqlite3.connect(tmp_path / DB_NAME) as db:  # recovery of the WAL happens on this open
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    with gateway(tmp_path) as (_process, url), httpx.Client(base_url=url, timeout=10) as http:
        for response_id in killed_at:
            response = http.get(f"/responses/{response_id}")
            assert response.status_code == 200, f"{response_id}: {response.text}"
            assert response.json()["status"] == "completed"
