"""What the Responses API adds over chat completions: the same question through both front ends.

    python benchmarks/responses_overhead.py [--requests 500] [--warmup 50]

Emulator (scripted engine, zero delay), gateway and this load client each run in their own process on
127.0.0.1; the gateway stores responses in a temporary data dir. Three paths, taken in turn (in a
rotating order) so that machine noise hits them alike, each over its own keep-alive HTTP/1.1
connection:

- chat:        POST /v1/chat/completions
- responses:   POST /v1/responses with store=false (the front end alone: input items, Response object)
- stored:      POST /v1/responses (store defaults to true: plus one SQLite commit, fsynced, per request)

Measured: non-stream latency (request sent → whole answer) and time to first token (stream=true:
request sent → first event carrying text), p50 of each, and the gateway's CPU time per request.
Printed as ratios to chat completions from this one run.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Awaitable, Callable

from _bench import (
    EXPECTED,
    LLM,
    PROMPT,
    RawHttp,
    chat_body,
    cpu_seconds,
    machine_info,
    percentiles,
    run_requests_benchmark,
    server,
    summary,
)

PATHS = ("chat", "responses", "stored")


def responses_body(*, stream: bool, store: bool) -> bytes:
    return json.dumps({"model": LLM, "input": PROMPT, "stream": stream, "store": store}).encode()


def answer_text(path: str, raw: bytes) -> str:
    body = json.loads(raw)
    if path == "chat":
        return str(body["choices"][0]["message"]["content"])
    return str(body["output"][0]["content"][0]["text"])


class Path:
    def __init__(self, name: str, port: int) -> None:
        self.name = name
        self.http = RawHttp(port)
        self.url = "/v1/chat/completions" if name == "chat" else "/v1/responses"
        store = name == "stored"
        self.full = (
            chat_body(PROMPT, stream=False) if name == "chat" else responses_body(stream=False, store=store)
        )
        self.stream = (
            chat_body(PROMPT, stream=True) if name == "chat" else responses_body(stream=True, store=store)
        )

    async def whole(self) -> float:
        start = time.perf_counter()
        status, raw = await self.http.post(self.url, self.full)
        elapsed = time.perf_counter() - start
        assert status == 200 and answer_text(self.name, raw) == EXPECTED, raw
        return elapsed

    async def first(self) -> float:
        start = time.perf_counter()
        result = await self.http.stream(self.url, self.stream)
        assert result.status == 200 and result.done and result.first_content is not None, result
        return result.first_content - start


async def measure(
    paths: list[Path],
    pairs: int,
    warmup: int,
    pick: Callable[[Path], Callable[[], Awaitable[float]]],
    pid: int,
) -> tuple[dict[str, list[float]], dict[str, float]]:
    times: dict[str, list[float]] = {p.name: [] for p in paths}
    cpu: dict[str, float] = dict.fromkeys(times, 0.0)
    for i in range(warmup + pairs):
        # The order rotates: a request right after another path's one was measurably slower or faster.
        for path in paths[i % len(paths) :] + paths[: i % len(paths)]:
            before = cpu_seconds(pid)
            elapsed = await pick(path)()
            if i >= warmup:
                times[path.name].append(elapsed)
                cpu[path.name] += cpu_seconds(pid) - before
    return times, {name: total / pairs for name, total in cpu.items()}


def report(title: str, times: dict[str, list[float]], cpu: dict[str, float]) -> None:
    print(f"\n{title}")
    print(f"{'':<28}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    for name, values in times.items():
        print(summary(name, values))
    base = percentiles(times["chat"])["p50"]
    for name in PATHS[1:]:
        p50 = percentiles(times[name])["p50"]
        print(
            f"{name}: p50 {p50 / base:.2f}x chat ({(p50 - base) * 1e3:+.3f} ms); gateway CPU per request "
            f"{cpu[name] * 1e3:.2f} ms vs chat {cpu['chat'] * 1e3:.2f} ms ({cpu[name] / cpu['chat']:.2f}x)"
        )


async def run(pairs: int, warmup: int) -> None:
    print(machine_info())
    with (
        tempfile.TemporaryDirectory(prefix="stackflow-bench-data-") as data_dir,
        server("emulator") as emulator,
        server("gateway", "--device", f"127.0.0.1:{emulator.port}", "--data-dir", data_dir) as gw,
    ):
        print(f"gateway: uvicorn {gw.details}; stored responses in {data_dir}")
        paths = [Path(name, gw.port) for name in PATHS]
        try:
            times, cpu = await measure(paths, pairs, warmup, lambda p: p.whole, gw.pid)
            report("non-stream, whole answer", times, cpu)
            times, cpu = await measure(paths, pairs, warmup, lambda p: p.first, gw.pid)
            report("time to first token (stream=true)", times, cpu)
        finally:
            for path in paths:
                await path.http.close()


def main() -> None:
    run_requests_benchmark(__doc__, run, requests=500, warmup=50)


if __name__ == "__main__":
    main()
