"""Which models the gateway serves: discovered on the device with `lsmode`, merged with the config."""

from __future__ import annotations

import logging
import time

from stackflow_openai.config import DeviceSettings, ModelSettings, Settings
from stackflow_openai.stackflow.client import DeviceClient
from stackflow_openai.stackflow.errors import StackFlowError
from stackflow_openai.stackflow.models import ModelDescriptor
from stackflow_openai.stackflow.pool import DevicePool

from .base import ModelEntry
from .openai_proxy import OpenAIProxyBackend
from .stackflow_chat import StackFlowChatBackend

__all__ = ["GatewayRegistry"]

log = logging.getLogger(__name__)
_CHAT_UNITS = ("llm", "vlm")
_POOLED_UNITS = ["llm", "vlm", "melotts", "tts", "whisper", "asr"]


class _Device:
    def __init__(self, settings: DeviceSettings, gateway: Settings) -> None:
        self.settings = settings
        self.client = DeviceClient(settings.host, settings.port, timeout=settings.connect_timeout + 5,
                                   setup_timeout=settings.setup_timeout)
        self.pool = DevicePool(
            self.client,
            queue_limit=gateway.pool.queue_limit,
            queue_timeout=gateway.pool.queue_timeout,
            setup_timeout=settings.setup_timeout,
        )
        self.models: list[ModelDescriptor] = []
        self.up = False


class GatewayRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.devices = [_Device(d, settings) for d in settings.devices]
        self._entries: dict[str, ModelEntry] = {}
        self._proxies: list[OpenAIProxyBackend] = []
        self._created = int(time.time())

    # ---- ModelRegistry protocol ----------------------------------------------------------------
    def list(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def get(self, model_id: str) -> ModelEntry | None:
        entry = self._entries.get(model_id)
        if entry is None and model_id in self.settings.aliases:
            entry = self._entries.get(self.settings.aliases[model_id])
        return entry

    async def start(self) -> None:
        for device in self.devices:
            await self._discover(device)
        self._build_entries()

    async def stop(self) -> None:
        for device in self.devices:
            await device.pool.close()
            await device.client.close()
        for proxy in self._proxies:
            await proxy.aclose()

    # ---- discovery -----------------------------------------------------------------------------
    async def _discover(self, device: _Device) -> None:
        where = f"{device.settings.host}:{device.settings.port}"
        try:
            await device.client.connect()
            device.models = await device.client.lsmode()
            if self.settings.pool.cleanup_orphans:
                await device.pool.exit_orphans(_POOLED_UNITS)
            device.up = True
            log.info("device %s: %d models", where, len(device.models))
        except (StackFlowError, OSError) as exc:
            log.warning("device %s is not reachable (%s); serving without it", where, exc)

    def _build_entries(self) -> None:
        entries: dict[str, ModelEntry] = {}
        for device in self.devices:
            idle = device.settings.idle_timeout
            for model in device.models:
                if model.unit in _CHAT_UNITS and model.mode not in entries:
                    backend = StackFlowChatBackend(device.pool, model, pool_size=None, idle_timeout=idle)
                    entries[model.mode] = ModelEntry(
                        id=model.mode, kind="chat", owned_by="stackflow", created=self._created,
                        chat=backend, strict_params=self.settings.strict_params,
                    )
        for model_id, conf in self.settings.models.items():
            entry = self._configured(model_id, conf, entries)
            if entry is not None:
                entries[model_id] = entry
        self._entries = entries

    def _configured(self, model_id: str, conf: ModelSettings, found: dict[str, ModelEntry]) -> ModelEntry | None:
        strict = conf.strict_params or self.settings.strict_params
        if conf.type == "openai_proxy":
            if not conf.base_url:
                log.error("model %s: openai_proxy needs base_url", model_id)
                return None
            proxy = OpenAIProxyBackend(conf.base_url, upstream_model=conf.model or model_id,
                                       api_key=conf.api_key, timeout=conf.timeout)
            self._proxies.append(proxy)
            return ModelEntry(id=model_id, kind="proxy", owned_by="openai_proxy", created=self._created,
                              proxy=proxy, strict_params=strict)
        if conf.type != "chat":
            return None  # speech and transcription entries come with the audio backends
        device_model = conf.device_model or model_id
        for device in self.devices:
            for model in device.models:
                if model.mode == device_model and model.unit in _CHAT_UNITS:
                    backend = StackFlowChatBackend(device.pool, model, pool_size=conf.pool_size,
                                                   idle_timeout=device.settings.idle_timeout)
                    extra = {"system_prompt": conf.system_prompt} if conf.system_prompt else {}
                    return ModelEntry(id=model_id, kind="chat", owned_by="stackflow", created=self._created,
                                      chat=backend, strict_params=strict, allow_n=conf.allow_n, extra=extra)
        log.warning("model %s: device model %s was not found on any device", model_id, device_model)
        return found.get(model_id)
