"""Command line: `stackflow-openai serve | emulator | models | doctor | config check`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import sys
from collections.abc import Sequence

from stackflow_openai import __version__

__all__ = ["main"]

log = logging.getLogger("stackflow_openai")

_EPILOG = """\
examples:
  stackflow-openai serve --emulator                    try it without a device
  stackflow-openai serve --device 192.168.20.186:10001 --host 0.0.0.0
  stackflow-openai serve --config /etc/stackflow-openai/config.yaml
  stackflow-openai doctor --device 192.168.20.186:10001
  stackflow-openai config check config.yaml

Run `stackflow-openai COMMAND --help` for the options of one command.
"""


def _device_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--device",
        metavar="HOST:PORT",
        default="127.0.0.1:10001",
        help="the device's llm-sys address (default 127.0.0.1:10001, i.e. this device)",
    )


def _serve_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    serve = sub.add_parser(
        "serve",
        help="run the OpenAI-compatible HTTP API",
        description="Serve http://HOST:PORT/v1 in front of one or more StackFlow devices (default: the "
        "device at 127.0.0.1:10001), or in front of a built-in emulator with --emulator (no hardware "
        "needed). Also serves /health, /ready and /metrics. Precedence: defaults < config file < "
        "environment variables STACKFLOW_OPENAI__SECTION__FIELD < these options (docs/operations.md).",
    )
    serve.add_argument(
        "--config",
        metavar="FILE",
        help="YAML config file (see config.example.yaml); default $STACKFLOW_OPENAI_CONFIG",
    )
    serve.add_argument(
        "--device",
        metavar="HOST:PORT",
        action="append",
        help="StackFlow device to use (repeatable); replaces the config's devices",
    )
    serve.add_argument(
        "--api-key",
        metavar="KEY",
        action="append",
        help="accept this API key (repeatable); clients send Authorization: Bearer KEY. "
        "Keys also come from the config and $STACKFLOW_OPENAI_API_KEYS",
    )
    serve.add_argument(
        "--data-dir",
        metavar="DIR",
        help="directory of the stored responses of /v1/responses; default: the state_dir "
        "($XDG_DATA_HOME/stackflow-openai, else ~/.local/share/stackflow-openai)",
    )
    serve.add_argument(
        "--emulator", action="store_true", help="start an in-process device emulator and serve its models"
    )
    serve.add_argument(
        "--realistic",
        action="store_true",
        help="with --emulator: device-like timing (slow setups, ~10 tokens/s)",
    )
    serve.add_argument(
        "--catalogue",
        metavar="DIR",
        action="append",
        default=[],
        help="with --emulator: extra directory of mode_*.json model descriptors (repeatable); an entry's "
        "emulator_local_model field points it at your own GGUF, piper voice or whisper directory",
    )
    serve.add_argument(
        "--engine",
        choices=["auto", "local", "scripted"],
        default="auto",
        help="with --emulator: what computes the answers. auto (default): real local CPU models when "
        "scripts/install-local-engines.sh installed them, else the scripted test engine",
    )
    _board_arguments(serve, "with --emulator: ")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 for the network)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8000; 0 picks a free one)")


def _board_arguments(parser: argparse.ArgumentParser, prefix: str) -> None:
    parser.add_argument(
        "--board",
        choices=["ax630c", "ax650", "axcl"],
        default="ax630c",
        help=f"{prefix}the board to play: ax630c (Module LLM, default), ax650 (AI Pyramid), axcl (LLM-8850 "
        "card): its StackFlow branch's model catalogue, memory and unit versions",
    )
    parser.add_argument(
        "--units",
        choices=["main", "dev"],
        default=None,
        help=f"{prefix}the unit generation: dev (default; tts 1.7, melotts 1.11, asr 1.10) or main (tts 1.6, "
        "melotts 1.10, asr 1.8); the axcl board runs its own branch's units unless this is given",
    )


def _tool_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    emulator = sub.add_parser(
        "emulator",
        help="run a StackFlow device emulator in the foreground",
        description="A TCP server that behaves like a StackFlow device's llm-sys daemon (port 10001), "
        "with a deterministic scripted engine. Point `serve --device` or any StackFlow client at it. "
        "Ctrl-C stops it.",
    )
    emulator.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    emulator.add_argument("--port", type=int, default=10001, help="port (default 10001; 0 picks a free one)")
    emulator.add_argument(
        "--realistic",
        action="store_true",
        help="device-like timing: slow setups, ~0.5 s to first token, ~10 tokens/s",
    )
    emulator.add_argument(
        "--engine",
        choices=["auto", "local", "scripted"],
        default="scripted",
        help="what computes the answers: scripted (default, deterministic test tool), local (real CPU "
        "models, see scripts/install-local-engines.sh) or auto (local when installed)",
    )
    emulator.add_argument(
        "--catalogue",
        metavar="DIR",
        action="append",
        default=[],
        help="extra directory of mode_*.json model descriptors (repeatable)",
    )
    _board_arguments(emulator, "")

    models = sub.add_parser(
        "models",
        help="list the models a device offers",
        description="Ask a device which models are installed (sys.lsmode) and say how the gateway serves "
        "each one (chat, speech, transcription).",
    )
    _device_option(models)
    models.add_argument("--json", action="store_true", help="print the device's raw descriptors as JSON")

    doctor = sub.add_parser(
        "doctor",
        help="check a device: reachable, version, memory, models, a one-token generation",
        description="Run the checks you would run by hand on a device, in order, and say what each found. "
        "The generation check sets an LLM up (this can take 5-30 s on a device), asks for one token and "
        "exits the unit again. Nothing is reset or rebooted. Exit status 0 when no check failed.",
    )
    _device_option(doctor)
    doctor.add_argument("--model", help="LLM model for the generation check (default: the first one)")
    doctor.add_argument("--no-generate", action="store_true", help="skip the generation check")
    doctor.add_argument("--timeout", type=float, default=10.0, help="seconds per device call (default 10)")

    config = sub.add_parser(
        "config", help="work with config files", description="Work with gateway config files."
    )
    config_sub = config.add_subparsers(dest="config_command", required=True)
    check = config_sub.add_parser(
        "check",
        help="validate a config file",
        description="Read FILE the way `serve --config FILE` would (with the STACKFLOW_OPENAI__* "
        "environment overrides) and report every error with its key and line, or a summary. "
        "The file is never modified.",
    )
    check.add_argument("file", metavar="FILE", help="the YAML config file")
    migrate = config_sub.add_parser(
        "migrate",
        help="convert the old ModuleLLM-OpenAI-Plugin's config.yaml",
        description="Read OLD, a config.yaml of m5stack's ModuleLLM-OpenAI-Plugin (where `server` is the "
        "device's address), and write an equivalent config for this gateway: its devices, models, "
        "pool sizes, system prompts and openai_proxy entries, with notes on what changed. OLD is never "
        "modified.",
    )
    migrate.add_argument("old", metavar="OLD", help="the plugin's config.yaml")
    migrate.add_argument("-o", "--output", metavar="NEW", help="write here (default: standard output)")
    migrate.add_argument("--force", action="store_true", help="overwrite NEW if it exists")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stackflow-openai",
        description="OpenAI-compatible API for M5Stack StackFlow devices (Module LLM, LLM630, AI Pyramid).",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="debug also logs request bodies (prompts); default info",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _serve_parser(sub)
    _tool_parsers(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler = logging.StreamHandler()
    if args.command == "serve":
        from stackflow_openai.ops.connections import RepeatFilter

        handler.addFilter(RepeatFilter())  # one traceback per kind and 10 s, not one per refused accept()
    # (When logging is configured already, e.g. under pytest, basicConfig leaves it as it is.)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=[handler],
    )
    try:
        if args.command == "emulator":
            return _run(_emulator(args))
        if args.command == "serve":
            from stackflow_openai.serve import serve

            return _run(serve(args))
        if args.command == "models":
            return _run(_models(args))
        if args.command == "doctor":
            return _run(_doctor(args))
        if args.command == "config" and args.config_command == "migrate":
            return _config_migrate(args.old, args.output, force=args.force)
        if args.command == "config":
            return _config_check(args.file)
    except Exception as exc:  # a clean one-line message for the usual mistakes (bad config, port in use)
        from stackflow_openai.config import ConfigError

        if isinstance(exc, ConfigError | OSError):
            print(f"stackflow-openai: {exc}", file=sys.stderr)
            return 2
        raise
    return 2


def _run(coro: object) -> int:
    result: object = 0
    with contextlib.suppress(KeyboardInterrupt):
        result = asyncio.run(coro)  # type: ignore[arg-type]
    return result if isinstance(result, int) else 0


async def _emulator(args: argparse.Namespace) -> None:
    from stackflow_openai.emulator import run_emulator

    await run_emulator(
        args.host,
        args.port,
        realistic=args.realistic,
        catalogue_dirs=tuple(args.catalogue),
        engine=args.engine,
        board=args.board,
        units=args.units,
    )


async def _models(args: argparse.Namespace) -> int:
    from stackflow_openai.config import parse_device
    from stackflow_openai.ops.doctor import describe_model, list_models
    from stackflow_openai.stackflow.errors import StackFlowError

    device = parse_device(args.device)
    try:
        models = await list_models(device.host, device.port)
    except (StackFlowError, OSError) as exc:
        print(f"stackflow-openai: {args.device}: {exc}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([m.raw for m in models], indent=2, ensure_ascii=False))
        return 0
    width = max((len(m.mode) for m in models), default=5)
    print(f"{'MODEL':<{width}}  {'UNIT':<8} SERVED AS")
    for m in models:
        print(f"{m.mode:<{width}}  {m.unit:<8} {describe_model(m)}")
    return 0


async def _doctor(args: argparse.Namespace) -> int:
    from stackflow_openai.config import parse_device
    from stackflow_openai.ops.doctor import run_doctor

    device = parse_device(args.device)
    ok = await run_doctor(
        device.host, device.port, model=args.model, generate=not args.no_generate, call_timeout=args.timeout
    )
    return 0 if ok else 1


def _config_check(path: str) -> int:
    import os

    from stackflow_openai.config import ENV_PREFIX, KEYS_ENV, ConfigError, load_settings

    try:
        settings = load_settings(path)
    except ConfigError as exc:
        print(f"{path}: INVALID\n{exc}", file=sys.stderr)
        return 2
    overrides = sorted(n for n in os.environ if n.upper().startswith(ENV_PREFIX) or n == KEYS_ENV)
    devices = ", ".join(f"{d.name} ({d.host}:{d.port})" for d in settings.devices) or "none"
    keys = len(settings.auth.key_values())
    print(f"{path}: OK")
    print(f"  listen     {settings.server.host}:{settings.server.port}")
    print(f"  devices    {devices}")
    print(
        f"  models     {', '.join(settings.models) or 'none configured'}; "
        f"discovery {'on' if settings.discovery.enabled else 'off'}"
    )
    print(f"  aliases    {', '.join(f'{a}→{t}' for a, t in settings.aliases.items()) or 'defaults only'}")
    print(f"  api keys   {keys or 'none (no authentication)'}")
    print(f"  cors       {', '.join(settings.server.cors_origins) or 'off'}")
    cleanup = settings.pool.orphan_cleanup
    where = f" (recorded in {settings.state_path()})" if cleanup == "owned" else ""
    print(f"  leftovers  {cleanup}{where}")
    if overrides:
        print(f"  overridden by the environment: {', '.join(overrides)}")
    return 0


def _config_migrate(old: str, output: str | None, *, force: bool) -> int:
    from pathlib import Path

    from stackflow_openai.config import ConfigError, read_yaml
    from stackflow_openai.ops.migrate import migrate_plugin_config, render_migration
    from stackflow_openai.plugin_config import old_plugin_signs

    try:
        _, raw = read_yaml(old)
    except ConfigError as exc:
        print(f"stackflow-openai: {exc}", file=sys.stderr)
        return 2
    if not old_plugin_signs(raw):
        print(
            f"stackflow-openai: {old}: nothing to migrate: not a config of the old ModuleLLM-OpenAI-Plugin "
            f"(check it as this gateway's with: stackflow-openai config check {old})",
            file=sys.stderr,
        )
        return 2
    text = render_migration(migrate_plugin_config(raw), old)
    if output is None:
        sys.stdout.write(text)
        return 0
    target = Path(output)
    if target.exists() and (not force or target.resolve() == Path(old).resolve()):
        print(f"stackflow-openai: {output} exists (use --force to overwrite it)", file=sys.stderr)
        return 2
    target.write_text(text, encoding="utf-8")
    print(f"{old} → {output}; check it with: stackflow-openai config check {output}", file=sys.stderr)
    return 0
