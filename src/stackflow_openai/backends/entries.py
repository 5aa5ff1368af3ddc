"""Which models the gateway serves: discovered on the devices (`lsmode`), merged with the config.

Discovered models are served with defaults; an explicit `models:` entry of the same name overrides
one. Each device model is served by a `DeviceRouter` over every device that lists it (or the devices
an entry names), so the same model on several devices is one model to clients.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from stackflow_openai.config import ModelSettings, Settings
from stackflow_openai.languages import WHISPER_LANGUAGES
from stackflow_openai.stackflow.models import ModelDescriptor

from .base import ModelEntry
from .devices import Device, DeviceRouter
from .stackflow_audio import StackFlowTranscriptionBackend
from .stackflow_chat import StackFlowChatBackend
from .stackflow_speech import SPEECH_UNITS, SpeechVoice, StackFlowSpeechBackend

if TYPE_CHECKING:
    from .openai_proxy import OpenAIProxyBackend

__all__ = ["OPENAI_VOICES", "Catalogue", "EntryBuilder"]

log = logging.getLogger(__name__)
_CHAT_UNITS = ("llm", "vlm")
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
    "marin",
    "cedar",
)
# Names clients hard-code → the first model of that kind (text-only chat models first).
# Config aliases win over these.
_DEFAULT_ALIASES = {
    "chat": ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-4.1-nano", "gpt-4.1", "gpt-3.5-turbo", "gpt-4"),
    "transcription": ("whisper-1", "gpt-4o-transcribe", "gpt-4o-mini-transcribe"),
    "speech": ("tts-1", "tts-1-hd", "gpt-4o-mini-tts"),
}


@dataclass
class Catalogue:
    """The result of one build: entries, aliases, and how to tell whether an entry is reachable."""

    entries: dict[str, ModelEntry] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)
    reachable: dict[str, Callable[[], bool]] = field(default_factory=dict)


class EntryBuilder:
    def __init__(self, settings: Settings, devices: Sequence[Device], created: int) -> None:
        self.settings = settings
        self.devices = list(devices)
        self.created = created
        self._routers: dict[tuple[str, ...], DeviceRouter] = {}
        self.proxies: dict[str, OpenAIProxyBackend] = {}  # built once: they hold HTTP clients

    def router(self, names: Sequence[str] = ()) -> DeviceRouter:
        key = tuple(names)
        if key not in self._routers:
            chosen = [d for d in self.devices if not names or d.name in names]
            self._routers[key] = DeviceRouter(chosen)
        return self._routers[key]

    def build(self) -> Catalogue:
        cat = Catalogue()
        if self.settings.discovery.enabled:
            for device in self.devices:
                for model in device.models:
                    if model.mode not in cat.entries:
                        self._add_discovered(cat, model)
        for model_id, conf in self.settings.models.items():
            self._add_configured(cat, model_id, conf)
        if self.settings.discovery.auto_translation_model:
            _choose_translation_models(cat.entries)
        if self.settings.discovery.default_aliases:
            cat.aliases.update(_default_aliases(cat.entries))
        for alias, target in self.settings.aliases.items():
            if target not in cat.entries:
                log.warning("alias %s → %s: no such model (yet)", alias, target)
            cat.aliases[alias] = target
        return cat

    # ---- discovered ------------------------------------------------------------------------------
    def _add_discovered(self, cat: Catalogue, model: ModelDescriptor) -> None:
        router = self.router()
        common = {"id": model.mode, "owned_by": "stackflow", "created": self.created,
                  "strict_params": self.settings.strict_params,
                  "devices": _devices_with(router, [model.mode])}  # fmt: skip
        idle = self._idle_timeout(router)
        if model.unit in _CHAT_UNITS:
            chat = StackFlowChatBackend(router, model, pool_size=None, idle_timeout=idle)
            entry = ModelEntry(kind="chat", chat=chat, **common)  # type: ignore[arg-type]
        elif model.unit in SPEECH_UNITS:
            voices = dict.fromkeys(("default", *OPENAI_VOICES), SpeechVoice(model))
            if model.unit == "cosy_voice":  # its voice prompt is a voice too, under its folder's name
                voices[str(model.mode_param.get("prompt_dir", "prompt_data"))] = SpeechVoice(model)
            speech = StackFlowSpeechBackend(router, voices, idle_timeout=idle)
            entry = ModelEntry(kind="speech", speech=speech, **common)  # type: ignore[arg-type]
        elif model.unit in _ASR_UNITS:
            asr = StackFlowTranscriptionBackend(router, model)
            entry = ModelEntry(kind="transcription", transcription=asr, **common)  # type: ignore[arg-type]
        else:
            return
        cat.entries[model.mode] = entry
        cat.reachable[model.mode] = _reachable(router, [model.mode])

    # ---- configured ------------------------------------------------------------------------------
    def _add_configured(self, cat: Catalogue, model_id: str, conf: ModelSettings) -> None:
        strict = conf.strict_params or self.settings.strict_params
        common = {"id": model_id, "created": self.created, "strict_params": strict}
        if conf.type == "openai_proxy":
            proxy = self.proxies.get(model_id)
            if proxy is None:
                assert conf.base_url is not None  # checked by ModelSettings
                key = conf.api_key.get_secret_value() if conf.api_key else None
                from .openai_proxy import OpenAIProxyBackend  # httpx (~100 ms): only with a proxy model

                proxy = OpenAIProxyBackend(conf.base_url, upstream_model=conf.model or model_id,
                                           api_key=key, timeout=conf.timeout)  # fmt: skip
                self.proxies[model_id] = proxy
            cat.entries[model_id] = ModelEntry(kind="proxy", owned_by="openai_proxy", proxy=proxy, **common)  # type: ignore[arg-type]
            cat.reachable[model_id] = lambda: True
            return
        router = self.router(conf.devices)
        idle = self._idle_timeout(router)
        if conf.type == "speech":
            self._add_speech(cat, model_id, conf, router, common)
            return
        mode = conf.device_model or model_id
        common["devices"] = _devices_with(router, [mode])
        units = _CHAT_UNITS if conf.type == "chat" else _ASR_UNITS
        model = self._find(router, mode, units)
        if model is None:
            if model_id not in cat.entries:
                log.warning("model %s: device model %s is not on any device (yet)", model_id, mode)
            return
        if conf.type == "transcription":
            if model.unit == "whisper" and conf.language and conf.language not in WHISPER_LANGUAGES:
                # Served, every request would be refused (a device's whisper would transcribe Chinese).
                log.error(
                    "model %s: whisper cannot transcribe language %r; not served", model_id, conf.language
                )
                return
            extra: dict[str, object] = {}
            if conf.translation_chat_model:
                extra["translation_chat_model"] = conf.translation_chat_model
            if conf.max_audio_seconds:
                extra["max_audio_seconds"] = conf.max_audio_seconds
            asr = StackFlowTranscriptionBackend(router, model, default_language=conf.language)
            entry = ModelEntry(kind="transcription", transcription=asr, extra=extra, **common)  # type: ignore[arg-type]
        else:
            chat = StackFlowChatBackend(
                router, model, pool_size=conf.pool_size, idle_timeout=idle, prefill_len=conf.prefill_len
            )
            extra = {"system_prompt": conf.system_prompt} if conf.system_prompt else {}
            extra.update(answer_options(conf))
            entry = ModelEntry(kind="chat", chat=chat, allow_n=conf.allow_n, extra=extra, **common)  # type: ignore[arg-type]
        cat.entries[model_id] = entry
        cat.reachable[model_id] = _reachable(router, [mode])

    def _add_speech(
        self,
        cat: Catalogue,
        model_id: str,
        conf: ModelSettings,
        router: DeviceRouter,
        common: dict[str, object],
    ) -> None:
        wanted = conf.voices or dict.fromkeys(("default", *OPENAI_VOICES), conf.device_model or model_id)
        voices: dict[str, SpeechVoice] = {}
        for voice, target in wanted.items():
            # "CosyVoice2-0.5B-ax650@my_prompt": CosyVoice2 imitating the prompt files in that folder.
            device_model, _, prompt_dir = target.partition("@")
            model = self._find(router, device_model, SPEECH_UNITS)
            if model is None:
                log.warning(
                    "model %s: voice %s needs %s, which no device has (yet)", model_id, voice, device_model
                )
                continue
            if prompt_dir and model.unit != "cosy_voice":
                log.error("model %s: voice %s: only CosyVoice2 takes @%s", model_id, voice, prompt_dir)
                continue
            voices[voice] = SpeechVoice(model, prompt_dir or None)
        if not voices:
            return
        speech = StackFlowSpeechBackend(router, voices, idle_timeout=self._idle_timeout(router))
        modes = sorted({v.model.mode for v in voices.values()})
        common = {**common, "devices": _devices_with(router, modes)}
        cat.entries[model_id] = ModelEntry(kind="speech", speech=speech, **common)  # type: ignore[arg-type]
        cat.reachable[model_id] = _reachable(router, modes)

    @staticmethod
    def _find(router: DeviceRouter, mode: str, units: tuple[str, ...]) -> ModelDescriptor | None:
        for device in router.devices:
            model = device.model(mode)
            if model is not None and model.unit in units:
                return model
        return None

    @staticmethod
    def _idle_timeout(router: DeviceRouter) -> float:
        # One backend serves every device of its router: wait as long as the most patient one.
        return max((d.settings.idle_timeout for d in router.devices), default=30.0)


def _devices_with(router: DeviceRouter, modes: list[str]) -> tuple[str, ...]:
    return tuple(d.name for d in router.devices if any(d.model(mode) is not None for mode in modes))


def _reachable(router: DeviceRouter, modes: list[str]) -> Callable[[], bool]:
    return lambda: any(router.reachable(mode) for mode in modes)


def _is_vision(entry: ModelEntry) -> bool:
    return entry.chat is not None and entry.chat.info.vision


def _general_chat(model_id: str) -> bool:
    """A plain instruct model: not a coder, a reasoning model (deepseek-r1, qwen3) or a fine-tune (HA)."""
    return model_id.startswith("qwen2.5-") and not any(x in model_id for x in ("coder", "-HA-"))


def _first_chat_model(entries: dict[str, ModelEntry], devices: Sequence[str] = ()) -> str | None:
    """The chat model a client means by gpt-4o-mini, among those on one of `devices` when given."""
    ids = [
        e.id for e in entries.values() if e.kind == "chat" and (not devices or set(devices) & set(e.devices))
    ]
    # text-only first (a vision model is slower and has a smaller window), then a plain instruct model
    ids.sort(key=lambda i: (_is_vision(entries[i]), not _general_chat(i), "-p256-" not in i))
    return ids[0] if ids else None


def _choose_translation_models(entries: dict[str, ModelEntry]) -> None:
    """A transcription model that cannot translate and names no translation_chat_model translates through
    the first chat model on its own device(s), so /v1/audio/translations works without configuration."""
    for entry in entries.values():
        backend = entry.transcription
        if backend is None or backend.can_translate or entry.extra.get("translation_chat_model"):
            continue
        chosen = _first_chat_model(entries, entry.devices)
        if chosen is not None:
            entry.extra = {**entry.extra, "translation_chat_model": chosen}


def _default_aliases(entries: dict[str, ModelEntry]) -> dict[str, str]:
    def first(kind: str) -> str | None:
        if kind == "chat":
            return _first_chat_model(entries)
        ids = [e.id for e in entries.values() if e.kind == kind]
        if kind == "transcription":  # whisper-1 should be a whisper model (sherpa sorts first by name)
            ids.sort(key=lambda i: not i.startswith("whisper"))
        elif kind == "speech":  # US English melotts first: OpenAI's voices speak (American) English
            ids.sort(key=lambda i: (not i.startswith("melotts-en-us"), not i.startswith("melotts-en"),
                                    not i.startswith("melotts")))  # fmt: skip
        return ids[0] if ids else None

    aliases: dict[str, str] = {}
    for kind, names in _DEFAULT_ALIASES.items():
        target = first(kind)
        if target is not None:
            aliases.update(dict.fromkeys(names, target))
    return aliases


def answer_options(conf: ModelSettings) -> dict[str, Any]:
    """A chat model's answer settings (services/output.py), only those the config sets."""
    options: dict[str, Any] = {"output_retries": conf.output_retries}
    if conf.reasoning != "auto":
        options["reasoning"] = conf.reasoning
    if conf.tool_format != "auto":
        options["tool_format"] = conf.tool_format
    return options
