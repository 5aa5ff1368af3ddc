"""Operations against emulated devices: device metrics, what the gateway asks a device, doctor, CLI."""

from __future__ import annotations

import asyncio
import io
import json
import threading
import time
from collections.abc import Iterator
from contextlib import redirect_stdout
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ops_harness import MultiHarness
from stackflow_openai.cli import main
from stackflow_openai.emulator import Emulator, ScriptedEngine, Timing
from stackflow_openai.ops.doctor import run_doctor
from stackflow_openai.stackflow.connection import Connection

LLM = "qwen2.5-0.5B-p256-ax630c"
# Everything the gateway may ask of a device. Never: reset, reboot, bashexec, uartsetup, upgrade...
ALLOWED_ACTIONS = {"ping", "version", "version2", "lsmode", "cmminfo", "axcl_cmminfo", "hwinfo", "taskinfo",
                   "setup", "exit", "pause", "inference"}  # fmt: skip


def samples(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    found: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            found.setdefault(s.name, []).append((s.labels, s.value))
    return found


def _used_memory(m: dict[str, list[tuple[dict[str, str], float]]]) -> float:
    return sum(v for s, v in m.get("stackflow_openai_device_memory_bytes", []) if s["kind"] == "used")


def test_device_metrics_scraped_and_parsed() -> None:
    h = MultiHarness(["kit"]).start()
    try:
        client = h.client()
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}])
        client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "a b"}])
        stream = client.chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": "c"}], stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "You said 1 word: c."
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hello.", response_format="pcm").read()
        m = samples(h.get("/metrics").text)
        # Memory is sampled every stats_interval (0.2 s here): the loaded units show up in time.
        deadline = time.monotonic() + 5
        while _used_memory(m) == 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            m = samples(h.get("/metrics").text)
    finally:
        h.stop()
    assert m["stackflow_openai_device_up"] == [({"device": "kit"}, 1.0)]
    units = {(s["unit"], s["state"]): v for s, v in m["stackflow_openai_units"]}
    assert units[("llm", "idle")] == 1 and units[("melotts", "idle")] == 1
    memory = {s["kind"]: v for s, v in m["stackflow_openai_device_memory_bytes"]}
    assert memory["total"] == memory["used"] + memory["free"] and memory["used"] > 0
    (labels, celsius), *_ = m["stackflow_openai_device_temperature_celsius"]
    assert labels == {"device": "kit"} and 20 < celsius < 100
    assert m["stackflow_openai_queue_depth"] == [({"device": "kit"}, 0.0)]
    waits = {s["model"]: v for s, v in m["stackflow_openai_queue_wait_seconds_count"]}
    assert waits[LLM] == 3
    setups = {s["model"]: v for s, v in m["stackflow_openai_unit_setup_seconds_count"]}
    assert setups[LLM] == 1  # the later requests reused the unit
    ttft = {s["model"]: v for s, v in m["stackflow_openai_time_to_first_token_seconds_count"]}
    assert ttft[LLM] == 1
    tokens = {(s["model"], s["kind"]): v for s, v in m["stackflow_openai_tokens_total"]}
    assert tokens[(LLM, "completion")] > 0 and tokens[(LLM, "prompt")] > 0
    assert {model for model, _ in tokens} == {LLM}  # the alias is counted under the model it resolves to
    routes = {s["route"] for s, _ in m["stackflow_openai_requests_total"]}
    assert {"/v1/chat/completions", "/v1/audio/speech"} <= routes


def test_the_gateway_asks_devices_only_for_safe_actions(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[str] = []
    lock = threading.Lock()
    request, send = Connection.request, Connection.send

    async def recording_request(self: Connection, work_id: str, action: str, **kwargs: Any) -> Any:
        with lock:
            seen.append(action)
        return await request(self, work_id, action, **kwargs)

    async def recording_send(self: Connection, message: dict[str, Any]) -> None:
        with lock:
            seen.append(str(message.get("action")))
        await send(self, message)

    monkeypatch.setattr(Connection, "request", recording_request)
    monkeypatch.setattr(Connection, "send", recording_send)
    h = MultiHarness(["kit"], timing=Timing(tokens_per_second=50)).start()
    try:
        client = h.client()
        client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "a b"}], max_tokens=1)
        client.audio.speech.create(model="tts-1", voice="alloy", input="Hi.", response_format="pcm").read()
        wav = client.audio.speech.create(
            model="tts-1", voice="alloy", input="Hi there.", response_format="wav"
        )
        client.audio.transcriptions.create(model="whisper-1", file=("a.wav", io.BytesIO(wav.read())))
        h.reset_device("kit")  # someone else resets it: the gateway recovers without any admin action
        client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "again"}])
        for path in ("/health", "/ready", "/metrics"):
            h.get(path)
    finally:
        h.stop()
    with lock:
        actions = set(seen)
    actions.discard("reset")  # sent by the test's own reset_device, through the same class
    assert {"setup", "inference", "exit", "pause", "ping", "lsmode"} <= actions
    assert actions <= ALLOWED_ACTIONS, actions - ALLOWED_ACTIONS
    assert seen.count("reset") == 1  # exactly the test's one


