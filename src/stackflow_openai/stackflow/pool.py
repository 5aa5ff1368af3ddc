"""Per-device pool of unit instances, keyed by setup signature (design.md, "Unit pool").

Why a pool: a setup loads a model (seconds to minutes on a device), and the LLM unit fixes its
system prompt, sampling and `max_token_len` at setup. So an idle instance is reused only for a
request with the same setup; otherwise a new one is set up, evicting the least recently used idle
instance when the model's `pool_size`, the device's per-unit limit (protocol §6) or its CMM memory
is in the way. Busy instances are never touched: nobody's generation is cancelled to make room.
A request that cannot get an instance waits in a bounded queue with a deadline. Which instance serves,
or which is evicted, is decided in placement.py; this module holds the lock, the queue and the device calls.

Every instance that fails, or whose lease ends with an exception, is exited, so nothing leaks on the
device (a disconnect does not free units there, protocol §1.4).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from .client import DeviceClient
from .down import DeviceWentDown, DownState
from .errors import ConnectionLost, DeviceError, DeviceTimeout, ModelLoadFailed, TaskFull
from .estimate import ServiceTimes
from .memory import check_memory, load_failure
from .models import ModelDescriptor
from .placement import UNIT_LIMITS, Slot, capacity, pick, signature, unit_limit, unit_states
from .poolapi import PoolBusy, PoolObserver, PoolUnavailable, Prefer, UnitLedger
from .unit import Unit
from .versions import Version

__all__ = ["UNIT_LIMITS", "DevicePool"]  # its errors and protocols: poolapi.py

log = logging.getLogger(__name__)


class DevicePool:
    def __init__(
        self,
        client: DeviceClient,
        *,
        unit_limits: Mapping[str, int] = UNIT_LIMITS,
        queue_limit: int = 32,
        queue_timeout: float = 30.0,
        setup_timeout: float = 120.0,
    ) -> None:
        self.client = client
        self.unit_limits = dict(unit_limits)
        self.queue_limit = queue_limit
        self.queue_timeout = queue_timeout
        self.setup_timeout = setup_timeout
        self._slots: list[Slot] = []
        self._cond = asyncio.Condition()
        self._waiting = 0
        self._closed = False
        self.observer: PoolObserver | None = None
        self.ledger: UnitLedger | None = None
        # Units whose connection was lost. After a device reset their work_ids may be handed to new
        # instances, so they are exited (by work_id) before any new setup, never concurrently with one.
        self._lost: list[Unit] = []
        self._reap_lock = asyncio.Lock()
        # Set by the device monitor while the device is down: waiting for it is pointless (see `device_down`).
        self._down = DownState()
        self._notifiers: set[asyncio.Task[None]] = set()
        self.service_times = ServiceTimes()  # lease durations per model: Retry-After's basis

    # ---- introspection -------------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        busy = sum(1 for s in self._slots if s.busy)
        return {
            "instances": len(self._slots),
            "busy": busy,
            "idle": len(self._slots) - busy,
            "waiting": self._waiting,
        }

    def loaded_models(self) -> list[str]:
        """Models with at least one instance set up on the device (what /ready calls loaded)."""
        return sorted({s.model for s in self._slots if s.unit is not None})

    def work_ids(self) -> list[str]:
        return [s.unit.work_id for s in self._slots if s.unit is not None]

    def unit_version(self, unit: str) -> Version | None:
        return self.client.unit_versions.get(unit)

    def unit_states(self) -> dict[tuple[str, str], int]:
        """(unit type, state) → instances; state is loading, busy or idle."""
        return unit_states(self._slots)

    def capacity(
        self, model: ModelDescriptor, setup: Mapping[str, Any], *, pool_size: int | None = None
    ) -> tuple[int, int]:
        """(free places minus waiters, idle instances with this setup), to pick among devices
        (placement.capacity)."""
        size = pool_size or self._limit(model.unit)
        free, matching = capacity(self._slots, model, signature(setup), size, self.unit_limits)
        return free - self._waiting, matching

    def holds(self, model: ModelDescriptor, setup: Mapping[str, Any], prefer: Prefer) -> bool:
        """An idle instance with this setup that `prefer` accepts is here (routing by affinity)."""
        key = signature(setup)
        return prefer is not None and any(
            s.idle and s.model == model.mode and s.signature == key and s.unit is not None and prefer(s.unit)
            for s in self._slots
        )

    # ---- leasing -------------------------------------------------------------------------------
    @asynccontextmanager
    async def lease(
        self,
        model: ModelDescriptor,
        setup: Mapping[str, Any],
        *,
        pool_size: int | None = None,
        prefer: Prefer = None,
    ) -> AsyncIterator[Unit]:
        """An instance of `model` set up with `setup`, held for the block.

        `prefer`: among idle instances with this setup, one it accepts is taken first, else the least
        recently used (a ctx model's unit that holds the request's conversation: backends/conversations.py).

        The instance goes back to the pool when the block ends with the unit idle and healthy, even
        if the block raised (a client that went away leaves a paused, clean unit: worth keeping). A
        unit that is broken, or still busy with output nobody consumed, is exited.
        """
        started = time.monotonic()
        slot = await self._acquire(model, setup, pool_size or self._limit(model.unit), started, prefer)
        held = time.monotonic()
        try:
            assert slot.unit is not None
            yield slot.unit
            self.service_times.record(model.mode, time.monotonic() - held)
        finally:
            # A cancelled caller (Starlette cancels a response whose client left through an anyio
            # scope that cancels every later await too) must still give the place back, hence the
            # shield. A healthy unit is given back inline first: with the lock free that does not
            # suspend, and it spares the response the event-loop turns of a shielded task.
            unit = slot.unit
            if unit is not None and not (unit.broken or unit.busy):
                try:
                    await self._release(slot)
                except asyncio.CancelledError:  # cut short while waiting for the lock: nothing done
                    await asyncio.shield(self._release(slot))
                    raise
            else:
                await asyncio.shield(self._release(slot))

    async def _acquire(
        self,
        model: ModelDescriptor,
        setup: Mapping[str, Any],
        pool_size: int,
        started: float,
        prefer: Prefer,
    ) -> Slot:
        key = signature(setup)
        deadline = started + self.queue_timeout
        await self.prune()
        async with self._cond:
            slot, victim = self._place(model, key, pool_size, prefer)
            if slot is None and victim is None:
                if self._waiting >= self.queue_limit:
                    raise PoolBusy(
                        f"all {model.mode} units are busy and the queue is full",
                        self.retry_after(model, pool_size),
                    )
                self._waiting += 1
                try:
                    while slot is None and victim is None:
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise PoolBusy(
                                f"no {model.mode} unit became free in {self.queue_timeout:g} s",
                                self.retry_after(model, pool_size),
                            )
                        try:
                            await asyncio.wait_for(self._cond.wait(), remaining)
                        except TimeoutError:
                            continue
                        slot, victim = self._place(model, key, pool_size, prefer)
                finally:
                    self._waiting -= 1
            if self.observer is not None:
                self.observer.queue_wait(model.mode, time.monotonic() - started)
            if slot is not None and slot.unit is not None:
                return slot  # an idle instance with the same setup
            if slot is None:  # make room: the victim's place becomes ours
                assert victim is not None
                self._slots.remove(victim)
                slot = Slot(model.mode, model.unit, key)
                self._slots.append(slot)
        try:
            if victim is not None and victim.unit is not None:
                log.info("evicting idle %s to set up %s", victim.unit.work_id, model.mode)
                await self._exit_quietly(victim.unit)
            try:
                slot.unit = await self._down.race(self._setup(model, setup))
            except DeviceWentDown as exc:
                raise PoolUnavailable(f"the device went down during the setup ({exc})") from None
        except BaseException:
            await asyncio.shield(self._forget(slot))  # as in `lease`: even when cancelled
            raise
        return slot

    def _place(
        self, model: ModelDescriptor, key: str, pool_size: int, prefer: Prefer
    ) -> tuple[Slot | None, Slot | None]:
        """`placement.pick` (under the lock), unless the pool is closing or the device is down."""
        if self._closed:
            raise PoolUnavailable("the gateway is shutting down")
        self._raise_if_down()
        return pick(self._slots, model, key, pool_size, self.unit_limits, prefer)

    async def _setup(self, model: ModelDescriptor, setup: Mapping[str, Any]) -> Unit:
        await self._reap_lost()
        await check_memory(self.client, model, self._evict_idle)
        while True:
            try:
                return await self._open(model, setup)
            except ModelLoadFailed as exc:
                # Most descriptors do not say how much memory their model needs, so the device's -5
                # is often the first sign that it does not fit: free an idle instance and try again.
                if await self._evict_idle():
                    continue
                held = sum(1 for s in self._slots if s.unit is not None)
                raise await load_failure(self.client, model, exc, held) from exc

    async def _open(self, model: ModelDescriptor, setup: Mapping[str, Any]) -> Unit:
        started = time.monotonic()
        try:
            unit = await self.client.open_unit(model.unit, dict(setup), timeout=self.setup_timeout)
            if self.ledger is not None:
                self.ledger.opened(unit.work_id, model.mode)
            if self.observer is not None:
                self.observer.unit_setup(model.mode, time.monotonic() - started)
            return unit
        except TaskFull as exc:
            # Someone else (another gateway, a script) holds the device's instances.
            raise PoolBusy(f"the device has no free {model.unit} instance ({exc.message})", 5.0) from exc
        except ModelLoadFailed:
            raise
        except (DeviceTimeout, ConnectionLost, OSError) as exc:
            raise PoolUnavailable(f"the device did not set up {model.mode}: {exc}") from exc
        except DeviceError as exc:
            raise PoolUnavailable(f"setup of {model.mode} failed: {exc}") from exc

    async def _evict_idle(self) -> bool:
        """Exit the least recently used idle instance (any model) to free device memory."""
        async with self._cond:
            idle = [s for s in self._slots if s.idle]
            if not idle:
                return False
            victim = min(idle, key=lambda s: s.last_used)
            self._slots.remove(victim)
            self._cond.notify_all()
        assert victim.unit is not None
        log.info("evicting idle %s to free device memory", victim.unit.work_id)
        await self._exit_quietly(victim.unit)
        return True

    async def _release(self, slot: Slot) -> None:
        unit = slot.unit
        if unit is None or unit.broken or unit.busy:
            if unit is not None:
                await self._discard(unit)
            await self._forget(slot)
            return
        async with self._cond:
            slot.busy = False
            slot.last_used = time.monotonic()
            self._cond.notify_all()

    async def prune(self) -> int:
        """Exit and forget idle instances that are broken (connection died: device reset, network).

        Returns how many were dropped. Called before every lease and by the device monitor."""
        async with self._cond:
            broken = [s for s in self._slots if s.idle and s.unit is not None and s.unit.broken]
            for s in broken:
                self._slots.remove(s)
            if broken:
                self._cond.notify_all()
        for s in broken:
            assert s.unit is not None
            await self._discard(s.unit)
        return len(broken)

    async def _discard(self, unit: Unit) -> None:
        if self._down.reason is not None:  # a hung device would hold this release for the exit's timeout
            self._lost.append(unit)  # exited before the next setup, once the device is back
            return
        if unit.connection.closed:
            self._lost.append(unit)
            await self._reap_lost()
        else:
            await self._exit_quietly(unit)

    async def _reap_lost(self) -> None:
        """Exit every unit whose connection was lost, before any new setup (see `_lost`)."""
        async with self._reap_lock:
            lost = [s.unit for s in self._slots if s.unit is not None and s.unit.connection.closed]
            lost += self._lost
            self._lost = []
            for unit in dict.fromkeys(lost):
                if not unit.exited:
                    await self._exit_quietly(unit)

    async def _forget(self, slot: Slot) -> None:
        async with self._cond:
            if slot in self._slots:
                self._slots.remove(slot)
            self._cond.notify_all()

    async def _exit_quietly(self, unit: Unit) -> None:
        try:
            await asyncio.shield(unit.exit())
        except (DeviceError, DeviceTimeout, ConnectionLost, OSError) as exc:
            # Still on the ledger: if it is still on the device, the next start exits it.
            log.warning("exit of %s failed: %s", unit.work_id, exc)
            return
        if self.ledger is not None:
            self.ledger.closed(unit.work_id)

    def _limit(self, unit_type: str) -> int:
        return unit_limit(self.unit_limits, unit_type)

    def retry_after(self, model: ModelDescriptor, pool_size: int | None = None) -> float:
        """When a request for `model` refused now should come back: the requests waiting, and itself,
        served by the model's instances in parallel, at the model's recent time per request."""
        parallel = min(pool_size or self._limit(model.unit), self._limit(model.unit))
        return self.service_times.wait(
            model.mode, ahead=self._waiting, parallel=parallel, cap=self.queue_timeout
        )

    def estimates(self) -> dict[str, tuple[float, float]]:
        """model → (recent seconds per request, Retry-After a refused request would get now), for
        /metrics: every model this pool has served."""
        units = {s.model: s.unit_type for s in self._slots}
        return self.service_times.snapshot(
            lambda mode: self._limit(units[mode]) if mode in units else 1,
            ahead=self._waiting,
            cap=self.queue_timeout,
        )

    # ---- device down ---------------------------------------------------------------------------
    def device_down(self, reason: str) -> None:
        """The monitor found the device down (or hung): fail every wait on it now, not after its timeout.

        Requests queued for a unit and setups in progress get `PoolUnavailable`; generations on busy
        units get `ConnectionLost` (their connections are aborted). Their units are exited by work_id
        before the next setup once the device answers again (`_lost`)."""
        self._down.mark(reason)
        for s in self._slots:
            if s.busy and s.unit is not None and not s.unit.connection.closed:
                s.unit.connection.abort(f"the device is down ({reason})")
        self._cond_notify_soon()

    def device_up(self) -> None:
        self._down.clear()

    def _raise_if_down(self) -> None:
        if self._down.reason is not None:
            raise PoolUnavailable(f"the device is down ({self._down.reason})")

    def _cond_notify_soon(self) -> None:
        async def notify() -> None:
            async with self._cond:
                self._cond.notify_all()

        task = asyncio.ensure_future(notify())  # wakes the queued waiters, who then see `_down`
        self._notifiers.add(task)
        task.add_done_callback(self._notifiers.discard)

    # ---- lifecycle -----------------------------------------------------------------------------
    async def close(self) -> None:
        """Exit every instance this pool set up (busy ones too: the gateway is going away)."""
        async with self._cond:
            self._closed = True
            slots, self._slots = self._slots, []
            self._cond.notify_all()
        await asyncio.gather(*(self._exit_quietly(s.unit) for s in slots if s.unit is not None))
