"""The gateway's model registry: devices, their monitor, and the models built from both.

registry = GatewayRegistry(settings)
await registry.start()     # connect to every device (down ones are retried in the background)
registry.list()            # the models reachable now (what /v1/models shows)
registry.get("tts-1")      # an entry by id or alias, reachable or not (a down one answers 503)
registry.device_status()   # what /ready shows
await registry.stop()      # exit every unit, close connections
"""

from __future__ import annotations

import builtins
import logging
import time
from typing import Any

from stackflow_openai.config import Settings

from .base import ModelEntry
from .devices import Device, DeviceObserver
from .entries import OPENAI_VOICES, Catalogue, EntryBuilder
from .monitor import DeviceMonitor

__all__ = ["OPENAI_VOICES", "GatewayRegistry"]

log = logging.getLogger(__name__)


class GatewayRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.devices = [Device(d, settings) for d in settings.devices]
        self._builder = EntryBuilder(settings, self.devices, int(time.time()))
        self._catalogue = Catalogue()
        self.monitor = DeviceMonitor(self.devices, settings, self._rebuild)
        self._started = False
        self._seen: set[str] = set()  # every model id and alias served since start (see `unavailable`)

    # ---- ModelRegistry protocol ----------------------------------------------------------------
    def list(self) -> list[ModelEntry]:
        cat = self._catalogue
        return [e for model_id, e in cat.entries.items() if cat.reachable.get(model_id, _yes)()]

    def get(self, model_id: str) -> ModelEntry | None:
        cat = self._catalogue
        entry = cat.entries.get(model_id)
        if entry is None and model_id in cat.aliases:
            entry = cat.entries.get(cat.aliases[model_id])
        return entry

    async def start(self) -> None:
        self._started = True
        await self.monitor.start()
        self._rebuild()

    async def stop(self) -> None:
        await self.monitor.stop()
        for device in self.devices:
            await device.pool.close()
            await device.client.close()
        for proxy in self._builder.proxies.values():
            await proxy.aclose()

    def unavailable(self, model_id: str) -> str | None:
        """Why `model_id`, which has no entry now, may exist but cannot be served (a 503), or None (a 404).

        A model has no entry when no device that could serve it was ever read: a device down since the
        gateway started, or one that went down before its models were read. Then a configured model, an
        alias, a model seen on a device earlier, or (while some device's models were never read) any
        name, is answered "unreachable" rather than "does not exist"."""
        down = [d for d in self.devices if not d.up]
        if not down:
            return None
        where = "; ".join(_describe_down(d) for d in down)
        settings = self.settings
        if model_id in settings.models or model_id in settings.aliases or model_id in self._seen:
            return f"The model '{model_id}' cannot be served now: its device is unreachable ({where})."
        unread = [d for d in down if not d.discovered]
        if unread:
            return (
                f"The model '{model_id}' is not known yet: the models of an unreachable device have not "
                f"been read ({where})."
            )
        return None

    # ---- operations ------------------------------------------------------------------------------
    @property
    def aliases(self) -> dict[str, str]:
        return dict(self._catalogue.aliases)

    def attach(self, observer: DeviceObserver) -> None:
        """Send pool timings and device errors to `observer` (the app's metrics)."""
        for device in self.devices:
            device.attach(observer)

    def device_status(self) -> builtins.list[dict[str, Any]]:
        return [d.status() for d in self.devices]

    def ready(self) -> bool:
        """Some model can be served: a device is up with models, or (no devices) a proxy model exists."""
        if self.devices:
            return any(d.up and d.models for d in self.devices)
        return bool(self.list())

    def _rebuild(self) -> None:
        if not self._started:
            return
        self._catalogue = self._builder.build()
        self._seen.update(self._catalogue.entries)
        self._seen.update(self._catalogue.aliases)
        log.debug("models: %s", ", ".join(e.id for e in self.list()) or "(none reachable)")


def _describe_down(device: Device) -> str:
    reason = f": {device.last_error}" if device.last_error else ""
    return f"{device.name} ({device.address}) is {device.state}{reason}"


def _yes() -> bool:
    return True