# ---- doctor and the CLI -------------------------------------------------------------------------------
async def test_doctor_on_an_emulator_checks_everything_and_leaves_nothing() -> None:
    emulator = Emulator(engine=ScriptedEngine(timing=Timing()), hwinfo_delay=0.05)
    await emulator.start("127.0.0.1", 0)
    try:
        lines: list[str] = []
        ok = await run_doctor("127.0.0.1", emulator.port, out=lines.append)
        assert emulator.live_instances() == []
    finally:
        await emulator.stop()
    text = "\n".join(lines)
    assert ok, text
    for check in ("reachable", "version", "memory", "hardware", "models", "instances", "generation"):
        assert f"OK    {check}" in text
    assert "v1.6" in text and LLM in text and "first token" in text


async def test_doctor_reports_an_unreachable_device_and_a_missing_model() -> None:
    emulator = Emulator(engine=ScriptedEngine(timing=Timing()), hwinfo_delay=0.05)
    await emulator.start("127.0.0.1", 0)
    port = emulator.port
    try:
        lines: list[str] = []
        assert not await run_doctor("127.0.0.1", port, model="no-such-llm", out=lines.append)
        assert "FAIL  generation   no-such-llm is not an installed llm model" in "\n".join(lines)
    finally:
        await emulator.stop()
    lines = []
    assert not await run_doctor("127.0.0.1", port, out=lines.append, call_timeout=2)
    assert "FAIL  reachable" in "\n".join(lines)


@pytest.fixture
def emulator_port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    emulator = Emulator(engine=ScriptedEngine(timing=Timing()), hwinfo_delay=0.05)
    asyncio.run_coroutine_threadsafe(emulator.start("127.0.0.1", 0), loop).result(10)
    yield emulator.port
    asyncio.run_coroutine_threadsafe(emulator.stop(), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(5)


def run_cli(*args: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def test_cli_models_and_doctor(emulator_port: int) -> None:
    device = f"127.0.0.1:{emulator_port}"
    code, out = run_cli("models", "--device", device)
    assert code == 0
    assert any(line.split()[:2] == [LLM, "llm"] and "chat" in line for line in out.splitlines())
    code, out = run_cli("models", "--device", device, "--json")
    assert code == 0 and LLM in [m["mode"] for m in json.loads(out)]
    code, out = run_cli("doctor", "--device", device, "--no-generate")
    assert code == 0 and "SKIP  generation" in out and "All checks passed." in out


def test_cli_help_texts_explain_each_command() -> None:
    for command, words in [
        ("serve", "--api-key"),
        ("doctor", "one token"),
        ("models", "lsmode"),
        ("emulator", "llm-sys"),
    ]:
        out = io.StringIO()
        with redirect_stdout(out), pytest.raises(SystemExit) as exit_:
            main([command, "--help"])
        assert exit_.value.code == 0 and words in out.getvalue().replace("\n", " "), command


async def test_a_device_reset_does_not_mark_the_device_down() -> None:
    """A reset drops the monitor's own connection too; a device that answers at once is still up.

    The reset is timed at several points of the monitor's ping (the loss can land before it is sent, while
    it is in flight, or after the EOF was read): each time the probe must find the device up.
    """
    from emulator_helpers import started_emulator
    from stackflow_openai.backends.devices import Device
    from stackflow_openai.backends.monitor import DeviceMonitor
    from stackflow_openai.config import DeviceSettings, Settings

    for steps in range(10):
        async with started_emulator() as emu:
            settings = Settings()
            device = Device(DeviceSettings(name="a", host="127.0.0.1", port=emu.port), settings)
            monitor = DeviceMonitor([device], settings, on_change=lambda: None)
            try:
                assert await monitor._recover(device) and device.up
                emu.schedule_reset()
                for _ in range(steps):
                    await asyncio.sleep(0)
                assert await monitor._probe(device), (steps, device.last_error)
                assert device.up
            finally:
                await device.client.close()
