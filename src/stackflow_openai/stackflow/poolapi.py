"""The unit pool's interface: its errors and the protocols around it (what backends lease from, what
observes and records it), in their own module so that the pool's helpers can use them too."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import AbstractAsyncContextManager
from typing import Any, Protocol

from .models import ModelDescriptor
from .unit import Unit
from .versions import Version

__all__ = [
    "PoolBusy",
    "PoolError",
    "PoolLoadFailed",
    "PoolObserver",
    "PoolOutOfMemory",
    "PoolUnavailable",
    "Prefer",
    "UnitLedger",
    "UnitSource",
]

Prefer = Callable[[Unit], bool] | None  # picks, among idle instances, the one a lease wants (see `lease`)


class PoolError(Exception):
    pass


class PoolBusy(PoolError):
    """No instance could be had before the deadline, or the wait queue is full."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class PoolUnavailable(PoolError):
    """The device cannot set the model up (unreachable, out of memory, load failure)."""


class PoolOutOfMemory(PoolUnavailable):
    """The device refused the model's setup with -5 and no idle instance was left to make room."""


class PoolLoadFailed(PoolUnavailable):
    """The device refused the model's setup with -5 although nothing of ours held its memory: the model
    does not fit on this device at all, or its files are missing. Retrying will not help."""


class UnitSource(Protocol):
    """What a backend leases units from: one device's pool, or a router over several devices."""

    def lease(
        self,
        model: ModelDescriptor,
        setup: Mapping[str, Any],
        *,
        pool_size: int | None = None,
        prefer: Prefer = None,
    ) -> AbstractAsyncContextManager[Unit]: ...

    def unit_version(self, unit: str) -> Version | None:
        """The version of `unit` on the device(s) (sys.version2), None when not known for sure."""
        ...


class PoolObserver(Protocol):
    """Receives timings for metrics (wired by the gateway; the pool works without one)."""

    def queue_wait(self, model: str, seconds: float) -> None: ...

    def unit_setup(self, model: str, seconds: float) -> None: ...


class UnitLedger(Protocol):
    """Records the instances set up and not yet exited: a later run exits its own leftovers only."""

    def opened(self, work_id: str, model: str) -> None: ...

    def closed(self, work_id: str) -> None: ...
