"""The emulated llm-sys daemon: TCP server, connections, framing and dispatch (protocol §1, §2.3).

Dispatch is synchronous per connection and in arrival order, like the daemon's global mutex:
sys actions answer at once (hwinfo later, on its own task), inference is published to the
instance (no acknowledgement), and every other action is relayed to the unit's control queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import Coroutine, Iterable, Mapping
from typing import Any

from stackflow_openai.emulator.boards import board_profile
from stackflow_openai.emulator.catalogue import load_catalogue
from stackflow_openai.emulator.connection import ClientConnection
from stackflow_openai.emulator.engines.base import Engine
from stackflow_openai.emulator.engines.scripted import ScriptedEngine, Timing
from stackflow_openai.emulator.engines.select import EngineChoice, choose_engine
from stackflow_openai.emulator.faults import Faults
from stackflow_openai.emulator.framing import DeviceFramer, reace_reset_line
from stackflow_openai.emulator.replies import build_reply
from stackflow_openai.emulator.state import DeviceState
from stackflow_openai.emulator.sysactions import SysActions
from stackflow_openai.emulator.units.asr import AsrUnit, WhisperUnit
from stackflow_openai.emulator.units.base import UnitService
from stackflow_openai.emulator.units.cosy import CosyUnit
from stackflow_openai.emulator.units.llm import LlmUnit
from stackflow_openai.emulator.units.tts import MeloUnit, TtsUnit
from stackflow_openai.emulator.units.vlm import VlmUnit
from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["DEFAULT_CMM_TOTAL_KIB", "UNIT_TYPES", "Emulator", "run_emulator"]

DEFAULT_CMM_TOTAL_KIB = 3145728  # the AX630C's (boards.py)
UNIT_TYPES: dict[str, type[UnitService]] = {
    "llm": LlmUnit,
    "vlm": VlmUnit,
    "melotts": MeloUnit,
    "tts": TtsUnit,
    "whisper": WhisperUnit,
    "asr": AsrUnit,
    "cosy_voice": CosyUnit,
}
_FIRST_CONNECTION = 8000  # llm-sys `counter_port`
_READ_SIZE = 65536
_log = logging.getLogger(__name__)


class Emulator:
    """A StackFlow device on a TCP port. See the package docstring for the private extensions."""

    def __init__(
        self,
        engine: Engine | None = None,
        catalogue_dirs: Iterable[str | os.PathLike[str]] = (),
        cmm_total_kib: int | None = None,
        installed_units: Iterable[str] | None = None,
        hwinfo_delay: float = 1.0,
        *,
        engines: Mapping[str, Engine] | None = None,
        include_builtin_catalogue: bool = True,
        neon_framing: bool = True,
        board: str = "ax630c",
        units: str | None = None,
    ) -> None:
        self.engine: Engine = engine if engine is not None else ScriptedEngine(Timing())
        self.faults = Faults()
        self.hwinfo_delay = hwinfo_delay
        self.neon_framing = neon_framing
        installed = tuple(UNIT_TYPES) if installed_units is None else tuple(installed_units)
        unknown = [u for u in installed if u not in UNIT_TYPES]
        if unknown:
            raise ValueError(f"unknown units {unknown}; known: {sorted(UNIT_TYPES)}")
        self.installed_units = installed
        self.board, self.generation = board_profile(board, units)
        self.state = DeviceState(
            catalogue=load_catalogue(catalogue_dirs, include_builtin=include_builtin_catalogue, board=board),
            engine=self.engine,
            engines=engines or {},
            cmm_total_kib=self.board.cmm_total_kib if cmm_total_kib is None else cmm_total_kib,
            faults=self.faults,
            generation=self.generation,
        )
        self.units = self._new_units()
        self.host = ""
        self.port = 0
        self._sys = SysActions(self)
        self._server: asyncio.Server | None = None
        self._connections: set[ClientConnection] = set()
        self._tasks: set[asyncio.Task[Any]] = set()  # hwinfo replies, resets
        self._client_tasks: set[asyncio.Task[Any]] = set()
        self._next_connection = _FIRST_CONNECTION

    @property
    def catalogue(self) -> list[ModelDescriptor]:
        return list(self.state.catalogue)

    def _new_units(self) -> dict[str, UnitService]:
        return {name: UNIT_TYPES[name](self.state) for name in self.installed_units}

    # ----------------------------------------------------------------- lifecycle
    async def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = await asyncio.start_server(self._serve_client, host, port)
        address = self._server.sockets[0].getsockname()
        self.host, self.port = address[0], address[1]

    async def stop(self) -> None:
        """Close the server and every connection, and cancel every unit task."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()  # closing the transport ends each reader with EOF
        clients = list(self._client_tasks)
        if clients:
            _, late = await asyncio.wait(clients, timeout=2.0)
            for task in late:
                task.cancel()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for unit in self.units.values():
            await unit.shutdown()
        for conn in list(self._connections):
            await conn.wait_closed(grace=1.0)
        if self._server is not None:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._server.wait_closed(), 2.0)
            self._server = None

    async def __aenter__(self) -> Emulator:
        if self._server is None:
            await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # ----------------------------------------------------------------- introspection
    def live_instances(self) -> list[dict[str, Any]]:
        """Every registered instance (loading ones too): work_id, unit, model, state, overflows."""
        instances = sorted(self.state.registry.values(), key=lambda i: i.number)
        return [instance.describe() for instance in instances]

    def totals(self) -> dict[str, Any]:
        return {
            "prefill_overflows": self.state.prefill_overflows,
            "next_work_id": self.state.next_work_id,
            "cmm_used": self.state.cmm_used_kib(),
            "connections": sum(1 for c in self._connections if c.is_open),
        }

    @property
    def prefill_overflows(self) -> int:
        return self.state.prefill_overflows

    # ----------------------------------------------------------------- reset
    def schedule_reset(self, delay: float = 0.0) -> None:
        self.spawn(self._reset(delay))

    async def _reset(self, delay: float) -> None:
        """`systemctl restart llm-*`: every connection drops, every instance is gone, ids restart."""
        if delay > 0:
            await asyncio.sleep(delay)
        for conn in list(self._connections):
            conn.close(flush=True)  # the acknowledgement (already queued) still goes out
        old_units, self.units = self.units, self._new_units()
        self.state.forget_everything()
        for unit in old_units.values():
            await unit.shutdown()

    # ----------------------------------------------------------------- connections
    async def _serve_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._client_tasks.add(task)
        conn = ClientConnection(self._next_connection, writer)
        self._next_connection += 1
        if self._next_connection > 65535:  # the device wraps its channel numbers the same way
            self._next_connection = _FIRST_CONNECTION
        self._connections.add(conn)
        framer = DeviceFramer(neon=self.neon_framing)
        try:
            while conn.is_open:
                chunk = await reader.read(_READ_SIZE)
                if not chunk or not conn.is_open:
                    break
                self._on_read(conn, framer, chunk)
        except (ConnectionError, OSError):
            pass
        finally:
            conn.close(flush=False)  # the peer is gone: anything still queued is lost
            self._connections.discard(conn)
            if task is not None:
                self._client_tasks.discard(task)

    def _on_read(self, conn: ClientConnection, framer: DeviceFramer, chunk: bytes) -> None:
        if self.faults.hang:
            return  # a hung daemon reads nothing and answers nothing
        result = framer.feed(chunk)
        for frame in result.frames:
            try:
                self.dispatch(conn, frame)
            except Exception:
                # llm-sys catches whatever its dispatcher throws like a framing error.
                _log.exception("dispatch failed")
                conn.send(reace_reset_line())
                return
        if result.reset:
            conn.send(reace_reset_line())

    # ----------------------------------------------------------------- dispatch
    def dispatch(self, conn: ClientConnection, frame: bytes) -> None:
        """`unit_action_match` for one complete frame."""
        envelope = _parse_envelope(frame)
        if envelope is None:
            conn.send(build_reply("0", "sys", code=-2))
            return
        request_id, work_id, action = envelope["request_id"], envelope["work_id"] or "sys", envelope["action"]
        if action == "inference":
            instance = self.state.registry.get(work_id)
            if instance is None:
                conn.send(build_reply(request_id, work_id, code=-4))
                return
            # The daemon publishes the raw frame with its return channel spliced in front.
            text = frame.decode("utf-8")
            instance.deliver(conn, '{"zmq_com":"' + conn.url + '",' + text[1:])
            return
        unit_name = work_id.split(".", 1)[0]
        if unit_name == "sys":
            self._sys.handle(conn, envelope, request_id, action)
        elif unit_name:
            unit = self.units.get(unit_name)
            if unit is None:
                conn.send(build_reply(request_id, work_id, code=-9))
            else:
                unit.submit(conn, frame.decode("utf-8"))


