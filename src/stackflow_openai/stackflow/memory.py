"""Device memory for the unit pool: the check before a setup, and what a setup's -5 means.

Memory comes from `DeviceClient.memory()`, which asks `axcl_cmminfo` on an AXCL host (its `cmminfo` is
garbage) and returns None for a figure that cannot be trusted. Few descriptors say how much memory their
model needs (`mode_param.cmm_size`), so for most models the device's -5 at setup is the first sign.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from .client import DeviceClient
from .errors import ConnectionLost, DeviceError, DeviceTimeout, ModelLoadFailed
from .models import ModelDescriptor
from .poolapi import PoolLoadFailed, PoolOutOfMemory, PoolUnavailable

__all__ = ["check_memory", "load_failure"]

_QUERY_FAILURES = (DeviceError, DeviceTimeout, ConnectionLost, OSError)


async def check_memory(
    client: DeviceClient, model: ModelDescriptor, evict_idle: Callable[[], Awaitable[bool]]
) -> None:
    """For a model that declares its size: evict idle instances until it fits, else PoolOutOfMemory."""
    if model.cmm_size is None:
        return
    while True:
        try:
            info = await client.memory()
        except _QUERY_FAILURES as exc:
            raise PoolUnavailable(f"device unreachable: {exc}") from exc
        if info is None:
            return  # no trustworthy figure (e.g. an AXCL host whose axcl-smi failed): the setup will tell
        if info.remain >= model.cmm_size or not await evict_idle():
            break
    if info.remain < model.cmm_size:
        raise PoolOutOfMemory(
            f"not enough device memory for {model.mode}: needs {model.cmm_size} KiB, {info.remain} KiB free"
        )


async def load_failure(
    client: DeviceClient, model: ModelDescriptor, exc: ModelLoadFailed, held: int
) -> PoolUnavailable:
    """The error for a -5 with nothing idle left to unload (`held`: this gateway's live instances).

    Out of memory (what this gateway holds is busy, or another program holds it) or a model whose files
    are missing: the device says only "Model loading failed.", so memory, when readable, tells which.
    """
    try:
        info = await client.memory()
    except _QUERY_FAILURES:
        info = None
    if info is not None and model.cmm_size is not None and info.remain >= model.cmm_size:
        return PoolLoadFailed(
            f"the device could not load {model.mode} ({exc.message}) although {info.remain} KiB of "
            "memory are free: is the model installed?"
        )
    if info is not None and info.used == 0:
        # Nothing to wait for: retrying cannot help (PoolLoadFailed, not PoolOutOfMemory).
        return PoolLoadFailed(
            f"the device could not load {model.mode} ({exc.message}) with nothing else loaded: it does not "
            f"fit in the device's {info.total} KiB of memory, or it is not installed"
        )
    free = f"{info.remain} KiB of {info.total} KiB free" if info is not None else "free memory unknown"
    return PoolOutOfMemory(
        f"the device could not load {model.mode} ({exc.message}): most likely out of memory ({free}; "
        f"{held} instance(s) of this gateway in use, none idle to unload), or the model is not installed. "
        "Retry when other requests have finished, or unload other models."
    )
