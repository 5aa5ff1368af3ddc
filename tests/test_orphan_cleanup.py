"""Orphan clean-up exits only what this gateway set up (issue 10 point 6): another application's units
survive a gateway restart; a killed gateway's own leftovers are exited on the next start."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from e2e_harness import Harness
from stackflow_openai.backends.owned_units import OwnedUnits
from stackflow_openai.config import PoolSettings, Settings
from stackflow_openai.stackflow.connection import Connection
from stackflow_openai.stackflow.setups import llm_setup

LLM = "qwen2.5-0.5B-p256-ax630c"


async def _other_application_unit(port: int) -> str:
    """A unit set up by someone else (a UART app, the AI Pyramid's voice pipeline), kept after its
    client disconnects, as StackFlow keeps every instance."""
    conn = await Connection.open("127.0.0.1", port)
    setup = llm_setup(LLM, system_prompt="another application", max_token_len=1023)
    reply = await conn.request("llm", "setup", object="llm.setup", data=setup, timeout=10)
    await conn.close()
    return reply.work_id


def _killed_gateway_unit(port: int, state_home: Path) -> str:
    """Run a real gateway process against the emulator, have it set a unit up, then SIGKILL it: no
    shutdown, so its unit stays on the device, recorded in its state file."""
    env = {**os.environ, "XDG_DATA_HOME": str(state_home)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "stackflow_openai", "serve", "--device", f"127.0.0.1:{port}", "--port", "0"],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout is not None
        base = ""
        for _ in range(20):
            line = proc.stdout.readline()
            if "OpenAI-compatible API on " in line:
                base = line.split(" on ", 1)[1].strip()
                break
        assert base, "the gateway did not start"
        body = {"model": LLM, "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{base}/chat/completions", json=body, timeout=30).status_code == 200
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    (state_file,) = (state_home / "stackflow-openai").glob("owned-units-*.json")
    (work_id,) = json.loads(state_file.read_text())["units"]
    return str(work_id)


def _restart(mode: str, state_home: Path) -> tuple[Harness, str, str]:
    """(harness with its emulator, the other application's unit, the killed gateway's unit)."""
    h = Harness(
        settings=Settings(
            state_dir=str(state_home / "stackflow-openai"), pool=PoolSettings(orphan_cleanup=mode)
        )
    )
    h.thread.start()
    h.call(h.start_emulator)
    other = h.call(lambda: _other_application_unit(h.emulator.port))
    leftover = _killed_gateway_unit(h.emulator.port, state_home)
    assert sorted(i["work_id"] for i in h.live_instances()) == sorted([other, leftover])
    h.call(h._start)  # the next gateway starts against the same device
    return h, other, leftover


def test_a_restart_exits_the_killed_gateways_units_and_spares_another_applications(tmp_path: Path) -> None:
    h, other, _ = _restart("owned", tmp_path)
    try:
        assert [i["work_id"] for i in h.live_instances()] == [other]
        # Forgotten once exited: a later start does not exit that work_id again (it may be reused).
        assert OwnedUnits.for_device(h.settings.state_path(), f"127.0.0.1:{h.emulator.port}").snapshot() == {}
    finally:
        h.stop()


def test_all_exits_every_instance_the_gateway_does_not_hold(tmp_path: Path) -> None:
    h, _, _ = _restart("all", tmp_path)
    try:
        assert h.live_instances() == []
    finally:
        h.stop()


def test_off_exits_nothing(tmp_path: Path) -> None:
    h, other, leftover = _restart("off", tmp_path)
    try:
        assert sorted(i["work_id"] for i in h.live_instances()) == sorted([other, leftover])
    finally:
        h.stop()


def test_the_state_file_follows_setups_and_exits(tmp_path: Path) -> None:
    h = Harness(settings=Settings(state_dir=str(tmp_path)))
    h.start()
    try:
        ledger = lambda: OwnedUnits.for_device(tmp_path, f"127.0.0.1:{h.emulator.port}").snapshot()  # noqa: E731
        assert ledger() == {}
        body = {"model": LLM, "messages": [{"role": "user", "content": "hi"}]}
        assert httpx.post(f"{h.base_url}/chat/completions", json=body, timeout=30).status_code == 200
        (work_id,) = h.pool_work_ids()
        assert ledger() == {work_id: LLM}
        h.stop_gateway()  # a clean shutdown exits its units and forgets them
        assert ledger() == {}
        assert list(tmp_path.iterdir()) == []  # and leaves no file behind
    finally:
        h.stop()


def test_a_damaged_state_file_is_ignored_and_replaced(tmp_path: Path) -> None:
    path = tmp_path / "owned-units-127.0.0.1_1.json"
    path.write_text("{not json")
    owned = OwnedUnits.for_device(tmp_path, "127.0.0.1:1")
    assert owned.snapshot() == {}
    owned.opened("llm.1001", LLM)
    assert json.loads(path.read_text())["units"] == {"llm.1001": LLM}
    assert [p.name for p in tmp_path.iterdir()] == [path.name]  # no temporary file left behind


def test_an_unwritable_state_dir_does_not_stop_the_gateway(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    owned = OwnedUnits.for_device(blocker / "sub", "127.0.0.1:1")  # a directory under a file: never writable
    owned.opened("llm.1001", LLM)  # logged, not raised
    assert owned.snapshot() == {"llm.1001": LLM}


@pytest.mark.parametrize(("legacy", "mode"), [(False, "off"), (True, "owned")])
def test_the_old_cleanup_orphans_key_still_reads(legacy: bool, mode: str) -> None:
    assert PoolSettings(cleanup_orphans=legacy).orphan_cleanup == mode


def test_default_state_dir_is_under_the_users_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", "/srv/data")
    assert Settings().state_path() == Path("/srv/data/stackflow-openai")
    monkeypatch.delenv("XDG_DATA_HOME")
    assert Settings().state_path() == Path.home() / ".local/share/stackflow-openai"
