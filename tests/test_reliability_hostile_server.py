"""Hostile clients and a hostile device against a real `stackflow-openai serve` process (issue 13, 3-5).

- connections that send nothing, or their headers a byte at a time, are closed after server.header_timeout;
- connections beyond server.max_connections get an immediate 503 in OpenAI's shape;
- SIGTERM under long streams: each stream ends with an error event and [DONE] after server.shutdown_grace,
  the process exits well within its budget, and no unit is left on the device;
- a device that hangs: waiting requests fail as soon as the monitor marks it down, not after idle_timeout.

The emulator runs in this process (a background loop); the gateway is a subprocess on 127.0.0.1.
"""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from gateway_runner import BackgroundLoop
from ops_harness import MultiHarness
from stackflow_openai.config import HealthSettings, Settings
from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.ops.connections import RepeatFilter

LLM = "qwen2.5-0.5B-p256-ax630c"
SRC = str(Path(__file__).resolve().parents[1] / "src")


def _limit_fds(count: int) -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (count, count))


class ServeProcess:
    """An emulator (in this process) and `python -m stackflow_openai serve` in front of it."""

    def __init__(
        self, tmp: Path, server: dict[str, object], tokens_per_second: float = 0.0, max_fds: int = 0
    ) -> None:
        self.loop = BackgroundLoop()
        self.loop.thread.start()
        engine = ScriptedEngine(timing=Timing(tokens_per_second=tokens_per_second))
        self.emulator = Emulator(engine=engine, hwinfo_delay=0.05)
        self.loop.call(lambda: self.emulator.start("127.0.0.1", 0))
        config = {"server": server, "health": {"probe_interval": 0.5, "probe_timeout": 1.0}}
        path = tmp / "config.yaml"
        path.write_text(json.dumps(config))  # JSON is YAML
        env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "stackflow_openai", "--log-level", "warning", "serve",
             "--config", str(path), "--port", "0", "--device", f"127.0.0.1:{self.emulator.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
            preexec_fn=(lambda: _limit_fds(max_fds)) if max_fds else None,
        )  # fmt: skip
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        self.port = self._wait_ready()

    def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.stderr.append(line)

    def _wait_ready(self) -> int:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if "OpenAI-compatible API on http://" in line:
                port = int(line.rsplit(":", 1)[1].split("/", 1)[0])
                deadline = time.monotonic() + 20
                while httpx.get(f"http://127.0.0.1:{port}/ready").status_code != 200:
                    assert time.monotonic() < deadline, "the gateway never became ready"
                    time.sleep(0.05)
                return port
        raise AssertionError(f"the gateway did not start: {''.join(self.stderr)}")

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def live_instances(self) -> list[dict[str, object]]:
        return list(self.loop.call(self.emulator.live_instances))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)
        self.loop.call(self.emulator.stop)
        self.loop.stop_loop()


def chat_ok(url: str) -> None:
    body = {"model": LLM, "messages": [{"role": "user", "content": "still here"}]}
    r = httpx.post(f"{url}/chat/completions", json=body, timeout=10)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "You said 2 words: still here."


def closed_within(sock: socket.socket, seconds: float) -> bytes:
    """Everything the server sent before closing the connection; fails if it stays open longer."""
    sock.settimeout(seconds)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except TimeoutError:
        raise AssertionError(f"still open after {seconds} s (received {received!r})") from None
    except ConnectionResetError:
        pass
    return received


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    server = {"header_timeout": 1.0, "keep_alive_timeout": 1.0, "max_connections": 40}
    process = ServeProcess(tmp_path_factory.mktemp("guarded"), server)
    try:
        yield process
    finally:
        process.stop()


