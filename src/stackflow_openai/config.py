"""The gateway's settings: one YAML file read by one function into pydantic models.

Unknown keys are errors (a typo in a config file must not be silently ignored); the gateway never
writes to the file. Command-line options override what the file says.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

__all__ = ["ConfigError", "DeviceSettings", "ModelSettings", "Settings", "load_settings", "parse_device"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServerSettings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    max_body_bytes: int = Field(32 * 1024 * 1024, gt=0, description="largest request body accepted")


class DeviceSettings(_Strict):
    name: str = "device"
    host: str = "127.0.0.1"
    port: int = Field(10001, ge=1, le=65535)
    connect_timeout: float = 5.0
    setup_timeout: float = Field(120.0, description="a model load may take minutes on a device")
    idle_timeout: float = Field(30.0, description="longest silence between two messages of a generation")


class PoolSettings(_Strict):
    queue_limit: int = Field(32, ge=0, description="requests that may wait for a unit; more get 503")
    queue_timeout: float = Field(30.0, gt=0, description="seconds a request may wait for a unit")
    cleanup_orphans: bool = Field(True, description="exit instances left on the device by an earlier run")


class ImageSettings(_Strict):
    max_bytes: int = 10 * 1024 * 1024
    fetch_timeout: float = 10.0
    allow_private: bool = Field(False, description="allow image URLs on loopback/private addresses")
    allowed_hosts: list[str] = Field(default_factory=list, description="hosts allowed even if private")


class ModelSettings(_Strict):
    """An explicit model entry. For device models `device_model` names the lsmode model to use."""

    type: Literal["chat", "openai_proxy", "speech", "transcription"] = "chat"
    device_model: str | None = None
    pool_size: int | None = Field(None, ge=1)
    system_prompt: str | None = None
    strict_params: bool = False
    allow_n: bool = True
    voices: dict[str, str] = Field(default_factory=dict, description="OpenAI voice name → device model")
    translation_chat_model: str | None = None
    # openai_proxy
    base_url: str | None = None
    api_key: str | None = None
    model: str | None = None
    timeout: float = 120.0

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str | None) -> str | None:
        return v.rstrip("/") if v else v


class Settings(_Strict):
    server: ServerSettings = Field(default_factory=ServerSettings)
    devices: list[DeviceSettings] = Field(default_factory=lambda: [DeviceSettings()])
    pool: PoolSettings = Field(default_factory=PoolSettings)
    images: ImageSettings = Field(default_factory=ImageSettings)
    models: dict[str, ModelSettings] = Field(default_factory=dict)
    aliases: dict[str, str] = Field(default_factory=dict, description="client-facing name → model id")
    strict_params: bool = False


class ConfigError(ValueError):
    pass


def parse_device(text: str) -> DeviceSettings:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"device must be HOST:PORT, got {text!r}")
    return DeviceSettings(name=host, host=host.strip("[]"), port=int(port))


def load_settings(path: str | Path | None) -> Settings:
    """Read a YAML config file (None → defaults). Errors name the key and, where known, the line."""
    if path is None:
        return Settings()
    text = Path(path).read_text(encoding="utf-8")
    try:
        raw: Any = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        return Settings.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_describe(path, text, exc)) from exc


def _describe(path: str | Path, text: str, exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"])
        line = _line_of(text, err["loc"])
        at = f" (line {line})" if line else ""
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{path}: {where}{at}: {msg}")
    return "\n".join(lines)


def _line_of(text: str, loc: tuple[Any, ...]) -> int | None:
    """The line where the last named key of `loc` appears (good enough to point a person at it)."""
    keys = [k for k in loc if isinstance(k, str)]
    if not keys:
        return None
    needle = f"{keys[-1]}:"
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith(needle) or line.strip().startswith(f"- {needle}"):
            return number
    return None
