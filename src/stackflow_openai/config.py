"""The gateway's settings: one YAML file read by one function (`load_settings`) into pydantic models.

Precedence, lowest first: defaults < the YAML file < environment variables < command-line options.

- Unknown keys are errors that name the key and its line (a typo must not be silently ignored).
- Every field carries a description (`stackflow-openai config check` and config.example.yaml use them).
- Environment variables override single fields: `STACKFLOW_OPENAI__SERVER__PORT=9000` sets
  `server.port`; list items are addressed by index (`STACKFLOW_OPENAI__DEVICES__0__HOST=10.0.0.5`);
  values are read as YAML scalars (`9000`, `true`, `[a, b]`). `STACKFLOW_OPENAI_API_KEYS=k1,k2` adds
  API keys; `STACKFLOW_OPENAI_CONFIG` names the file when `--config` is not given.
- The gateway never writes to the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, cast

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from stackflow_openai.config_sources import ENV_PREFIX, ConfigError, apply_env, describe
from stackflow_openai.languages import language_code
from stackflow_openai.plugin_config import old_plugin_message, old_plugin_signs

__all__ = [
    "CONFIG_ENV",
    "ENV_PREFIX",
    "KEYS_ENV",
    "AuthSettings",
    "ConfigError",
    "DeviceSettings",
    "DiscoverySettings",
    "HealthSettings",
    "ModelSettings",
    "PoolSettings",
    "RealtimeSettings",
    "ResponsesSettings",
    "ServerSettings",
    "Settings",
    "VoicePipelineSettings",
    "load_settings",
    "parse_device",
]

CONFIG_ENV = "STACKFLOW_OPENAI_CONFIG"
KEYS_ENV = "STACKFLOW_OPENAI_API_KEYS"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Strict):
    host: str = Field("127.0.0.1", description="address to listen on; 0.0.0.0 for every interface")
    port: int = Field(8000, ge=0, le=65535, description="TCP port of the HTTP API (0 picks a free one)")
    max_body_bytes: int = Field(
        32 * 1024 * 1024, gt=0, description="largest JSON request body (chat with images needs room)"
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description='browser origins allowed by CORS, e.g. ["http://localhost:3000"] or ["*"]; '
        "empty: CORS off",
    )
    header_timeout: float = Field(
        10.0, gt=0, description="seconds a connection has to send a request's headers, then it is closed"
    )
    keep_alive_timeout: float = Field(
        5.0, gt=0, description="an idle keep-alive connection is closed after this"
    )
    max_connections: int = Field(
        1000, ge=1, description="open HTTP connections at most; more get 503 (keep under the fd limit)"
    )
    shutdown_grace: float = Field(
        10.0, ge=0, description="on SIGTERM, seconds running requests get to finish before they are ended"
    )


class AuthSettings(_Strict):
    api_keys: list[SecretStr] = Field(
        default_factory=list,
        description="accepted API keys (Authorization: Bearer KEY); empty and no file: no authentication",
    )
    api_keys_file: str | None = Field(
        None,
        description="file with one key per line (# comments); relative to the config file; "
        "its keys are added to api_keys",
    )
    protect_health: bool = Field(False, description="require a key on /health and /ready too")
    protect_metrics: bool = Field(False, description="require a key on /metrics too")

    def key_values(self) -> list[str]:
        return [k.get_secret_value() for k in self.api_keys if k.get_secret_value()]


class DeviceSettings(_Strict):
    name: str = Field("device", description="a short name used in logs, /ready and metrics")
    host: str = Field("127.0.0.1", description="address of the StackFlow device (its llm-sys daemon)")
    port: int = Field(10001, ge=1, le=65535, description="llm-sys TCP port")
    connect_timeout: float = Field(5.0, gt=0, description="seconds to open a connection or answer a sys call")
    setup_timeout: float = Field(120.0, gt=0, description="a model load may take minutes on a device")
    idle_timeout: float = Field(
        30.0, gt=0, description="longest silence between two messages of a generation"
    )


class PoolSettings(_Strict):
    queue_limit: int = Field(32, ge=0, description="requests that may wait for a unit; more get 503")
    queue_timeout: float = Field(30.0, gt=0, description="seconds a request may wait for a unit")
    orphan_cleanup: Literal["owned", "all", "off"] = Field(
        "owned",
        description="at start and reconnect, exit instances left on a device: 'owned' only those this "
        "gateway set up (remembered in state_dir), 'all' every llm/vlm/tts/asr instance it does not "
        "hold now (other applications' too), 'off' none",
    )
    cleanup_orphans: bool | None = Field(
        None, description="deprecated: false is orphan_cleanup: off, true is orphan_cleanup: owned"
    )

    @model_validator(mode="after")
    def _legacy_cleanup(self) -> PoolSettings:
        # `cleanup_orphans: true` used to exit every instance; its safe reading now is "owned". A user
        # who wants the old clean sweep says so with orphan_cleanup: all.
        if self.cleanup_orphans is False and "orphan_cleanup" not in self.model_fields_set:
            self.orphan_cleanup = "off"
        return self


class HealthSettings(_Strict):
    probe_interval: float = Field(5.0, gt=0, description="seconds between pings of a device that is up")
    probe_timeout: float = Field(5.0, gt=0, description="a ping slower than this marks the device down")
    max_backoff: float = Field(
        60.0, gt=0, description="longest pause between probes of a down device (doubles from probe_interval)"
    )
    stats_interval: float = Field(
        15.0, gt=0, description="seconds between memory (cmminfo) and temperature (hwinfo) samples"
    )


class DiscoverySettings(_Strict):
    enabled: bool = Field(True, description="serve every model the devices list (lsmode) with defaults")
    refresh_interval: float = Field(
        300.0, ge=0, description="seconds between re-reads of the devices' model lists; 0: only at start"
    )
    default_aliases: bool = Field(
        True, description="answer to names clients hard-code (gpt-4o-mini, whisper-1, tts-1, ...)"
    )
    auto_translation_model: bool = Field(
        True,
        description="a transcription model with no translation_chat_model translates through a text chat "
        "model on the same device (the one gpt-4o-mini would stand for there; docs/audio.md); "
        "false: only models configured with translation_chat_model translate",
    )


class ImageSettings(_Strict):
    max_bytes: int = Field(10 * 1024 * 1024, gt=0, description="largest image accepted (bytes)")
    fetch_timeout: float = Field(10.0, gt=0, description="seconds to download an image URL")
    allow_private: bool = Field(False, description="allow image URLs on loopback/private addresses")
    allowed_hosts: list[str] = Field(default_factory=list, description="hosts allowed even if private")


class ResponsesSettings(_Strict):
    retention_days: float = Field(
        30.0, gt=0, description="stored responses older than this many days are deleted (OpenAI's 30)"
    )
    max_bytes: int = Field(
        256 * 1024 * 1024,
        gt=0,
        description="stored responses beyond this many bytes of JSON: the oldest are deleted first",
    )
    default_truncation: Literal["disabled", "auto"] = Field(
        "disabled",
        description="truncation for requests that set none: disabled (OpenAI's: 400 when the conversation "
        "does not fit the window) or auto (drop the oldest items, as chat completions does)",
    )


class ModelSettings(_Strict):
    """An explicit model entry; it overrides a discovered model of the same name."""

    type: Literal["chat", "openai_proxy", "speech", "transcription"] = Field(
        "chat", description="chat (llm/vlm unit), speech (melotts/tts), transcription (whisper/asr), "
        "or openai_proxy (an upstream OpenAI-compatible server)"
    )  # fmt: skip
    device_model: str | None = Field(None, description="the lsmode model to run (default: the entry's name)")
    devices: list[str] = Field(
        default_factory=list, description="names of the devices that may serve it (default: all that have it)"
    )
    pool_size: int | None = Field(None, ge=1, description="most instances of this model per device")
    system_prompt: str | None = Field(None, description="used when a request brings no system message")
    prefill_len: int | None = Field(
        None,
        ge=32,  # the gateway keeps 20 tokens of margin (tokens.PREFILL_MARGIN): less leaves no prompt
        description="chat: tokens the templated prompt may use, for a model whose descriptor does not say "
        "it right (chunked-prefill models; docs/protocol-notes.md, item 10)",
    )
    strict_params: bool = Field(False, description="refuse (400) parameters the device cannot honour")
    reasoning: Literal["auto", "think", "implicit", "off"] = Field(
        "auto",
        description="chat: return <think> text as reasoning_content; think: when the answer opens with "
        "<think>, implicit: everything up to </think>, auto: implicit for deepseek-r1-*, think for qwen3-*, "
        "else off (docs/tools.md)",
    )
    tool_format: Literal["auto", "qwen", "llama3", "smollm2", "generic"] = Field(
        "auto",
        description="chat: how tools are written into the prompt (auto: by model family; docs/tools.md)",
    )
    output_retries: int = Field(
        1, ge=0, le=3, description="chat: re-asks after an invalid tool call or JSON answer (0: none)"
    )
    allow_n: bool = Field(True, description="accept n > 1 (choices run one after another)")
    voices: dict[str, str] = Field(
        default_factory=dict,
        description="speech: OpenAI voice name → device model; for CosyVoice2 `model@prompt_dir` names the "
        "folder of voice prompt files (under the model's directory) it imitates",
    )
    language: str | None = Field(
        None,
        description="transcription: language code whisper transcribes in when a request names none "
        "(default en); for a sherpa asr model, the one language it knows (reported in verbose_json)",
    )
    translation_chat_model: str | None = Field(
        None, description="transcription: chat model that translates transcripts for /v1/audio/translations"
    )
    max_audio_seconds: float | None = Field(
        None,
        gt=0,
        description="transcription: longest audio accepted, in seconds (default 7200); longer is a 400 "
        "audio_too_long, from the file's declared duration or as soon as decoding passes it",
    )
    base_url: str | None = Field(None, description="openai_proxy: upstream base URL, e.g. http://gpu:8000/v1")
    api_key: SecretStr | None = Field(None, description="openai_proxy: key sent to the upstream")
    model: str | None = Field(
        None, description="openai_proxy: the upstream's model name (default: this name)"
    )
    timeout: float = Field(120.0, gt=0, description="openai_proxy: seconds to wait for the upstream")

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v

    @field_validator("language")
    @classmethod
    def _whisper_code(cls, v: str | None) -> str | None:
        return language_code(v) if v else None  # ValueError → a config error naming the field

    @model_validator(mode="after")
    def _proxy_needs_url(self) -> ModelSettings:
        if self.type == "openai_proxy" and not self.base_url:
            raise ValueError("an openai_proxy model needs base_url")
        if self.type == "speech" and not self.voices and not self.device_model:
            raise ValueError("a speech model needs voices (or device_model)")
        return self


def _chain_switch(value: Any) -> Any:
    """YAML 1.1 reads a bare `off` as false (and `on` as true): take them as meant."""
    if isinstance(value, bool):
        return "auto" if value else "off"
    return value


ChainSwitch = Annotated[Literal["auto", "off"], BeforeValidator(_chain_switch)]


class VoicePipelineSettings(_Strict):
    chat_model: str = Field(description="the chat model that answers")
    transcription_model: str | None = Field(None, description="the model that transcribes the user's audio")
    speech_model: str | None = Field(None, description="the model that speaks the answers")
    voice: str | None = Field(None, description="the speech model's voice (default: its first)")
    language: str | None = Field(None, description="the language the user speaks (whisper's code)")
    device_chain: ChainSwitch | None = Field(
        None, description="let the device chain asr -> llm -> melotts itself (default: realtime.device_chain)"
    )


class RealtimeSettings(_Strict):
    idle_timeout: float = Field(
        300.0,
        gt=0,
        description="seconds a Realtime session may stay without a client event before it is closed",
    )
    device_chain: ChainSwitch = Field(
        "off",
        description="auto: a voice turn the device can answer by itself runs on its own asr -> llm -> "
        "melotts chain, with the units reserved for the session while no other client waits for them; "
        "off: the gateway runs the stages (measured as fast or faster: docs/realtime.md)",
    )
    pipelines: dict[str, VoicePipelineSettings] = Field(
        default_factory=dict,
        description="voice pipelines, named as a model in /v1/realtime?model=NAME: chat, transcription and "
        "speech models and the voice (a plain chat model uses the first transcription and speech models)",
    )


class Settings(_Strict):
    server: ServerSettings = Field(default_factory=ServerSettings, description="the HTTP API")
    auth: AuthSettings = Field(default_factory=AuthSettings, description="API keys")
    devices: list[DeviceSettings] = Field(
        default_factory=lambda: [DeviceSettings()], description="StackFlow devices (one or more)"
    )
    health: HealthSettings = Field(default_factory=HealthSettings, description="device probes")
    pool: PoolSettings = Field(default_factory=PoolSettings, description="unit pools and wait queues")
    discovery: DiscoverySettings = Field(default_factory=DiscoverySettings, description="lsmode discovery")
    images: ImageSettings = Field(default_factory=ImageSettings, description="images for vision models")
    models: dict[str, ModelSettings] = Field(default_factory=dict, description="explicit model entries")
    aliases: dict[str, str] = Field(default_factory=dict, description="client-facing name → model id")
    strict_params: bool = Field(False, description="strict_params for every model")
    playground: bool = Field(True, description="serve the browser playground at GET /")

    realtime: RealtimeSettings = Field(default_factory=RealtimeSettings, description="the Realtime API")
    state_dir: str | None = Field(
        None,
        description="where the gateway remembers the device instances it set up (for orphan_cleanup: "
        "owned); default $XDG_DATA_HOME/stackflow-openai or ~/.local/share/stackflow-openai",
    )
    data_dir: str | None = Field(
        None,
        description="directory of the stored responses (/v1/responses); default: state_dir's directory",
    )
    responses: ResponsesSettings = Field(
        default_factory=ResponsesSettings, description="stored responses of the Responses API"
    )

    def state_path(self) -> Path:
        if self.state_dir:
            return Path(self.state_dir).expanduser()
        data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
        return Path(data_home) / "stackflow-openai"

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        names = [d.name for d in self.devices]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"device names must be unique: {', '.join(duplicates)}")
        for model_id, model in self.models.items():
            unknown = [d for d in model.devices if d not in names]
            if unknown:
                raise ValueError(f"model {model_id}: unknown device(s) {', '.join(unknown)}")
        return self


def parse_device(text: str) -> DeviceSettings:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not host:
        raise ConfigError(f"device must be HOST:PORT, got {text!r}")
    return DeviceSettings(name=host, host=host.strip("[]"), port=int(port))


def load_settings(path: str | Path | None, *, environ: Mapping[str, str] | None = None) -> Settings:
    """Read a YAML config file (None → defaults) and apply environment overrides.

    Errors name the key and its line (or the environment variable that set it)."""
    env = os.environ if environ is None else environ
    text, raw = "", cast(dict[str, Any], {})
    if path is not None:
        text, raw = read_yaml(path)
        if signs := old_plugin_signs(raw):
            raise ConfigError(old_plugin_message(path, signs))
    origins = apply_env(raw, env, {"devices": [DeviceSettings().model_dump()]})
    try:
        settings = Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe(path or "config", text, exc, origins)) from exc
    base = Path(path).parent if path is not None else Path.cwd()
    _add_keys(settings, base, env)
    return settings


def read_yaml(path: str | Path) -> tuple[str, dict[str, Any]]:
    """(text, top-level mapping) of a YAML config file, or a ConfigError that says what is wrong."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file: {exc.strerror or exc}") from exc
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    return text, raw


def _add_keys(settings: Settings, base: Path, env: Mapping[str, str]) -> None:
    keys = list(settings.auth.api_keys)
    if settings.auth.api_keys_file:
        file = base / settings.auth.api_keys_file
        try:
            lines = file.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise ConfigError(f"auth.api_keys_file: cannot read {file}: {exc.strerror or exc}") from exc
        keys += [SecretStr(s) for s in (line.strip() for line in lines) if s and not s.startswith("#")]
    keys += [SecretStr(k.strip()) for k in env.get(KEYS_ENV, "").split(",") if k.strip()]
    settings.auth.api_keys = keys
