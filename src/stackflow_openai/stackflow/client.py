"""The device client: sys calls on one shared connection, units on dedicated ones (protocol §3, §4).

A disconnect does not free a unit on the device (protocol §1.4), so every path that may have
created an instance either hands it to the caller as a `Unit` or exits it: a setup that fails by
timeout, cancellation or connection loss is followed by a `taskinfo` diff and an `exit` of the
instance it may have left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .codec import Reply
from .connection import Connection
from .errors import ActionMatchFalse, DeviceError, DeviceTimeout, StackFlowError
from .models import CmmInfo, ModelDescriptor, TaskInfo
from .unit import Unit
from .versions import Version, parse_version2

__all__ = ["DeviceClient", "HwInfo"]

log = logging.getLogger(__name__)

# A just-sent setup may not be visible in the task list yet: look again once after this delay.
_TASKLIST_RECHECK = 0.3


@dataclass(frozen=True, slots=True)
class HwInfo:
    cpu_loadavg: int  # percent
    mem: int  # percent of RAM in use
    temperature: int  # raw thermal-zone value, millidegrees C
    eth_info: list[dict[str, Any]] = field(default_factory=list)


def _as_int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


class DeviceClient:
    """A StackFlow device: sys calls pipelined on one shared connection, units on their own."""

    def __init__(self, host: str, port: int, *, timeout: float = 10.0, setup_timeout: float = 120.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.setup_timeout = setup_timeout
        self._sys: Connection | None = None
        self._connect_lock = asyncio.Lock()
        # The device serialises setups per unit type anyway; doing so here keeps the task-list
        # diff after a failed setup unambiguous (within this client).
        self._setup_locks: dict[str, asyncio.Lock] = {}
        self._units: set[Unit] = set()
        self._reapers: set[asyncio.Task[None]] = set()
        self.unit_versions: dict[str, Version] = {}  # from version2(); empty: unknown
        self.axcl: bool | None = None  # llm-sys on an AXCL host; None until memory() found out

    # ---- connection ----------------------------------------------------------------------------

    async def connect(self) -> None:
        await self._connection()

    async def _connection(self) -> Connection:
        """The sys connection, reopened if it dropped (e.g. after `reset`)."""
        async with self._connect_lock:
            if self._sys is None or self._sys.closed:
                self._sys = await Connection.open(self.host, self.port, connect_timeout=self.timeout)
            return self._sys

    async def _request(self, work_id: str, action: str, **kwargs: Any) -> Reply:
        conn = await self._connection()
        return await conn.request(work_id, action, timeout=kwargs.pop("timeout", self.timeout), **kwargs)

    async def close(self) -> None:
        """Exit every unit opened through this client, finish pending clean-ups, close the connection."""
        for unit in list(self._units):
            with contextlib.suppress(StackFlowError, OSError):
                await unit.exit(timeout=self.timeout)
        if self._reapers:  # clean-ups of abandoned setups: leaking an instance is worse than waiting
            await asyncio.wait(self._reapers, timeout=self.setup_timeout + self.timeout)
        if self._sys is not None:
            await self._sys.close()

    async def __aenter__(self) -> DeviceClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # ---- sys calls -----------------------------------------------------------------------------

    async def ping(self) -> None:
        await self._request("sys", "ping")

    async def version(self) -> str:
        return str((await self._request("sys", "version")).data)

    async def lsmode(self) -> list[ModelDescriptor]:
        data = (await self._request("sys", "lsmode")).data
        return [ModelDescriptor.from_json(d) for d in data or () if isinstance(d, dict)]

    async def version2(self) -> dict[str, Version]:
        """The installed units' versions (also kept in `unit_versions`); {} where the firmware lacks it."""
        try:
            data = (await self._request("sys", "version2")).data
        except ActionMatchFalse:
            data = None
        self.unit_versions = parse_version2(data)
        return self.unit_versions

    async def cmminfo(self) -> CmmInfo:
        return _cmm_info((await self._request("sys", "cmminfo")).data)

    async def axcl_cmminfo(self) -> CmmInfo:
        """An AXCL host's first card's memory (axcl-smi); -3 (ActionMatchFalse) off the axcl firmware."""
        return _cmm_info((await self._request("sys", "axcl_cmminfo")).data)

    async def memory(self) -> CmmInfo | None:
        """Free CMM memory from whichever call tells the truth on this device; None when unknown.

        An AXCL host answers `cmminfo` from uninitialised memory, so the first call asks
        `axcl_cmminfo`, which only the axcl firmware knows (others answer -3): that settles `axcl`.
        """
        if self.axcl is None:
            try:
                info = await self.axcl_cmminfo()
            except ActionMatchFalse:
                self.axcl = False
            else:
                self.axcl = True
                return info if info.plausible else None
        info = await (self.axcl_cmminfo() if self.axcl else self.cmminfo())
        return info if info.plausible else None

    async def hwinfo(self) -> HwInfo:
        """Takes about a second on a real device (its handler sleeps)."""
        data = (await self._request("sys", "hwinfo", timeout=self.timeout + 1.0)).data
        data = data if isinstance(data, dict) else {}
        eth = data.get("eth_info")
        return HwInfo(
            cpu_loadavg=_as_int(data.get("cpu_loadavg")),
            mem=_as_int(data.get("mem")),
            temperature=_as_int(data.get("temperature")),
            eth_info=[e for e in eth if isinstance(e, dict)] if isinstance(eth, list) else [],
        )

    async def tasklist(self, unit: str) -> list[str]:
        """Live work_ids of a unit (including instances still loading), via taskinfo on the bare name."""
        data = (await self._request(unit, "taskinfo")).data
        return [str(w) for w in data] if isinstance(data, list) else []

    async def taskinfo(self, work_id: str) -> TaskInfo:
        """Details of one instance. Caution: this redirects the instance's output to the sys
        connection (protocol §1.4), so never call it on an instance someone is using."""
        return _task_info(work_id, (await self._request(work_id, "taskinfo")).data)

    async def exit_instance(self, work_id: str) -> None:
        """Exit an instance from the sys connection (orphans, leftovers of a crashed gateway)."""
        await self._request(work_id, "exit")

    async def reset(self) -> None:
        """Restart every unit on the device. Acknowledged, then the device drops every connection;
        the next call reconnects. Every `Unit` handle becomes broken (its instance is gone)."""
        await self._request("sys", "reset")
        if self._sys is not None:
            await self._sys.close()

    # ---- units ---------------------------------------------------------------------------------

    async def open_unit(self, unit: str, setup: Mapping[str, Any], *, timeout: float | None = None) -> Unit:  # noqa: ASYNC109 - the API takes explicit timeouts
        """Set up a new instance of `unit` on a dedicated connection and return its handle.

        On any failure nothing is left on the device. If the setup may have created an instance
        (timeout, lost connection, cancellation), a clean-up exits it: the one the late setup reply
        names, else the one a task-list diff finds. After an error the clean-up is done when this
        raises. After a timeout or a cancellation it continues in the background, holding this
        unit's setup lock (the device cannot abort a loading model, and its task-list query would
        wait behind the stuck setup: the caller should not), and `close()` waits for it.
        """
        limit = self.setup_timeout if timeout is None else timeout
        lock = self._setup_locks.setdefault(unit, asyncio.Lock())
        try:
            async with asyncio.timeout(limit):
                await lock.acquire()
        except TimeoutError:
            raise DeviceTimeout(f"{unit}.setup: waited {limit} s for this client's previous setup") from None
        handed_over = False  # once the reaper task exists, it releases the lock
        try:
            before = set(await self.tasklist(unit))
            conn = await Connection.open(self.host, self.port, connect_timeout=self.timeout)
            # Its own task: cancelling the caller must not stop us from learning the outcome.
            setup_task = asyncio.get_running_loop().create_task(
                conn.request(unit, "setup", object=f"{unit}.setup", data=dict(setup), timeout=limit)
            )
            try:
                reply = await asyncio.shield(setup_task)
            except BaseException as exc:
                handed_over = True
                reaper = self._start_reaper(unit, before, lock, conn, setup_task)
                if not isinstance(exc, (asyncio.CancelledError, DeviceTimeout)):
                    await asyncio.shield(reaper)
                raise
            return self._adopt(conn, reply.work_id, unit, setup)
        finally:
            if not handed_over:
                lock.release()

    async def adopt_unit(self, work_id: str) -> Unit:
        """Take over a live instance (e.g. found with `tasklist` after a restart of the gateway).

        The `taskinfo` sent on the new connection also redirects the instance's output to it.
        """
        conn = await Connection.open(self.host, self.port, connect_timeout=self.timeout)
        try:
            info = _task_info(work_id, (await conn.request(work_id, "taskinfo", timeout=self.timeout)).data)
        except BaseException:
            await conn.close()
            raise
        setup = {"model": info.model, "response_format": info.response_format,
                 "enoutput": info.enoutput, "input": list(info.inputs)}  # fmt: skip
        return self._adopt(conn, work_id, work_id.split(".")[0], setup)

    def _adopt(self, conn: Connection, work_id: str, unit: str, setup: Mapping[str, Any]) -> Unit:
        handle = Unit(conn, work_id=work_id, unit=unit, setup=setup, host=self.host, port=self.port,
                      on_exit=self._units.discard)  # fmt: skip
        self._units.add(handle)
        return handle

    def _start_reaper(
        self, unit: str, before: set[str], lock: asyncio.Lock, conn: Connection, setup: asyncio.Task[Reply]
    ) -> asyncio.Task[None]:
        task = asyncio.get_running_loop().create_task(self._reap(unit, before, lock, conn, setup))
        self._reapers.add(task)
        task.add_done_callback(self._reapers.discard)
        return task

    async def _reap(
        self, unit: str, before: set[str], lock: asyncio.Lock, conn: Connection, setup: asyncio.Task[Reply]
    ) -> None:
        """Exit whatever a failed setup left on the device; owns the setup lock until done."""
        try:
            try:
                reply: Reply | None = await setup  # bounded by the setup's own timeout
            except StackFlowError as exc:
                if _setup_was_refused(exc):
                    return  # the device answered with an error: no instance exists
                reply = None
            if reply is not None:
                await self._exit_quietly(reply.work_id, conn)
            else:
                await self._exit_new_instances(unit, before)
        finally:
            await conn.close()
            lock.release()

    async def _exit_quietly(self, work_id: str, conn: Connection) -> None:
        log.info("exiting %s: its setup was abandoned", work_id)
        try:
            if conn.closed:
                await self.exit_instance(work_id)
            else:
                await conn.request(work_id, "exit", timeout=self.timeout)
        except StackFlowError as exc:
            log.warning("exit of abandoned %s failed: %s", work_id, exc)

    async def _exit_new_instances(self, unit: str, before: set[str]) -> None:
        """The setup's outcome is unknown: exit every instance that appeared since it was sent."""
        for attempt in range(2):
            try:
                new = [w for w in await self.tasklist(unit) if w not in before]
            except StackFlowError as exc:
                log.warning("%s: cannot list instances after a failed setup: %s", unit, exc)
                return
            for work_id in new:
                log.info("%s: exiting %s left by a failed setup", unit, work_id)
                try:
                    await self.exit_instance(work_id)
                except StackFlowError as exc:  # -6: it went away by itself
                    log.warning("%s: exit of %s failed: %s", unit, work_id, exc)
            if new or attempt:
                return
            await asyncio.sleep(_TASKLIST_RECHECK)  # a just-sent setup may not be listed yet

    def __repr__(self) -> str:
        return f"<DeviceClient {self.host}:{self.port} units={len(self._units)}>"


def _setup_was_refused(exc: BaseException) -> bool:
    """True when the device answered our setup with an error, so no instance exists.

    Broadcast framing errors carry request_id "0" and prove nothing about the setup.
    """
    return isinstance(exc, DeviceError) and exc.request_id not in ("", "0")


def _cmm_info(data: Any) -> CmmInfo:
    data = data if isinstance(data, dict) else {}
    return CmmInfo(remain=_as_int(data.get("remain")), total=_as_int(data.get("total")),
                   used=_as_int(data.get("used")))  # fmt: skip


def _task_info(work_id: str, data: Any) -> TaskInfo:
    data = data if isinstance(data, dict) else {}
    inputs = data.get("inputs", data.get("inputs_", []))  # the docs spell it `inputs_`
    if isinstance(inputs, str):
        inputs = [inputs]
    return TaskInfo(
        work_id=work_id,
        model=str(data.get("model", "")),
        response_format=str(data.get("response_format", "")),
        enoutput=bool(data.get("enoutput", False)),
        inputs=tuple(str(i) for i in inputs or ()),
    )
