"""Command line: `stackflow-openai serve | emulator`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import sys
from collections.abc import Sequence

from stackflow_openai import __version__

__all__ = ["main"]

log = logging.getLogger("stackflow_openai")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stackflow-openai",
        description="OpenAI-compatible API for M5Stack StackFlow devices (Module LLM, LLM630, AI Pyramid).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible HTTP API",
        description="Serve http://HOST:PORT/v1 in front of a StackFlow device (default 127.0.0.1:10001), "
        "or in front of a built-in emulator with --emulator (no hardware needed).",
    )
    serve.add_argument("--config", metavar="FILE", help="YAML config file (see config.example.yaml)")
    serve.add_argument(
        "--device",
        metavar="HOST:PORT",
        action="append",
        help="StackFlow device to use (repeatable); overrides the config's devices",
    )
    serve.add_argument(
        "--emulator", action="store_true", help="start an in-process device emulator and serve its models"
    )
    serve.add_argument(
        "--realistic",
        action="store_true",
        help="with --emulator: device-like timing (slow setups, ~10 tokens/s)",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000; 0 picks a free one)")

    emulator = sub.add_parser(
        "emulator",
        help="run a StackFlow device emulator in the foreground",
        description="A TCP server that behaves like a StackFlow device's llm-sys daemon (port 10001), "
        "with a deterministic scripted engine. Ctrl-C stops it.",
    )
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    emulator.add_argument("--port", type=int, default=10001, help="port (default 10001; 0 picks a free one)")
    emulator.add_argument(
        "--realistic",
        action="store_true",
        help="device-like timing: slow setups, ~0.5 s to first token, ~10 tokens/s",
    )
    emulator.add_argument(
        "--catalogue",
        metavar="DIR",
        action="append",
        default=[],
        help="extra directory of mode_*.json model descriptors (repeatable)",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "emulator":
            return _run(_emulator(args))
        if args.command == "serve":
            from stackflow_openai.serve import serve

            return _run(serve(args))
    except Exception as exc:  # a clean one-line message for the usual mistakes (bad config, port in use)
        from stackflow_openai.config import ConfigError

        if isinstance(exc, ConfigError | OSError):
            print(f"stackflow-openai: {exc}", file=sys.stderr)
            return 2
        raise
    return 2


def _run(coro: object) -> int:
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(coro)  # type: ignore[arg-type]
    return 0


async def _emulator(args: argparse.Namespace) -> None:
    from stackflow_openai.emulator import run_emulator

    await run_emulator(args.host, args.port, realistic=args.realistic, catalogue_dirs=tuple(args.catalogue))
