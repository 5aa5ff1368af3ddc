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
from .stackflow_audio import StackFlowSpeechBackend, StackFlowTranscriptionBackend
from .stackflow_chat import StackFlowChatBackend

__all__ = ["GatewayRegistry"]

log = logging.getLogger(__name__)
_CHAT_UNITS = ("llm", "vlm")
_SPEECH_UNITS = ("melotts", "tts")
_ASR_UNITS = ("whisper", "asr")
# Clients hard-code OpenAI's names; a single-voice device model answers to all of them.
OPENAI_VOICES = (
    "alloy",
    "ash",
    "ballad",
    "coral",
    "echo",
    "fable",
    "nova",
    "onyx",
    "sage",
    "shimmer",
    "verse",
)
# Names clients hard-code → the first discovered model of that unit family (config aliases win).
_DEFAULT_ALIASES = {
    "whisper-1": _ASR_UNITS,
    "gpt-4o-transcribe": _ASR_UNITS,
    "gpt-4o-mini-transcribe": _ASR_UNITS,
    "tts-1": _SPEECH_UNITS,
    "tts-1-hd": _SPEECH_UNITS,
    "gpt-4o-mini-tts": _SPEECH_UNITS,
}
_POOLED_UNITS = ["llm", "vlm", "melotts", "tts", "whisper", "asr"]


class _Device:
    def __init__(self, settings: DeviceSettings, gateway: Settings) -> None:
        self.settings = settings
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
        self.models: list[ModelDescriptor] = []
        self.up = False


class GatewayRegistry:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.devices = [_Device(d, settings) for d in settings.devices]
        self._entries: dict[str, ModelEntry] = {}
        self._aliases: dict[str, str] = {}
        self._proxies: list[OpenAIProxyBackend] = []
        self._created = int(time.time())

    # ---- ModelRegistry protocol ----------------------------------------------------------------
    def list(self) -> list[ModelEntry]:
        return list(self._entries.values())

    def get(self, model_id: str) -> ModelEntry | None:
        entry = self._entries.get(model_id)
        if entry is None and model_id in self._aliases:
            entry = self._entries.get(self._aliases[model_id])
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
        aliases: dict[str, str] = {}
        for device in self.devices:
            for model in device.models:
                entry = self._discovered(device, model)
                if entry is not None and entry.id not in entries:
                    entries[entry.id] = entry
                    for alias, units in _DEFAULT_ALIASES.items():
                        if model.unit in units:
                            aliases.setdefault(alias, model.mode)
        for model_id, conf in self.settings.models.items():
            configured = self._configured(model_id, conf, entries)
            if configured is not None:
                entries[model_id] = configured
        aliases.update(self.settings.aliases)
        self._entries, self._aliases = entries, aliases

    def _discovered(self, device: _Device, model: ModelDescriptor) -> ModelEntry | None:
        """A device model served with defaults (the config may override it)."""
        common = {
            "id": model.mode,
            "owned_by": "stackflow",
            "created": self._created,
            "strict_params": self.settings.strict_params,
        }
        if model.unit in _CHAT_UNITS:
            chat = StackFlowChatBackend(
                device.pool, model, pool_size=None, idle_timeout=device.settings.idle_timeout
            )
            return ModelEntry(kind="chat", chat=chat, **common)  # type: ignore[arg-type]
        if model.unit in _SPEECH_UNITS:
            voices = dict.fromkeys(("default", *OPENAI_VOICES), model)
            speech = StackFlowSpeechBackend(device.pool, voices, idle_timeout=device.settings.idle_timeout)
            return ModelEntry(kind="speech", speech=speech, **common)  # type: ignore[arg-type]
        if model.unit in _ASR_UNITS:
            asr = StackFlowTranscriptionBackend(device.pool, model)
            return ModelEntry(kind="transcription", transcription=asr, **common)  # type: ignore[arg-type]
        return None

    def _configured(
        self, model_id: str, conf: ModelSettings, found: dict[str, ModelEntry]
    ) -> ModelEntry | None:
        strict = conf.strict_params or self.settings.strict_params
        common = {"id": model_id, "created": self._created, "strict_params": strict}
        if conf.type == "openai_proxy":
            if not conf.base_url:
                log.error("model %s: openai_proxy needs base_url", model_id)
                return None
            proxy = OpenAIProxyBackend(
                conf.base_url,
                upstream_model=conf.model or model_id,
                api_key=conf.api_key,
                timeout=conf.timeout,
            )
            self._proxies.append(proxy)
            return ModelEntry(kind="proxy", owned_by="openai_proxy", proxy=proxy, **common)  # type: ignore[arg-type]
        if conf.type == "speech":
            return self._configured_speech(model_id, conf, common)
        units = _CHAT_UNITS if conf.type == "chat" else _ASR_UNITS
        located = self._find(conf.device_model or model_id, units)
        if located is None:
            log.warning(
                "model %s: device model %s was not found on any device",
                model_id,
                conf.device_model or model_id,
            )
            return found.get(model_id)
        device, model = located
        if conf.type == "transcription":
            extra = (
                {"translation_chat_model": conf.translation_chat_model} if conf.translation_chat_model else {}
            )
            asr = StackFlowTranscriptionBackend(device.pool, model)
            return ModelEntry(kind="transcription", transcription=asr, extra=extra, **common)  # type: ignore[arg-type]
        chat = StackFlowChatBackend(
            device.pool, model, pool_size=conf.pool_size, idle_timeout=device.settings.idle_timeout
        )
        extra = {"system_prompt": conf.system_prompt} if conf.system_prompt else {}
        return ModelEntry(kind="chat", chat=chat, allow_n=conf.allow_n, extra=extra, **common)  # type: ignore[arg-type]

    def _configured_speech(
        self, model_id: str, conf: ModelSettings, common: dict[str, object]
    ) -> ModelEntry | None:
        voices: dict[str, ModelDescriptor] = {}
        device: _Device | None = None
        for voice, device_model in conf.voices.items():
            located = self._find(device_model, _SPEECH_UNITS)
            if located is None:
                log.warning("model %s: voice %s needs %s, which no device has", model_id, voice, device_model)
                continue
            device, voices[voice] = located
        if device is None:
            return None
        speech = StackFlowSpeechBackend(device.pool, voices, idle_timeout=device.settings.idle_timeout)
        return ModelEntry(kind="speech", speech=speech, **common)  # type: ignore[arg-type]

    def _find(self, mode: str, units: tuple[str, ...]) -> tuple[_Device, ModelDescriptor] | None:
        for device in self.devices:
            for model in device.models:
                if model.mode == mode and model.unit in units:
                    return device, model
        return None
