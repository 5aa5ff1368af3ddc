"""Processes the benchmarks measure: the emulator and the gateway, each alone in its own process.

    python benchmarks/_servers.py emulator [--answer-tokens N] [--llm-limit N]
    python benchmarks/_servers.py gateway --device 127.0.0.1:PORT [--queue-limit N] [--unit-limit N]

Each prints `READY <port> ...` on stdout once it listens on 127.0.0.1, then serves until stdin closes
(the benchmark that started it went away) or it gets SIGTERM. Not a benchmark itself.

The gateway is built the way `stackflow-openai serve` builds it (settings → GatewayRegistry →
create_app → uvicorn with the same options, `serve.uvicorn_config`, so httptools when installed), and
logs as `stackflow-openai serve` does by default (INFO: one access line per request, on stderr), so its
CPU time and RSS are the product's.

Benchmark-only knobs, neither of which a real device has:
- `--answer-tokens N`: every LLM answer is N pieces of " hello" (one Qwen token each) instead of the
  scripted engine's "You said ..." sentence, so one request streams N/3 deltas (the unit groups 3
  tokens per delta). Relay throughput needs long streams. With `--delta-interval MS`, one delta per
  MS milliseconds instead of all at once.
- `--llm-limit N` / `--unit-limit N`: raise the llm unit's instance limit on the emulator (device: 2)
  and in the gateway's pool, for the "pools that allow 256 streams" configuration.

Experiments (docs/performance.md): BENCH_HTTP=h11 serves with uvicorn's h11 instead of httptools;
with BENCH_UVLOOP=1 (and uvloop installed) the processes run on uvloop, which the product does not use.
BENCH_SERVER picks the HTTP server (issue 13, the header-timeout choice): `guarded` (default, the
product: uvicorn + ops/connections.py), `uvicorn` (plain httptools protocol, no guards), `granian` or
`hypercorn` (installed separately: pip install granian hypercorn), each with a BENCH_HEADER_TIMEOUT
(seconds, default 10) header/read timeout where the server has one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from collections.abc import AsyncIterator

__all__ = ["main"]


def _long_answer_engine(tokens: int, interval: float) -> object:
    from stackflow_openai.emulator import ScriptedEngine
    from stackflow_openai.emulator.engines.scripted import ScriptedLlmSession
    from stackflow_openai.emulator.units.llm import GROUP_TOKENS

    class LongSession(ScriptedLlmSession):
        async def generate(
            self, prompt: str, *, images: list[bytes], max_new_tokens: int
        ) -> AsyncIterator[str]:
            for i in range(min(tokens, max_new_tokens)):
                if interval and i and i % GROUP_TOKENS == 0:
                    await asyncio.sleep(interval)  # one delta per interval
                yield " hello"

    class LongAnswerEngine(ScriptedEngine):
        async def open_llm(self, model, settings):
            session = await super().open_llm(model, settings)
            return LongSession(model, settings, self.timing, session._encoder)

    return LongAnswerEngine()


async def _wait_for_exit() -> None:
    """Until stdin reaches EOF (parent gone) or SIGTERM/SIGINT arrives."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)

    async def stdin_closed() -> None:
        while await reader.read(1024):
            pass
        stop.set()

    watcher = asyncio.ensure_future(stdin_closed())
    await stop.wait()
    watcher.cancel()


async def run_emulator(args: argparse.Namespace) -> None:
    from stackflow_openai.emulator import Emulator, ScriptedEngine

    engine = (
        _long_answer_engine(args.answer_tokens, args.delta_interval / 1000)
        if args.answer_tokens
        else ScriptedEngine()
    )
    emulator = Emulator(engine=engine, hwinfo_delay=0.05, cmm_total_kib=1 << 40)
    if args.llm_limit:
        emulator.units["llm"].limit = args.llm_limit  # a ClassVar on the unit class: shadowed here
    await emulator.start("127.0.0.1", 0)
    print(f"READY {emulator.port}", flush=True)
    try:
        await _wait_for_exit()
    finally:
        await emulator.stop()


# What `stackflow-openai` (cli.main) configures before serving, with its default --log-level info.
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