def _parse_envelope(frame: bytes) -> dict[str, Any] | None:
    """The frame as JSON if it has string request_id, work_id and action; else None (→ -2)."""
    try:
        envelope = json.loads(frame.decode("utf-8"), parse_constant=_reject_constant)
    except ValueError:  # includes UnicodeDecodeError: simdjson validates UTF-8
        return None
    if not isinstance(envelope, dict):
        return None
    for key in ("request_id", "work_id", "action"):
        if not isinstance(envelope.get(key), str):
            return None
    return envelope


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


async def run_emulator(
    host: str,
    port: int,
    *,
    realistic: bool = False,
    catalogue_dirs: Iterable[str | os.PathLike[str]] = (),
    engine: EngineChoice = "scripted",
    board: str = "ax630c",
    units: str | None = None,
) -> None:
    """Serve in the foreground until cancelled (the CLI runs it under asyncio.run)."""
    chosen, description = choose_engine(engine, realistic=realistic)
    emulator = Emulator(engine=chosen, catalogue_dirs=catalogue_dirs, board=board, units=units)
    await emulator.start(host, port)
    print(f"StackFlow emulator listening on {emulator.host}:{emulator.port}", flush=True)
    print(f"board: {emulator.board.name} ({emulator.board.description}), {len(emulator.catalogue)} models; "
          f"units: {emulator.generation.name}", flush=True)  # fmt: skip
    print(description, flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        await emulator.stop()
