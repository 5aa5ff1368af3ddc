"""Shared pieces of the gateway benchmarks: server processes, /proc readings, a raw HTTP client, stats.

The load client is deliberately minimal (asyncio streams, pre-built request bytes, keep-alive, a
chunked-transfer reader that only looks for SSE event boundaries), so that what is measured is the
gateway and not an HTTP library in the benchmark process. Not a benchmark itself.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import platform
import selectors
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "LLM",
    "RawHttp",
    "Server",
    "StreamResult",
    "chat_body",
    "cpu_seconds",
    "machine_info",
    "percentiles",
    "rss_mib",
    "run_requests_benchmark",
    "server",
    "summary",
]

LLM = "qwen2.5-0.5B-p256-ax630c"
# A prompt and the scripted engine's answer to it: what the overhead benchmarks check every reply against.
PROMPT = "alpha beta gamma delta"
EXPECTED = "You said 4 words: alpha beta gamma delta."
HERE = Path(__file__).resolve().parent
_CLK_TCK = os.sysconf("SC_CLK_TCK")
_IO_TIMEOUT = 60.0  # every wait of the load client is bounded


def run_requests_benchmark(
    doc: str, run: Callable[[int, int], Coroutine[Any, Any, None]], *, requests: int, warmup: int
) -> None:
    """The command line of a benchmark that takes `--requests` measured and `--warmup` unmeasured
    requests per path: parse it and run `run(requests, warmup)`."""
    parser = argparse.ArgumentParser(description=doc.splitlines()[0])
    parser.add_argument("--requests", type=int, default=requests, help="measured requests per path")
    parser.add_argument("--warmup", type=int, default=warmup)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.warmup))


# ---- machine and process readings --------------------------------------------------------------


def machine_info() -> str:
    cpu = "unknown CPU"
    with open("/proc/cpuinfo", encoding="utf-8") as info:
        for line in info:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    load = Path("/proc/loadavg").read_text().split()[:3]
    return (
        f"{datetime.date.today().isoformat()}, {os.cpu_count()} CPUs ({cpu}), "
        f"Python {platform.python_version()}, load average {' '.join(load)}"
    )


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise LookupError(f"{field} not in /proc/{pid}/status")


def rss_mib(pid: int, *, peak: bool = False) -> float:
    """Resident set size now (VmRSS) or its peak since the process started (VmHWM), in MiB."""
    return _status_kib(pid, "VmHWM" if peak else "VmRSS") / 1024


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process used so far."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14 and 15)


# ---- server processes --------------------------------------------------------------------------


@dataclass
class Server:
    process: subprocess.Popen[bytes]
    port: int
    details: str  # what the process said after its port (the gateway: HTTP protocol and event loop)

    @property
    def pid(self) -> int:
        return self.process.pid


@contextmanager
def server(*args: str, timeout: float = 60.0) -> Iterator[Server]:
    """Run `_servers.py ARGS` in its own process until the block ends; yields its pid and port.

    Its log (the gateway's access lines: one per request) goes to a temporary file, kept and named only
    if the process fails to start."""
    prefix = f"stackflow-bench-{args[0]}-"
    with tempfile.NamedTemporaryFile(prefix=prefix, suffix=".log", delete=False) as log:
        process = subprocess.Popen(
            [sys.executable, str(HERE / "_servers.py"), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
        )
        try:
            try:
                ready = _ready(process, timeout)
            except RuntimeError as exc:
                raise RuntimeError(f"{exc} (its log: {log.name})") from None
            os.unlink(log.name)
            yield Server(process, *ready)
        finally:
            assert process.stdin is not None
            process.stdin.close()  # the server stops when its stdin closes
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def _ready(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, str]:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if selector.select(deadline - time.monotonic()):
                line = process.stdout.readline().decode()
                if line.startswith("READY "):
                    _, port, *details = line.split()
                    return int(port), " ".join(details)
                if not line:
                    break
    process.kill()
    raise RuntimeError(f"{process.args} did not start")


# ---- statistics --------------------------------------------------------------------------------


def percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 (nearest rank) of `values`."""
    ordered = sorted(values)

    def rank(p: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, round(p / 100 * len(ordered)) - 1))]

    return {"p50": rank(50), "p95": rank(95), "p99": rank(99), "mean": statistics.fmean(ordered)}


