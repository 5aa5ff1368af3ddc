"""256 concurrent streaming chat requests through one gateway process: errors, TTFT, gateway memory.

    python benchmarks/concurrency.py [--requests 256] [--rounds 3]

Emulator (scripted engine, zero delay), gateway and this load client each in their own process. All
requests of a round are sent at once (raw asyncio sockets, one connection each). Two catalogues:

- "device limits": the llm unit allows 2 instances, as on a real device; the gateway's queue
  (queue_limit 300) absorbs the rest, so TTFT includes the wait for a unit.
- "256 units": the emulator's llm limit and the gateway pool's limit raised to 300 (a benchmark knob,
  _servers.py), so every request gets its own unit after the first round.

Printed per catalogue: errors (non-200, in-band error events, streams without [DONE]), TTFT p50/p99,
the gateway's RSS idle (after start-up), after the first round and its peak (VmHWM). Targets: 0 errors,
RSS <= 150 MB under load, <= 60 MB idle.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from _bench import RawHttp, chat_body, machine_info, percentiles, rss_mib, server

PATH = "/v1/chat/completions"


async def one(port: int, body: bytes, start: asyncio.Event) -> tuple[bool, float | None]:
    http = RawHttp(port)
    await http.connect()
    try:
        await start.wait()
        sent = time.perf_counter()
        result = await http.stream(PATH, body)
    except (OSError, TimeoutError, ValueError, IndexError):
        return False, None
    finally:
        await http.close()
    ok = result.status == 200 and result.done and not result.errors and result.first_content is not None
    return ok, (result.first_content - sent) if result.first_content is not None else None


async def round_of(port: int, requests: int) -> tuple[int, list[float], float]:
    start = asyncio.Event()
    body = chat_body("alpha beta gamma delta epsilon", stream=True)
    tasks = [asyncio.ensure_future(one(port, body, start)) for _ in range(requests)]
    await asyncio.sleep(0.5)  # every connection is open before the burst
    began = time.perf_counter()
    start.set()
    results = await asyncio.gather(*tasks)
    elapsed = time.perf_counter() - began
    errors = sum(1 for ok, _ in results if not ok)
    return errors, [t for ok, t in results if ok and t is not None], elapsed


async def catalogue(name: str, requests: int, rounds: int, limit: int | None) -> None:
    emulator_args = ["emulator"] + (["--llm-limit", str(limit)] if limit else [])
    with server(*emulator_args) as emulator:
        gateway_args = ["gateway", "--device", f"127.0.0.1:{emulator.port}", "--queue-limit", "300"]
        gateway_args += ["--queue-timeout", "120"] + (["--unit-limit", str(limit)] if limit else [])
        with server(*gateway_args) as gw:
            await asyncio.sleep(1.0)
            idle = rss_mib(gw.pid)
            print(f"\n{name}: gateway idle RSS {idle:.1f} MiB (uvicorn {gw.details})")
            header = f"{'round':>6}{'errors':>8}{'TTFT p50 ms':>13}{'TTFT p99 ms':>13}{'wall s':>8}"
            print(header + f"{'RSS MiB':>9}")
            for number in range(1, rounds + 1):
                errors, ttfts, elapsed = await round_of(gw.port, requests)
                p = percentiles(ttfts) if ttfts else {"p50": float("nan"), "p99": float("nan")}
                print(
                    f"{number:>6}{errors:>8}{p['p50'] * 1e3:>13.1f}{p['p99'] * 1e3:>13.1f}"
                    f"{elapsed:>8.2f}{rss_mib(gw.pid):>9.1f}"
                )
            print(f"peak RSS (VmHWM) {rss_mib(gw.pid, peak=True):.1f} MiB")


async def run(requests: int, rounds: int) -> None:
    print(machine_info())
    print(f"{requests} concurrent stream=true chat requests per round, {rounds} rounds")
    await catalogue("device limits (2 llm units, the queue absorbs the rest)", requests, rounds, None)
    await catalogue(f"{requests} units (limits raised to 300)", requests, rounds, 300)
    print("\ntargets: 0 errors, RSS <= 150 MB under load, idle RSS <= 60 MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.requests, args.rounds))


if __name__ == "__main__":
    main()
