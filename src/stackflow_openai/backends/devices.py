"""Devices as the gateway sees them, and the router that makes one model on several devices one model.

A `Device` is one StackFlow endpoint: its client, its unit pool, the models its `lsmode` listed, its
state (starting, up, down; kept by `DeviceMonitor`) and its latest memory and temperature samples.

A `DeviceRouter` leases units like a `DevicePool` does, over every device that is up and lists the
model: it tries the device with the most free capacity first, and the next one when a device cannot
set the model up. A failure that looks like a lost device wakes its monitor at once.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any, Literal, Protocol

from stackflow_openai.config import DeviceSettings, Settings
from stackflow_openai.ops.context import note_device, note_model
from stackflow_openai.stackflow.client import DeviceClient, HwInfo
from stackflow_openai.stackflow.errors import ConnectionLost, DeviceError, DeviceTimeout
from stackflow_openai.stackflow.models import CmmInfo, ModelDescriptor
from stackflow_openai.stackflow.pool import DevicePool
from stackflow_openai.stackflow.poolapi import PoolUnavailable, Prefer
from stackflow_openai.stackflow.unit import Unit
from stackflow_openai.stackflow.versions import Version

from .owned_units import OwnedUnits

__all__ = ["Device", "DeviceObserver", "DeviceRouter", "DeviceState"]

DeviceState = Literal["starting", "up", "down"]


class DeviceObserver(Protocol):
    """Metrics sink for device events (see ops/metrics.py)."""

    def queue_wait(self, device: str, model: str, seconds: float) -> None: ...

    def unit_setup(self, device: str, model: str, seconds: float) -> None: ...

    def device_error(self, device: str, code: str) -> None: ...


class _PoolHooks:
    """Adapts a DeviceObserver to the pool's PoolObserver by adding the device name."""

    def __init__(self, observer: DeviceObserver, device: str) -> None:
        self._observer, self._device = observer, device

    def queue_wait(self, model: str, seconds: float) -> None:
        self._observer.queue_wait(self._device, model, seconds)

    def unit_setup(self, model: str, seconds: float) -> None:
        self._observer.unit_setup(self._device, model, seconds)


class Device:
    def __init__(self, settings: DeviceSettings, gateway: Settings) -> None:
        self.settings = settings
        self.name = settings.name
        self.client = DeviceClient(
            settings.host,
            settings.port,
            timeout=settings.connect_timeout + 5,
            setup_timeout=settings.setup_timeout,
        )
        self.pool = DevicePool(
            self.client,
            queue_limit=gateway.pool.queue_limit,
            queue_timeout=gateway.pool.queue_timeout,
            setup_timeout=settings.setup_timeout,
        )
        # Only "owned" clean-up needs to know which instances are this gateway's; "all" and "off" touch
        # no disk.
        self.owned: OwnedUnits | None = None
        if gateway.pool.orphan_cleanup == "owned":
            self.owned = OwnedUnits.for_device(gateway.state_path(), self.address)
            self.pool.ledger = self.owned
        self.models: list[ModelDescriptor] = []
        self.state: DeviceState = "starting"
        self.discovered = False  # its model list was read at least once (lsmode)
        self.since = time.time()
        self.last_error = ""
        self.version = ""
        self.cmm: CmmInfo | None = None
        self.hw: HwInfo | None = None
        self.observer: DeviceObserver | None = None
        self.wake = asyncio.Event()  # set to make the monitor probe now

    @property
    def address(self) -> str:
        return f"{self.settings.host}:{self.settings.port}"

    @property
    def up(self) -> bool:
        return self.state == "up"

    def model(self, mode: str) -> ModelDescriptor | None:
        return next((m for m in self.models if m.mode == mode), None)

    def attach(self, observer: DeviceObserver) -> None:
        self.observer = observer
        self.pool.observer = _PoolHooks(observer, self.name)

    def set_state(self, state: DeviceState, error: str = "") -> bool:
        """Returns True when the state changed."""
        self.last_error = error if state == "down" else ""
        if state == self.state:
            return False
        self.state, self.since = state, time.time()
        return True

    def suspect(self, reason: str) -> None:
        """Something failed in a way a lost device would explain: have the monitor look now."""
        if self.up:
            self.last_error = reason
            self.wake.set()

    def status(self) -> dict[str, Any]:
        pool = self.pool.stats()
        out: dict[str, Any] = {
            "name": self.name,
            "address": self.address,
            "state": self.state,
            "since": int(self.since),
            "models": len(self.models),
            "units": {"instances": pool["instances"], "busy": pool["busy"], "waiting": pool["waiting"]},
            "loaded": self.pool.loaded_models(),
        }
        if self.cmm is not None:  # KiB on the wire (cmminfo); bytes here, as in /metrics
            out["memory"] = {"total": self.cmm.total * 1024, "used": self.cmm.used * 1024}
        if self.version:
            out["version"] = self.version
        if self.last_error:
            out["error"] = self.last_error
        return out


