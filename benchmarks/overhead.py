"""What the gateway adds to one request: the same chat request through the gateway and made directly.

    python benchmarks/overhead.py [--requests 1000] [--warmup 100]

Emulator (scripted engine, zero delay), gateway and this load client each run in their own process on
127.0.0.1. "direct" is the project's device client (`DeviceClient.open_unit` + `Unit.generate`) on a
unit set up exactly as the gateway sets up its own (same model, system prompt and max_token_len);
"gateway" is POST /v1/chat/completions over a keep-alive HTTP/1.1 connection. Requests alternate
direct / gateway, so machine noise hits both alike.

Two measurements:
- non-stream latency: request sent → whole answer received;
- time to first token (TTFT): request sent → first event carrying text (stream=true), vs the first
  delta `Unit.generate` yields.

Overhead = gateway − direct (p50 of each). Targets: non-stream ≤ 1 ms, TTFT ≤ 2 ms. Also printed: the
gateway's CPU time per request (from /proc), which is what limits requests per second per core.
"""

from __future__ import annotations

import json
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

from stackflow_openai.services.prompt import DEFAULT_SYSTEM_PROMPT
from stackflow_openai.stackflow.client import DeviceClient
from stackflow_openai.stackflow.setups import llm_setup
from stackflow_openai.stackflow.unit import Unit

PATH = "/v1/chat/completions"


async def direct_full(unit: Unit) -> float:
    start = time.perf_counter()
    text = "".join([piece async for piece in unit.generate(PROMPT, idle_timeout=10)])
    elapsed = time.perf_counter() - start
    assert text == EXPECTED, text
    return elapsed


async def direct_first(unit: Unit) -> float:
    start = time.perf_counter()
    pieces = unit.generate(PROMPT, idle_timeout=10)
    first = await anext(pieces)
    elapsed = time.perf_counter() - start
    rest = [piece async for piece in pieces]
    assert first + "".join(rest) == EXPECTED
    return elapsed


async def gateway_full(http: RawHttp, body: bytes) -> float:
    start = time.perf_counter()
    status, raw = await http.post(PATH, body)
    elapsed = time.perf_counter() - start
    assert status == 200, raw
    assert json.loads(raw)["choices"][0]["message"]["content"] == EXPECTED
    return elapsed


async def gateway_first(http: RawHttp, body: bytes) -> float:
    start = time.perf_counter()
    result = await http.stream(PATH, body)
    assert result.status == 200 and result.done and result.first_content is not None, result
    return result.first_content - start


async def measure(
    pairs: int, warmup: int, direct: Callable[[], Awaitable[float]], gateway: Callable[[], Awaitable[float]]
) -> tuple[list[float], list[float]]:
    direct_times: list[float] = []
    gateway_times: list[float] = []
    for i in range(warmup + pairs):
        d, g = await direct(), await gateway()
        if i >= warmup:
            direct_times.append(d)
            gateway_times.append(g)
    return direct_times, gateway_times


def report(title: str, direct: list[float], gateway: list[float], target_ms: float) -> float:
    print(f"\n{title}")
    print(f"{'':<28}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'mean ms':>9}")
    print(summary("direct (DeviceClient)", direct))
    print(summary("gateway (HTTP)", gateway))
    d, g = percentiles(direct), percentiles(gateway)
    overhead = (g["p50"] - d["p50"]) * 1e3
    verdict = "met" if overhead <= target_ms else "MISSED"
    print(
        f"overhead p50 {overhead:.3f} ms (target <= {target_ms:g} ms: {verdict}); "
        f"ratio gateway/direct p50 {g['p50'] / d['p50']:.2f}, p99 {g['p99'] / d['p99']:.2f}"
    )
    return overhead


async def run(pairs: int, warmup: int) -> None:
    print(machine_info())
    with server("emulator") as emulator, server("gateway", "--device", f"127.0.0.1:{emulator.port}") as gw:
        print(f"gateway: uvicorn {gw.details}")
        client = DeviceClient("127.0.0.1", emulator.port)
        await client.connect()
        setup = llm_setup(LLM, system_prompt=DEFAULT_SYSTEM_PROMPT, max_token_len=1023)
        unit = await client.open_unit("llm", setup)
        http = RawHttp(gw.port)
        try:
            full_body, stream_body = chat_body(PROMPT, stream=False), chat_body(PROMPT, stream=True)
            cpu_before = cpu_seconds(gw.pid)
            direct, gateway = await measure(
                pairs, warmup, lambda: direct_full(unit), lambda: gateway_full(http, full_body)
            )
            cpu_full = (cpu_seconds(gw.pid) - cpu_before) / (pairs + warmup)
            report("non-stream chat completion, whole answer", direct, gateway, 1.0)
            cpu_before = cpu_seconds(gw.pid)
            direct, gateway = await measure(
                pairs, warmup, lambda: direct_first(unit), lambda: gateway_first(http, stream_body)
            )
            cpu_stream = (cpu_seconds(gw.pid) - cpu_before) / (pairs + warmup)
            report("time to first token (stream=true)", direct, gateway, 2.0)
            print(
                f"\ngateway CPU per request: non-stream {cpu_full * 1e3:.2f} ms, "
                f"stream {cpu_stream * 1e3:.2f} ms (user+system, /proc/{gw.pid}/stat)"
            )
        finally:
            await http.close()
            await client.close()


def main() -> None:
    run_requests_benchmark(__doc__, run, requests=1000, warmup=100)


if __name__ == "__main__":
    main()
