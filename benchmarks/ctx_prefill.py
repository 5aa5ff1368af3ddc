"""What real multi-turn on a "ctx" model saves: time to first token per turn, continued vs replayed.

One run, in one process: the emulator (scripted engine, device-like prefill cost: `Timing.realistic()`'s
0.3 s + 3.5 ms per prefilled position, generation unpaced) and the gateway on loopback. The same
8-turn conversation is held twice on `qwen2.5-HA-0.5B-ctx-ax630c` with pool_size 1:

- continued: alone on the unit, so every turn after the first sends only the new message;
- replayed: interleaved with a second conversation on the same unit, so every turn finds the other
  conversation in the cache, resets it and replays its own history folded into one turn: what each turn
  costs without multi-turn (a single-turn gateway re-sends the whole history every time).

Prints the time to first token of each turn of both, and their ratio. The prefill cost is a modelling
choice (see docs/performance.md, "ctx models"), so the ratio shows the shape of the saving, not a
device measurement.

    python benchmarks/ctx_prefill.py [--turns 8]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import httpx
import uvicorn

from stackflow_openai.app import create_app
from stackflow_openai.backends.registry import GatewayRegistry
from stackflow_openai.config import DeviceSettings, ModelSettings, Settings
from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.serve import http_settings

MODEL = "qwen2.5-HA-0.5B-ctx-ax630c"
LINE = "Tell me more about the old stone bridge near the market and the river under it, turn {n}."


async def first_token(client: httpx.AsyncClient, messages: list[dict[str, str]]) -> tuple[float, str]:
    """(seconds to the first content delta, the whole answer) of one streamed chat request."""
    body = {"model": "chat", "messages": messages, "stream": True}
    started, ttft, parts = time.perf_counter(), 0.0, []
    async with client.stream("POST", "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: {"):
                continue
            delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
            if delta:
                ttft = ttft or time.perf_counter() - started
                parts.append(delta)
    return ttft, "".join(parts)


async def converse(client: httpx.AsyncClient, turns: int, other: list[dict[str, str]] | None) -> list[float]:
    messages: list[dict[str, str]] = []
    times = []
    for n in range(turns):
        if other is not None:  # the other conversation takes the unit between two of ours
            other.append({"role": "user", "content": f"Something else entirely, number {n}."})
            other.append({"role": "assistant", "content": (await first_token(client, other))[1]})
        messages.append({"role": "user", "content": LINE.format(n=n)})
        seconds, answer = await first_token(client, messages)
        messages.append({"role": "assistant", "content": answer})
        times.append(seconds)
    return times


async def main(turns: int) -> None:
    timing = Timing.realistic()
    engine = ScriptedEngine(
        timing=Timing(
            time_to_first_token=timing.time_to_first_token,
            prefill_seconds_per_token=timing.prefill_seconds_per_token,
        )
    )
    emulator = Emulator(engine=engine)
    await emulator.start(host="127.0.0.1", port=0)
    settings = Settings(models={"chat": ModelSettings(device_model=MODEL, pool_size=1)})
    settings.devices = [DeviceSettings(name="emu", host="127.0.0.1", port=emulator.port)]
    app = create_app(GatewayRegistry(settings), http_settings(settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.ensure_future(server.serve())
    for _ in range(1000):  # uvicorn offers no event for "started"
        if server.started:
            break
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
            await first_token(client, [{"role": "user", "content": "warm up"}])  # loads the tokenizers
            continued = await converse(client, turns, None)
            replayed = await converse(client, turns, [])
    finally:
        server.should_exit = True
        await task
        await emulator.stop()
    report(continued, replayed)


def report(continued: list[float], replayed: list[float]) -> None:
    print(f"{MODEL}: time to first token per turn (s), device-like prefill cost (modelled)")
    print("turn  continued  replayed  replayed/continued")
    for n, (c, r) in enumerate(zip(continued, replayed, strict=True), 1):
        print(f"{n:>4}  {c:9.3f}  {r:8.3f}  {r / c:8.2f}x")
    later_c, later_r = continued[1:], replayed[1:]
    mean_c, mean_r = statistics.mean(later_c), statistics.mean(later_r)
    print(
        f"turns 2..{len(continued)}: mean {mean_c:.3f} s continued, {mean_r:.3f} s replayed: "
        f"{mean_r / mean_c:.2f}x; last turn {replayed[-1] / continued[-1]:.2f}x"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--turns", type=int, default=8)
    args: Any = parser.parse_args()
    asyncio.run(main(args.turns))