def _device_failure(exc: BaseException) -> BaseException | None:
    """The device-level cause of `exc`, if any (the backends chain it with `raise ... from`)."""
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None:
            return None
        if isinstance(seen, ConnectionLost | DeviceTimeout | DeviceError):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


class DeviceRouter:
    """Leases units of a model from whichever device (of `devices`) can serve it best."""

    def __init__(self, devices: Sequence[Device]) -> None:
        self.devices = list(devices)
        self._turn = itertools.count()

    def candidates(self, mode: str) -> list[tuple[Device, ModelDescriptor]]:
        found = []
        for device in self.devices:
            descriptor = device.model(mode) if device.up else None
            if descriptor is not None:
                found.append((device, descriptor))
        return found

    def reachable(self, mode: str) -> bool:
        return bool(self.candidates(mode))

    def unit_version(self, unit: str) -> Version | None:
        """The version of `unit` on every device that is up and runs it; None unless all say the same."""
        running = [d for d in self.devices if d.up and any(m.unit == unit for m in d.models)]
        versions = {d.client.unit_versions.get(unit) for d in running}
        return versions.pop() if len(versions) == 1 else None

    def _ranked(
        self,
        model: ModelDescriptor,
        setup: Mapping[str, Any],
        pool_size: int | None,
        prefer: Prefer = None,
    ) -> list[tuple[Device, ModelDescriptor]]:
        found = self.candidates(model.mode)
        if len(found) < 2:
            return found  # nothing to rank (the common one-device case skips the capacity queries)
        turn = next(self._turn) % len(found)

        # The device whose idle unit holds the request's conversation (a ctx model) first; then most free
        # capacity; among equals, turns rotate so that load spreads over devices.
        def rank(item: tuple[int, tuple[Device, ModelDescriptor]]) -> tuple[bool, int, int, int]:
            index, (device, descriptor) = item
            free, matching = device.pool.capacity(descriptor, setup, pool_size=pool_size)
            held = prefer is not None and device.pool.holds(descriptor, setup, prefer)
            return held, free, matching, -((index - turn) % len(found))

        return [pair for _, pair in sorted(enumerate(found), key=rank, reverse=True)]

    def _unavailable(self, model: ModelDescriptor) -> PoolUnavailable:
        having = [d for d in self.devices if d.model(model.mode) is not None]
        if not having:
            return PoolUnavailable(f"no device serves {model.mode}")
        states = ", ".join(f"{d.name} is {d.state}" for d in having)
        return PoolUnavailable(f"no reachable device serves {model.mode} ({states})")

    @asynccontextmanager
    async def lease(
        self,
        model: ModelDescriptor,
        setup: Mapping[str, Any],
        *,
        pool_size: int | None = None,
        prefer: Prefer = None,
    ) -> AsyncIterator[Unit]:
        note_model(model.mode)
        last: PoolUnavailable | None = None
        for device, descriptor in self._ranked(model, setup, pool_size, prefer):
            lease = device.pool.lease(descriptor, setup, pool_size=pool_size, prefer=prefer)
            try:
                unit = await lease.__aenter__()
            except PoolUnavailable as exc:
                last = exc
                self._failed(device, exc)
                continue  # try the next device: this one cannot set the model up now
            note_device(device.name)
            try:
                yield unit
            except BaseException as exc:
                self._failed(device, exc)
                await lease.__aexit__(type(exc), exc, exc.__traceback__)
                raise
            await lease.__aexit__(None, None, None)
            return
        raise last or self._unavailable(model)

    @staticmethod
    def _failed(device: Device, exc: BaseException) -> None:
        cause = _device_failure(exc)
        if cause is None:
            return
        if isinstance(cause, DeviceError):
            code = str(cause.code)
        else:
            code = "timeout" if isinstance(cause, DeviceTimeout) else "connection_lost"
            device.suspect(f"{type(cause).__name__}: {cause}")
        if device.observer is not None:
            device.observer.device_error(device.name, code)