def test_silent_and_slow_connections_are_closed_after_the_header_timeout(guarded: ServeProcess) -> None:
    silent = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(10)]
    slow = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(10)]
    started = time.monotonic()
    request = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: "
    for i in range(3):  # a byte per 0.3 s: never 1 s of silence (the deadline is not per byte)
        for sock in slow:
            sock.sendall(request[i : i + 1])
        time.sleep(0.3)
    chat_ok(guarded.url)  # the server serves others meanwhile
    for sock in silent:
        assert closed_within(sock, 3.0) == b""  # nothing was asked: closed without a word
    for sock in slow:
        answer = closed_within(sock, 3.0)
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "request_timeout"
    assert time.monotonic() - started < 4.0
    for sock in silent + slow:
        sock.close()
    chat_ok(guarded.url)


def test_idle_keep_alive_connections_are_closed(guarded: ServeProcess) -> None:
    sock = socket.create_connection(("127.0.0.1", guarded.port))
    sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    sock.settimeout(3)
    assert sock.recv(4096).startswith(b"HTTP/1.1 200")
    started = time.monotonic()
    closed_within(sock, 3.0)
    assert time.monotonic() - started < 2.5  # keep_alive_timeout 1 s
    sock.close()


def test_connections_beyond_the_cap_get_a_503_and_the_server_recovers(guarded: ServeProcess) -> None:
    held = [socket.create_connection(("127.0.0.1", guarded.port)) for _ in range(55)]
    time.sleep(0.4)  # refused ones are answered at once; admitted ones wait (header timeout: 1 s)
    refused = 0
    for sock in held:
        sock.setblocking(False)
        try:
            answer = sock.recv(4096)
        except BlockingIOError:
            continue  # one of the 40 admitted
        assert answer.startswith(b"HTTP/1.1 503"), answer
        head, body = answer.split(b"\r\n\r\n", 1)
        assert b"retry-after: 1" in head.lower()
        error = json.loads(body)["error"]
        assert error["code"] == "too_many_connections" and error["type"] == "server_error"
        refused += 1
    assert 15 <= refused <= 16, refused  # 55 - 40 (one more if a check request's socket still lingered)
    for sock in held:
        sock.close()
    time.sleep(0.3)
    chat_ok(guarded.url)


def test_out_of_descriptors_the_log_stays_small_and_the_server_recovers(tmp_path: Path) -> None:
    # A cap set above the process's descriptor limit (a misconfiguration): the accept loop hits EMFILE.
    server = {"header_timeout": 2.0, "max_connections": 1000}
    gateway = ServeProcess(tmp_path, server, max_fds=96)
    try:
        held = []
        for _ in range(150):
            try:
                held.append(socket.create_connection(("127.0.0.1", gateway.port), timeout=1))
            except OSError:
                break  # the listen backlog is full too
        time.sleep(2.5)  # the accept loop fails again and again meanwhile (retried every 0.1-1 s by asyncio)
        for sock in held:
            sock.close()
        time.sleep(0.5)
        chat_ok(gateway.url)  # the descriptors came back: served again
        log = "".join(gateway.stderr)
        failures = log.count("out of system resource")
        assert 1 <= failures <= 2, log[-3000:]  # identical records: once per 10 s (then a count), not a flood
        assert len(log) < 20_000, len(log)
    finally:
        gateway.stop()


def read_events(response: httpx.Response) -> list[str]:
    return [line[6:] for line in response.iter_lines() if line.startswith("data: ")]


