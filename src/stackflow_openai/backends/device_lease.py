"""A pool lease with the pool's errors translated into backend errors (one translation point).

`pool` is one device's `DevicePool` or a `DeviceRouter` over several devices (backends/devices.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import Any

from stackflow_openai.stackflow.models import ModelDescriptor
from stackflow_openai.stackflow.poolapi import (
    PoolBusy,
    PoolLoadFailed,
    PoolOutOfMemory,
    PoolUnavailable,
    Prefer,
    UnitSource,
)
from stackflow_openai.stackflow.unit import Unit

from .base import BackendBusy, BackendUnavailable

__all__ = ["device_lease"]


@asynccontextmanager
async def device_lease(
    pool: UnitSource,
    model: ModelDescriptor,
    setup: Mapping[str, Any],
    *,
    pool_size: int | None,
    prefer: Prefer = None,
) -> AsyncIterator[Unit]:
    lease = pool.lease(model, setup, pool_size=pool_size, prefer=prefer)
    try:
        unit = await lease.__aenter__()
    except PoolBusy as exc:
        raise BackendBusy(str(exc), retry_after=exc.retry_after) from exc
    except PoolOutOfMemory as exc:  # memory held by other work: retrying later may help
        raise BackendUnavailable(str(exc), code="device_out_of_memory") from exc
    except PoolLoadFailed as exc:  # too large for the device, or not installed: retrying will not help
        raise BackendUnavailable(str(exc), code="model_load_failed") from exc
    except PoolUnavailable as exc:
        raise BackendUnavailable(str(exc)) from exc
    try:
        yield unit
    except BaseException as exc:
        await lease.__aexit__(type(exc), exc, exc.__traceback__)
        raise
    await lease.__aexit__(None, None, None)