def summary(name: str, seconds: Sequence[float]) -> str:
    p = percentiles(seconds)
    return (
        f"{name:<28}{p['p50'] * 1e3:>9.3f}{p['p95'] * 1e3:>9.3f}{p['p99'] * 1e3:>9.3f}"
        f"{p['mean'] * 1e3:>9.3f}  (n={len(seconds)})"
    )


# ---- a raw HTTP/1.1 client ---------------------------------------------------------------------


def chat_body(text: str, *, stream: bool, model: str = LLM, **extra: Any) -> bytes:
    body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream, **extra}
    return json.dumps(body).encode()


@dataclass
class StreamResult:
    status: int
    first_content: float | None  # perf_counter when the first event with text arrived
    content_events: int  # SSE events carrying text (one device delta each, or several joined)
    errors: int  # in-band error events
    done: bool  # the stream ended with [DONE]
    marks: int = 0  # occurrences of the `count` bytes in the events carrying text


class RawHttp:
    """One keep-alive HTTP/1.1 connection to the gateway."""

    def __init__(self, port: int) -> None:
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def connect(self) -> None:
        async with asyncio.timeout(_IO_TIMEOUT):
            self._reader, self._writer = await asyncio.open_connection("127.0.0.1", self.port)

    async def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            try:
                async with asyncio.timeout(5):
                    await self._writer.wait_closed()
            except (OSError, TimeoutError):
                pass

    def _request(self, path: str, body: bytes) -> bytes:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
        )
        return head.encode() + body

    async def _send(self, path: str, body: bytes) -> tuple[int, dict[str, str]]:
        if self._writer is None:
            await self.connect()
        assert self._reader is not None and self._writer is not None
        self._writer.write(self._request(path, body))
        head = await self._reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            if ":" in line:
                key, value = line.split(":", 1)
                headers[key.strip().lower()] = value.strip()
        return status, headers

    async def _chunks(self, headers: dict[str, str]) -> Any:
        """The body, piece by piece as it arrives (content-length or chunked)."""
        assert self._reader is not None
        if "content-length" in headers:
            yield await self._reader.readexactly(int(headers["content-length"]))
            return
        while True:
            size = int((await self._reader.readline()).split(b";")[0], 16)
            data = await self._reader.readexactly(size + 2)
            if size == 0:
                return
            yield data[:-2]

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        async with asyncio.timeout(_IO_TIMEOUT):
            status, headers = await self._send(path, body)
            parts = [piece async for piece in self._chunks(headers)]
        return status, b"".join(parts)

    async def stream(self, path: str, body: bytes, *, count: bytes | None = None) -> StreamResult:
        """POST and read an SSE response, timing the first event that carries text; with `count`, also
        count its occurrences in the text events (e.g. a word the emulator repeats once per token)."""
        async with asyncio.timeout(_IO_TIMEOUT):
            status, headers = await self._send(path, body)
            result = StreamResult(status, None, 0, 0, False)
            pending = b""
            async for piece in self._chunks(headers):
                pending += piece
                *events, pending = pending.split(b"\n\n")
                for event in events:
                    _count_event(event, result, count)
        return result


def _count_event(event: bytes, result: StreamResult, count: bytes | None = None) -> None:
    if event.startswith(b"event: "):  # the Responses API names its events (and sends no [DONE])
        kind = event[len(b"event: ") : event.index(b"\n")]
        if kind in (b"response.completed", b"response.incomplete"):
            result.done = True
        elif kind == b"response.failed":
            result.errors += 1
        elif kind == b"response.output_text.delta":
            _count_content(event, result, count)
    elif event == b"data: [DONE]":
        result.done = True
    elif event.startswith(b'data: {"error"'):
        result.errors += 1
    elif b'"delta":{"content":"' in event or b'"text":"' in event:
        if b'"content":""' in event or b'"text":""' in event:
            return
        _count_content(event, result, count)


def _count_content(event: bytes, result: StreamResult, count: bytes | None) -> None:
    result.content_events += 1
    if count is not None:
        result.marks += event.count(count)
    if result.first_content is None:
        result.first_content = time.perf_counter()
