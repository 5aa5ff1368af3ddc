"""`stackflow-openai doctor` and `stackflow-openai models`: look at one device from the command line.

The doctor runs the checks a person would run by hand, in order, and says what each found:
reachable (ping), version, memory (cmminfo), hardware (hwinfo), models (lsmode), instances already
running, and a one-token generation on an LLM (setup, first token, pause, exit: nothing is left on
the device). It never resets, reboots or runs commands on the device.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import aclosing
from dataclasses import dataclass, field

from stackflow_openai.stackflow.client import DeviceClient
from stackflow_openai.stackflow.errors import StackFlowError, TaskFull
from stackflow_openai.stackflow.models import ModelDescriptor
from stackflow_openai.stackflow.setups import llm_setup

__all__ = ["Check", "describe_model", "list_models", "run_doctor"]

_UNITS = ("llm", "vlm", "melotts", "tts", "cosy_voice", "whisper", "asr")
_HOT_CELSIUS = 85.0
_FAILURES = (StackFlowError, OSError, TimeoutError)


@dataclass
class Check:
    name: str
    status: str  # ok, warn, fail, skip
    detail: str

    def line(self) -> str:
        return f"  {self.status.upper():<5} {self.name:<12} {self.detail}"


@dataclass
class _Report:
    out: Callable[[str], None]
    checks: list[Check] = field(default_factory=list)

    def add(self, name: str, status: str, detail: str) -> None:
        check = Check(name, status, detail)
        self.checks.append(check)
        self.out(check.line())

    @property
    def failed(self) -> bool:
        return any(c.status == "fail" for c in self.checks)


def describe_model(model: ModelDescriptor) -> str:
    """What the gateway serves a device model as."""
    if model.unit == "llm":
        return f"chat (prefill {model.prefill_len}, context {model.kv_cache_len})"
    if model.unit == "vlm":
        return f"chat with images (prefill {model.prefill_len}, context {model.kv_cache_len})"
    if model.unit in ("melotts", "tts", "cosy_voice"):
        return "speech (/v1/audio/speech)"
    if model.unit in ("whisper", "asr"):
        return "transcription (/v1/audio/transcriptions)"
    return "not served"


async def list_models(host: str, port: int, *, call_timeout: float = 10.0) -> list[ModelDescriptor]:
    async with DeviceClient(host, port, timeout=call_timeout) as client:
        return await client.lsmode()


async def run_doctor(
    host: str,
    port: int,
    *,
    model: str | None = None,
    generate: bool = True,
    call_timeout: float = 10.0,
    setup_timeout: float = 120.0,
    out: Callable[[str], None] = print,
) -> bool:
    """Check the device at host:port; returns True when nothing failed."""
    report = _Report(out)
    out(f"Checking the StackFlow device at {host}:{port}")
    client = DeviceClient(host, port, timeout=call_timeout, setup_timeout=setup_timeout)
    try:
        started = time.monotonic()
        try:
            await client.ping()
        except _FAILURES as exc:
            report.add("reachable", "fail", f"{exc} (is llm-sys running? is port {port} open?)")
            return False
        report.add("reachable", "ok", f"ping answered in {(time.monotonic() - started) * 1000:.0f} ms")
        models = await _inspect(client, report)
        if generate:
            await _generate(client, report, models, model)
        else:
            report.add("generation", "skip", "--no-generate")
    finally:
        await client.close()
    out("All checks passed." if not report.failed else "Some checks failed.")
    return not report.failed


async def _inspect(client: DeviceClient, report: _Report) -> list[ModelDescriptor]:
    try:
        version = await client.version()
        units = await client.version2()  # how the gateway drives tts depends on its version
        listed = ", ".join(f"{u} {a}.{b}" for u, (a, b) in sorted(units.items())) or "unit versions unknown"
        report.add("version", "ok", f"StackFlow {version} ({listed})")
    except _FAILURES as exc:
        report.add("version", "fail", str(exc))
    try:
        cmm = await client.memory()  # axcl_cmminfo on an AXCL host, whose cmminfo is garbage
        if cmm is None:
            report.add("memory", "warn", "the memory report is not plausible (AXCL without axcl-smi?)")
        else:
            status = "ok" if cmm.remain > 0 else "warn"
            where = "AXCL card" if client.axcl else "NPU/CMM"
            report.add(
                "memory", status, f"{where} {cmm.remain / 1024:.0f} MiB free of {cmm.total / 1024:.0f} MiB"
            )
    except _FAILURES as exc:
        report.add("memory", "fail", str(exc))
    try:
        hw = await client.hwinfo()
        celsius = hw.temperature / 1000
        status = "warn" if celsius >= _HOT_CELSIUS else "ok"
        report.add("hardware", status, f"{celsius:.1f} °C, CPU {hw.cpu_loadavg} %, RAM {hw.mem} % used")
    except _FAILURES as exc:
        report.add("hardware", "warn", f"hwinfo failed: {exc}")
    models: list[ModelDescriptor] = []
    try:
        models = await client.lsmode()
        by_unit: dict[str, list[str]] = {}
        for m in models:
            by_unit.setdefault(m.unit, []).append(m.mode)
        summary = "; ".join(f"{unit}: {', '.join(names)}" for unit, names in sorted(by_unit.items()))
        report.add("models", "ok" if models else "warn", f"{len(models)} installed. {summary}".strip())
    except _FAILURES as exc:
        report.add("models", "fail", str(exc))
    running: list[str] = []
    for unit in _UNITS:
        try:
            running += await client.tasklist(unit)
        except _FAILURES:
            continue  # -9: that unit is not installed
    if running:
        report.add("instances", "warn", f"already running: {', '.join(running)} (they hold memory and slots)")
    else:
        report.add("instances", "ok", "none running")
    return models


async def _generate(
    client: DeviceClient, report: _Report, models: list[ModelDescriptor], wanted: str | None
) -> None:
    llms = [m for m in models if m.unit == "llm"]
    model = next((m for m in llms if m.mode == wanted), None) if wanted else (llms[0] if llms else None)
    if model is None:
        why = f"{wanted} is not an installed llm model" if wanted else "no llm model installed"
        report.add("generation", "fail" if wanted else "skip", why)
        return
    setup = llm_setup(model.mode, system_prompt="You are a helpful assistant.",
                      max_token_len=model.kv_cache_len or 1023)  # fmt: skip
    started = time.monotonic()
    try:
        unit = await client.open_unit("llm", setup)
    except TaskFull:
        report.add("generation", "skip", "every llm slot on the device is in use")
        return
    except _FAILURES as exc:
        report.add("generation", "fail", f"setup of {model.mode} failed: {exc}")
        return
    loaded = time.monotonic() - started
    try:
        first = time.monotonic()
        async with aclosing(unit.generate("Say hello.", idle_timeout=client.setup_timeout)) as deltas:
            token = await asyncio.wait_for(anext(deltas), client.setup_timeout)
        report.add("generation", "ok", f"{model.mode}: loaded in {loaded:.1f} s, first token "
                   f"{token!r} after {time.monotonic() - first:.2f} s")  # fmt: skip
    except (*_FAILURES, StopAsyncIteration) as exc:
        report.add("generation", "fail", f"{model.mode}: no token: {exc!r}")
    finally:
        try:
            await unit.exit()
        except _FAILURES as exc:
            report.add("cleanup", "warn", f"exit of {unit.work_id} failed: {exc}")
