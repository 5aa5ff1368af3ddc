"""A pool's view of its device being down: the reason, and a race that abandons a wait when it goes down.

The device monitor marks a device down when it stops answering its probes (backends/monitor.py). Every
wait on a down device is pointless: a hung device answers nothing until its timeouts run out (a setup's is
two minutes). `DownState.race` runs such a wait and abandons it the moment the device is marked down.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

__all__ = ["DeviceWentDown", "DownState"]

T = TypeVar("T")


class DeviceWentDown(Exception):
    """A wait was abandoned because the device was marked down meanwhile."""


class DownState:
    def __init__(self) -> None:
        self.reason: str | None = None  # None while the device is up
        self._event = asyncio.Event()

    def mark(self, reason: str) -> None:
        self.reason = reason
        self._event.set()

    def clear(self) -> None:
        self.reason = None
        self._event.clear()

    async def race(self, work: Coroutine[Any, Any, T]) -> T:
        """The result of `work`, or `DeviceWentDown` as soon as the device is marked down (`work` is then
        cancelled; the device client cleans up after a cancelled setup in the background)."""
        task = asyncio.ensure_future(work)
        down = asyncio.ensure_future(self._event.wait())
        try:
            await asyncio.wait((task, down), return_when=asyncio.FIRST_COMPLETED)
        finally:
            down.cancel()
            if not task.done():
                task.cancel()
                task.add_done_callback(lambda t: t.cancelled() or t.exception())  # retrieved: no warning
        if not task.done() or task.cancelled():
            raise DeviceWentDown(self.reason or "and came back")
        return task.result()
