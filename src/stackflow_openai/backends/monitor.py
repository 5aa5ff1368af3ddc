"""Keeps each device's state true: probes, backoff, recovery, model refresh, memory and temperature.

One task per device:
- up: ping every `probe_interval` (or at once when a request failed in a way a lost device explains);
  a failed ping marks it down. Each probe also prunes units whose connection died, which is how a
  device `reset` (every connection dropped, every work_id invalid) rebuilds the pool: the dead units
  are dropped (exited by work_id before any new setup) and the next requests set up fresh ones.
- down: try to reconnect after `probe_interval`, doubling up to `max_backoff`. On success the model
  list is read again, instances orphaned by the outage are exited, and the device is up again.
- every `stats_interval`: cmminfo and hwinfo for /metrics; every `refresh_interval`: lsmode again.
Any change of what is reachable calls `on_change` (the registry rebuilds its model list).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence

from stackflow_openai.config import Settings
from stackflow_openai.stackflow.errors import ConnectionLost, DeviceError, StackFlowError
from stackflow_openai.stackflow.pool import UNIT_LIMITS

from .devices import Device
from .owned_units import OwnedUnits

__all__ = ["POOLED_UNITS", "DeviceMonitor"]

log = logging.getLogger(__name__)
POOLED_UNITS = list(UNIT_LIMITS)  # the unit types the pool sets up: those "all" clean-up looks at
_FAILURES = (StackFlowError, OSError, TimeoutError)


class DeviceMonitor:
    def __init__(self, devices: Sequence[Device], settings: Settings, on_change: Callable[[], None]) -> None:
        self.devices = list(devices)
        self.settings = settings
        self.health = settings.health
        self.on_change = on_change
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Connect to every device at once (a down device does not delay the others), then watch them."""
        await asyncio.gather(*(self._recover(d) for d in self.devices))
        self._tasks = [asyncio.create_task(self._watch(d), name=f"monitor {d.name}") for d in self.devices]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    # ---- the loop --------------------------------------------------------------------------------
    async def _watch(self, device: Device) -> None:
        while True:
            try:
                await self._watch_until_error(device)
            except Exception:  # a monitor that dies would leave its device down forever
                log.exception("device %s: monitor error; restarting it", device.name)
                await asyncio.sleep(self.health.probe_interval)

    async def _watch_until_error(self, device: Device) -> None:
        delay = self.health.probe_interval
        refresh = self.settings.discovery.refresh_interval
        # A recovery (in `start`, or below) read the models and sampled memory and temperature: the
        # first refresh and sample are one interval after it, not at the next probe.
        recovered = time.monotonic()
        next_stats, next_refresh = recovered + self.health.stats_interval, recovered + refresh
        while True:
            await self._sleep(device, delay)
            if not device.up:
                delay = self.health.probe_interval if await self._recover(device) else self._backoff(delay)
                recovered = time.monotonic()
                next_stats, next_refresh = recovered + self.health.stats_interval, recovered + refresh
                continue
            delay = self.health.probe_interval
            if not await self._probe(device):
                continue
            now = time.monotonic()
            if now >= next_stats:
                next_stats = now + self.health.stats_interval
                await self._sample(device)
            if refresh > 0 and now >= next_refresh:
                await self._refresh_models(device)
                next_refresh = now + refresh

    def _backoff(self, delay: float) -> float:
        return min(self.health.max_backoff, max(delay, self.health.probe_interval) * 2)

    @staticmethod
    async def _sleep(device: Device, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(device.wake.wait(), seconds)
        device.wake.clear()

    # ---- steps -----------------------------------------------------------------------------------
    async def _probe(self, device: Device) -> bool:
        try:
            await self._ping(device)
        except ConnectionLost:
            # A `reset` drops every connection, this one too, and a ping sent just before the drop was
            # noticed is lost with it. The device itself may well be answering: ask once more on a fresh
            # connection before calling it down.
            try:
                await self._ping(device)
            except _FAILURES as exc:
                self._down(device, exc)
                return False
        except _FAILURES as exc:
            self._down(device, exc)
            return False
        dropped = await device.pool.prune()
        if dropped:
            log.info(
                "device %s: dropped %d unit(s) whose connection died (device reset?)", device.name, dropped
            )
        if device.last_error:  # a suspicion that the ping did not confirm
            device.last_error = ""
        return True

    async def _ping(self, device: Device) -> None:
        async with asyncio.timeout(self.health.probe_timeout):
            await device.client.ping()

    def _down(self, device: Device, exc: BaseException) -> None:
        reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        device.pool.device_down(reason)  # every wait on it fails now (a hung device never answers)
        if device.set_state("down", reason):
            log.warning("device %s (%s) is down: %s", device.name, device.address, reason)
            self.on_change()

    async def _recover(self, device: Device) -> bool:
        """Connect, read version and models, exit orphans; then the device is up."""
        try:
            async with asyncio.timeout(self.health.probe_timeout + device.settings.connect_timeout):
                await device.client.connect()
                device.version = await device.client.version()
                await device.client.version2()  # unit versions: how to drive tts (stackflow/versions.py)
                models = await device.client.lsmode()
            await self._exit_orphans(device, self.settings.pool.orphan_cleanup)
            device.pool.device_up()
            await device.pool.prune()  # units of the device's previous life
        except _FAILURES as exc:
            if device.state == "starting":
                log.warning("device %s (%s) is not reachable (%s); serving without it for now",
                            device.name, device.address, exc)  # fmt: skip
            self._down(device, exc)
            return False
        device.models = models
        device.discovered = True
        device.set_state("up")
        log.info("device %s (%s) is up: StackFlow %s, %d models", device.name, device.address,
                 device.version, len(models))  # fmt: skip
        await self._sample(device)
        self.on_change()
        return True

    @staticmethod
    async def _exit_orphans(device: Device, mode: str) -> None:
        """Exit instances left on the device by an earlier run of the gateway (found with taskinfo):
        with "owned", only those it recorded as its own; with "all", every instance of the unit types it
        drives that its pool does not hold (another application's too); with "off", none."""
        if mode == "all":
            exited = await _exit_all_but_mine(device)
        elif mode == "owned" and device.owned is not None:
            exited = await _exit_owned_leftovers(device, device.owned)
        else:
            return
        if exited:
            log.info(
                "device %s: exited %d orphaned instance(s): %s", device.name, len(exited), ", ".join(exited)
            )

    async def _sample(self, device: Device) -> None:
        """Memory and temperature for /metrics; a failure here is not a reason to mark a device down."""
        try:
            async with asyncio.timeout(self.health.probe_timeout + 2.0):
                device.cmm = await device.client.memory()  # axcl_cmminfo on an AXCL host
                device.hw = await device.client.hwinfo()
        except _FAILURES as exc:
            log.debug("device %s: stats not read: %s", device.name, exc)

    async def _refresh_models(self, device: Device) -> None:
        try:
            async with asyncio.timeout(self.health.probe_timeout):
                models = await device.client.lsmode()
        except _FAILURES as exc:
            log.debug("device %s: lsmode failed: %s", device.name, exc)
            return
        if [m.mode for m in models] != [m.mode for m in device.models]:
            log.info("device %s: its model list changed (%d models)", device.name, len(models))
            device.models = models
            self.on_change()


async def _exit_all_but_mine(device: Device) -> list[str]:
    mine = set(device.pool.work_ids())
    exited = []
    for unit_type in POOLED_UNITS:
        try:
            for work_id in await device.client.tasklist(unit_type):
                if work_id not in mine:
                    await device.client.exit_instance(work_id)
                    exited.append(work_id)
        except DeviceError as exc:  # -9: unit not installed on this device
            log.debug("device %s: taskinfo %s: %s", device.name, unit_type, exc)
    return exited


async def _exit_owned_leftovers(device: Device, owned: OwnedUnits) -> list[str]:
    """Exit the recorded instances that are still on the device and not in the pool; forget the rest.

    Only the unit's task list is read (taskinfo on a work_id would redirect a live instance's output to
    the sys connection, protocol §1.4, which must never happen to another application's unit)."""
    mine = set(device.pool.work_ids())
    leftovers = [w for w in owned.snapshot() if w not in mine]
    live: set[str] = set()
    for unit_type in sorted({w.partition(".")[0] for w in leftovers}):
        try:
            live.update(await device.client.tasklist(unit_type))
        except DeviceError as exc:  # unit not installed (any more): none of its instances can be there
            log.debug("device %s: taskinfo %s: %s", device.name, unit_type, exc)
    exited = []
    for work_id in leftovers:
        if work_id in live:
            try:
                await device.client.exit_instance(work_id)
                exited.append(work_id)
            except DeviceError as exc:  # already gone between the list and the exit
                log.debug("device %s: exit %s: %s", device.name, work_id, exc)
        owned.closed(work_id)  # exited or gone: either way no longer ours
    return exited