def test_sigterm_ends_long_streams_cleanly_and_leaves_no_unit(tmp_path: Path) -> None:
    grace = 1.5
    gateway = ServeProcess(tmp_path, {"shutdown_grace": grace}, tokens_per_second=20)
    try:
        body = {"model": LLM, "messages": [{"role": "user", "content": "w " * 40}], "stream": True,
                "max_tokens": 600}  # fmt: skip
        results: dict[int, list[str]] = {}

        def stream(i: int) -> None:
            with httpx.stream("POST", f"{gateway.url}/chat/completions", json=body, timeout=30) as r:
                assert r.status_code == 200
                results[i] = read_events(r)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(2)]
        for t in threads:
            t.start()
        deadline = time.monotonic() + 10
        while len([i for i in gateway.live_instances() if i["state"] == "busy"]) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        queued: list[httpx.Response] = []  # a third request waits for one of the two llm instances
        waiter = threading.Thread(target=lambda: queued.append(httpx.post(
            f"{gateway.url}/chat/completions", json={**body, "stream": False}, timeout=30)))  # fmt: skip
        waiter.start()
        time.sleep(0.3)
        started = time.monotonic()
        gateway.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(20)
        # uvicorn re-raises the SIGTERM it handled once it is done: a clean stop for systemd either way.
        assert gateway.process.wait(20) in (0, -signal.SIGTERM)
        took = time.monotonic() - started
        assert grace <= took < grace + 6, took  # the budget: grace + unit exits, far under TimeoutStopSec
        for events in results.values():
            assert events[-1] == "[DONE]"
            error = json.loads(events[-2])["error"]
            assert error["code"] == "server_shutting_down", error
            assert len(events) > 3  # text came before the cut
        assert len(results) == 2
        assert queued[0].status_code == 503 and queued[0].json()["error"]["code"] == "server_shutting_down"
        assert gateway.live_instances() == []  # paused and exited, not left on the device
    finally:
        gateway.stop()


def test_a_hung_device_fails_its_waiting_requests_when_it_is_marked_down() -> None:
    health = HealthSettings(probe_interval=0.3, probe_timeout=0.5, max_backoff=0.5, stats_interval=60)
    h = MultiHarness(["a"], Settings(health=health), timing=Timing(tokens_per_second=20)).start()
    try:
        emulator = h.emulators["a"]
        body = {"model": LLM, "messages": [{"role": "user", "content": "w " * 40}], "stream": True,
                "max_tokens": 600}  # fmt: skip
        with httpx.stream("POST", f"{h.base_url}/v1/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(line for line in lines if line.startswith("data: "))
            emulator.faults.hang = 1
            started = time.monotonic()
            # Two more requests: one sets up the llm's second instance (its setup never answers), the
            # other waits in the queue behind it.
            with ThreadPoolExecutor(2) as pool:
                later = list(pool.map(lambda _: httpx.post(
                    f"{h.base_url}/v1/chat/completions",
                    json={"model": LLM, "messages": [{"role": "user", "content": "x"}]},
                    timeout=30,
                ), range(2)))  # fmt: skip
            events = [line[6:] for line in lines if line.startswith("data: ")]
        took = time.monotonic() - started
        # Marked down after probe_interval + probe_timeout (0.8 s), not after idle_timeout (30 s).
        assert took < 5, took
        assert events[-1] == "[DONE]"
        assert json.loads(events[-2])["error"]["code"] == "device_unavailable"
        for r in later:
            assert r.status_code == 503, r.text
            assert r.json()["error"]["code"] == "device_unavailable"
        emulator.faults.hang = 0
        h.wait_for_state("a", "up")
        reply = h.client().chat.completions.create(model=LLM, messages=[{"role": "user", "content": "ok"}])
        assert reply.choices[0].message.content == "You said 1 word: ok."
        h.assert_no_leak()
    finally:
        h.stop()


def test_repeated_identical_log_records_are_rate_limited() -> None:
    now = [0.0]
    repeat = RepeatFilter(10.0, clock=lambda: now[0])

    def record(msg: str) -> logging.LogRecord:
        return logging.LogRecord("asyncio", logging.ERROR, __file__, 1, msg, None, None)

    assert repeat.filter(record("socket.accept() out of system resource"))
    passed = sum(repeat.filter(record("socket.accept() out of system resource")) for _ in range(5000))
    assert passed == 0  # the flood of one message is held back
    assert repeat.filter(record("another message"))
    now[0] = 11.0
    again = record("socket.accept() out of system resource")
    assert repeat.filter(again)
    assert again.getMessage().endswith("(5000 identical messages suppressed)")
