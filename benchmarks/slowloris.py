"""Slowloris against the gateway: silent and slow-header connections, under each candidate HTTP server.

    python benchmarks/slowloris.py [--connections 200] [--header-timeout 2]
                                   [--servers guarded,uvicorn,granian,hypercorn]

Per server (BENCH_SERVER, see _servers.py; granian and hypercorn must be installed to be measured), with
the same header/read timeout for all: opens N silent connections and N that send a request's headers one
byte per second, then reports
- how many of each are still open after timeout + 3 s (the guard's job: 0),
- the open file descriptors of the gateway process meanwhile (/proc/<pid>/fd),
- the latency of a normal chat request while they are held (p50 of 20),
- the gateway's RSS.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import time

from _bench import RawHttp, chat_body, machine_info, percentiles, rss_mib, server

SLOW_REQUEST = b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * 200


async def _open(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    return await asyncio.open_connection("127.0.0.1", port)


async def _still_open(reader: asyncio.StreamReader) -> bool:
    """True when the server has not closed the connection (nothing, or no EOF, to read now)."""
    try:
        while True:
            data = await asyncio.wait_for(reader.read(4096), 0.01)
            if not data:
                return False
    except TimeoutError:
        return True
    except OSError:
        return False


async def _trickle(writers: list[asyncio.StreamWriter], seconds: float) -> None:
    for i in range(int(seconds)):
        for w in writers:
            if not w.is_closing():
                with contextlib.suppress(OSError):
                    w.write(SLOW_REQUEST[i : i + 1])
        await asyncio.sleep(1.0)


def _fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def measure(kind: str, count: int, header_timeout: float) -> dict[str, float] | None:
    os.environ["BENCH_SERVER"] = kind
    os.environ["BENCH_HEADER_TIMEOUT"] = str(header_timeout)
    with server("emulator") as emulator, server("gateway", "--device", f"127.0.0.1:{emulator.port}") as gw:
        http = RawHttp(gw.port)
        body = chat_body("alpha beta", stream=False)
        assert (await http.post("/v1/chat/completions", body))[0] == 200
        fds_idle = _fds(gw.pid)
        silent = [await _open(gw.port) for _ in range(count)]
        slow = [await _open(gw.port) for _ in range(count)]
        trickle = asyncio.ensure_future(_trickle([w for _, w in slow], header_timeout + 3))  # noqa: RUF006 (awaited below)
        await http.close()
        http = RawHttp(gw.port)  # a client arriving now (the first one's keep-alive may have expired)
        latencies = []
        for _ in range(20):
            started = time.perf_counter()
            assert (await http.post("/v1/chat/completions", body))[0] == 200
            latencies.append(time.perf_counter() - started)
        fds_held = _fds(gw.pid)
        await trickle
        open_silent = sum([await _still_open(r) for r, _ in silent])
        open_slow = sum([await _still_open(r) for r, _ in slow])
        result = {
            "silent_open": open_silent,
            "slow_open": open_slow,
            "fds_idle": fds_idle,
            "fds_held": fds_held,
            "p50_ms": percentiles(latencies)["p50"] * 1e3,
            "rss_mib": rss_mib(gw.pid),
        }
        for _, w in silent + slow:
            w.close()
        await http.close()
        return result


async def run(kinds: list[str], count: int, header_timeout: float) -> None:
    print(machine_info())
    print(f"{count} silent + {count} slow-header connections; header/read timeout {header_timeout:g} s; "
          f"checked {header_timeout + 3:g} s later")  # fmt: skip
    print(f"{'server':<12}{'silent open':>12}{'slow open':>11}{'fds idle':>10}{'fds held':>10}"
          f"{'chat p50 ms':>13}{'RSS MiB':>9}")  # fmt: skip
    for kind in kinds:
        try:
            r = await measure(kind, count, header_timeout)
        except (ImportError, RuntimeError, AssertionError) as exc:
            print(f"{kind:<12} not measured: {exc!r}")
            continue
        assert r is not None
        print(f"{kind:<12}{r['silent_open']:>12.0f}{r['slow_open']:>11.0f}{r['fds_idle']:>10.0f}"
              f"{r['fds_held']:>10.0f}{r['p50_ms']:>13.2f}{r['rss_mib']:>9.1f}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=200)
    parser.add_argument("--header-timeout", type=float, default=2.0)
    parser.add_argument("--servers", default="guarded,uvicorn,granian,hypercorn")
    args = parser.parse_args()
    asyncio.run(run(args.servers.split(","), args.connections, args.header_timeout))


if __name__ == "__main__":
    main()
