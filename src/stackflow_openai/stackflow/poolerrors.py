"""The unit pool's errors (in their own module so that the pool's helpers can raise them too)."""

from __future__ import annotations

__all__ = ["PoolBusy", "PoolError", "PoolLoadFailed", "PoolOutOfMemory", "PoolUnavailable"]


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