async def run_gateway(args: argparse.Namespace) -> None:
    import uvicorn

    from stackflow_openai.app import create_app
    from stackflow_openai.backends.registry import GatewayRegistry
    from stackflow_openai.config import PoolSettings, Settings, parse_device
    from stackflow_openai.serve import http_settings, uvicorn_config

    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT)

    settings = Settings(
        devices=[parse_device(args.device)],
        pool=PoolSettings(queue_limit=args.queue_limit, queue_timeout=args.queue_timeout),
        data_dir=args.data_dir,
    )
    registry = GatewayRegistry(settings)
    if args.unit_limit:
        for device in registry.devices:
            device.pool.unit_limits["llm"] = args.unit_limit
    app = create_app(registry, http_settings(settings))
    kind = os.environ.get("BENCH_SERVER", "guarded")
    if kind in ("granian", "hypercorn"):
        await _run_other_server(kind, app)
        return
    settings.server.header_timeout = float(os.environ.get("BENCH_HEADER_TIMEOUT", "10"))
    config = uvicorn_config(app, "127.0.0.1", 0, settings.server)  # the options of `stackflow-openai serve`
    if kind == "uvicorn":
        config.http = "httptools"  # uvicorn's own protocol, without the connection guards
    if os.environ.get("BENCH_HTTP"):  # experiment: another HTTP implementation
        config.http = os.environ["BENCH_HTTP"]
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # stop through stdin EOF / our own handlers
    task = asyncio.ensure_future(server.serve())
    for _ in range(3000):  # uvicorn has no "started" event; 60 s at most (tokenizer load included)
        if server.started or task.done():
            break
        await asyncio.sleep(0.02)
    if not server.started:
        raise SystemExit("gateway did not start")
    port = server.servers[0].sockets[0].getsockname()[1]
    loop = type(asyncio.get_running_loop()).__module__.split(".")[0]
    print(f"READY {port} http={config.http_protocol_class.__name__} loop={loop}", flush=True)
    try:
        await _wait_for_exit()
    finally:
        server.should_exit = True
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(task, 15)


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def _run_other_server(kind: str, app: object) -> None:
    """The gateway app under granian or hypercorn (candidates measured for issue 13, not the product)."""
    timeout = float(os.environ.get("BENCH_HEADER_TIMEOUT", "10"))
    port = _free_port()
    stop = asyncio.Event()
    if kind == "hypercorn":
        from hypercorn.asyncio import serve as hypercorn_serve
        from hypercorn.config import Config

        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.read_timeout = int(timeout)  # hypercorn's only read deadline (per read, not per request)
        config.keep_alive_timeout = 5
        config.loglevel = "WARNING"
        task = asyncio.ensure_future(hypercorn_serve(app, config, shutdown_trigger=stop.wait))  # type: ignore[arg-type]
    else:
        from granian.constants import HTTPModes, Interfaces
        from granian.http import HTTP1Settings
        from granian.server.embed import Server

        http1 = HTTP1Settings(header_read_timeout=int(timeout * 1000))
        server = Server(app, address="127.0.0.1", port=port, interface=Interfaces.ASGI, http=HTTPModes.http1,
                        http1_settings=http1, log_enabled=False)  # fmt: skip
        task = asyncio.ensure_future(server.serve())
    import httpx

    async with httpx.AsyncClient() as client:
        for _ in range(3000):
            try:
                if (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.02)
    print(f"READY {port} http={kind} loop=asyncio", flush=True)
    try:
        await _wait_for_exit()
    finally:
        if kind == "hypercorn":
            stop.set()
        else:
            server.stop()
        with contextlib.suppress(asyncio.TimeoutError, Exception):
            await asyncio.wait_for(task, 15)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="what", required=True)
    emu = sub.add_parser("emulator")
    emu.add_argument("--answer-tokens", type=int, default=0)
    emu.add_argument("--llm-limit", type=int, default=0)
    emu.add_argument("--delta-interval", type=float, default=0.0, help="ms between deltas (--answer-tokens)")
    gw = sub.add_parser("gateway")
    gw.add_argument("--device", required=True)
    gw.add_argument("--queue-limit", type=int, default=32)
    gw.add_argument("--queue-timeout", type=float, default=30.0)
    gw.add_argument("--unit-limit", type=int, default=0)
    gw.add_argument("--data-dir", default=None, help="stored responses (default: the user's data dir)")
    args = parser.parse_args()
    if os.environ.get("BENCH_UVLOOP") == "1":  # experiment: what uvloop would change (if installed)
        import uvloop

        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    asyncio.run(run_emulator(args) if args.what == "emulator" else run_gateway(args))


if __name__ == "__main__":
    main()
