"""Relay throughput: SSE deltas per second through one gateway process, to 1 client and to 64.

    python benchmarks/relay.py [--answer-tokens 900] [--seconds 8] [--clients 1,64] [--delta-interval MS]

The emulator (its own process) answers every request with `--answer-tokens` one-token pieces at zero
delay (a benchmark knob, see _servers.py), grouped 3 per delta as the device does, so one request
streams ~300 deltas. Each client is a loop of stream=true chat requests on its own keep-alive
connection (raw asyncio sockets in this process), for `--seconds` seconds.

A delta is one device message with text, as the device sent it. The gateway joins deltas that are
already waiting when it gets to them into one SSE event (services/generation.py: at device speed each
delta is its own event; when the gateway or the client is behind, several travel together), so the
deltas relayed are counted from the text received (the emulator's " hello" tokens, GROUP_TOKENS per
delta), and the SSE events carrying text separately.

`--delta-interval MS` paces the emulator (one delta per MS milliseconds per stream) so that the gateway
keeps up and sends every delta as its own event: the per-event cost, as at device speed.

Printed per client count: deltas/s through the gateway; the same measured directly with the device
client (the emulator's own ceiling on this machine); deltas per CPU-second of the gateway process
(/proc/<pid>/stat), which is the figure to compare with the target (>= 20,000 deltas/s on one core):
on a 2-core machine the emulator and this client compete with the gateway for the CPUs; and SSE
events per gateway CPU-second (what the gateway spends per event it writes, whatever it carries).
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _bench import LLM, RawHttp, chat_body, cpu_seconds, machine_info, server

from stackflow_openai.emulator.units.llm import GROUP_TOKENS
from stackflow_openai.services.prompt import DEFAULT_SYSTEM_PROMPT
from stackflow_openai.stackflow.client import DeviceClient
from stackflow_openai.stackflow.setups import llm_setup

PATH = "/v1/chat/completions"
TARGET = 20_000


async def gateway_client(port: int, body: bytes, deadline: float, totals: list[int]) -> None:
    """Stream requests one after another until `deadline` (at least one). totals: tokens, requests,
    SSE events with text."""
    http = RawHttp(port)
    try:
        while not totals[1] or time.perf_counter() < deadline:
            result = await http.stream(PATH, body, count=b" hello")
            if result.status != 200 or not result.done or result.errors:
                raise RuntimeError(f"bad stream: {result}")
            totals[0] += result.marks
            totals[1] += 1
            totals[2] += result.content_events
    finally:
        await http.close()


async def direct_client(client: DeviceClient, deadline: float, totals: list[int]) -> None:
    setup = llm_setup(LLM, system_prompt=DEFAULT_SYSTEM_PROMPT, max_token_len=1023)
    unit = await client.open_unit("llm", setup)
    try:
        while time.perf_counter() < deadline:
            async for _piece in unit.generate("go", idle_timeout=30):
                totals[0] += 1
            totals[1] += 1
    finally:
        await unit.exit()


async def through_gateway(
    port: int, pid: int, clients: int, seconds: float
) -> tuple[float, float, float, int]:
    """deltas/s, deltas per gateway CPU-s, SSE events per gateway CPU-s, requests."""
    body = chat_body("go", stream=True)
    # Warm-up: every client's unit is set up before the clock starts.
    await asyncio.gather(*(gateway_client(port, body, 0.0, [0, 0, 0]) for _ in range(clients)))
    totals = [0, 0, 0]
    cpu, start = cpu_seconds(pid), time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(gateway_client(port, body, deadline, totals) for _ in range(clients)))
    elapsed, cpu_used = time.perf_counter() - start, cpu_seconds(pid) - cpu
    deltas = totals[0] / GROUP_TOKENS
    return deltas / elapsed, deltas / cpu_used, totals[2] / cpu_used, totals[1]


async def direct(port: int, clients: int, seconds: float) -> float:
    client = DeviceClient("127.0.0.1", port)
    await client.connect()
    try:
        totals = [0, 0]
        start = time.perf_counter()
        await asyncio.gather(*(direct_client(client, start + seconds, totals) for _ in range(clients)))
        return totals[0] / (time.perf_counter() - start)
    finally:
        await client.close()


async def run(tokens: int, seconds: float, counts: list[int], interval: float) -> None:
    print(machine_info())
    limit = str(2 * max(counts) + 2)  # the gateway's units and the direct ones at the same time
    emulator_args = ("emulator", "--answer-tokens", str(tokens), "--llm-limit", limit)
    emulator_args += ("--delta-interval", str(interval))
    with server(*emulator_args) as emulator:
        device = f"127.0.0.1:{emulator.port}"
        with server("gateway", "--device", device, "--unit-limit", limit, "--queue-limit", "256") as gw:
            print(f"gateway: uvicorn {gw.details}")
            pace = f", one every {interval:g} ms" if interval else ", all at once"
            print(f"answer: {tokens} tokens, ~{tokens // 3} deltas per request{pace}; {seconds:g} s per run")
            header = f"{'clients':>8}{'gateway d/s':>14}{'direct d/s':>13}{'d/s per gw CPU-s':>19}"
            print(header + f"{'events per gw CPU-s':>22}{'requests':>10}")
            for clients in counts:
                rate, per_cpu, events, requests = await through_gateway(gw.port, gw.pid, clients, seconds)
                ceiling = await direct(emulator.port, clients, seconds)
                print(
                    f"{clients:>8}{rate:>14,.0f}{ceiling:>13,.0f}{per_cpu:>19,.0f}{events:>22,.0f}{requests:>10}"
                )
    print(f"target: >= {TARGET:,} deltas/s on one core (compare the per-CPU-second column)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--answer-tokens", type=int, default=900)
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--clients", default="1,64", help="comma-separated client counts")
    parser.add_argument("--delta-interval", type=float, default=0.0, help="ms between deltas per stream")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    asyncio.run(run(args.answer_tokens, args.seconds, counts, args.delta_interval))


if __name__ == "__main__":
    main()
