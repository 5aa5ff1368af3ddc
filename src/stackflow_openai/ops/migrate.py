"""`stackflow-openai config migrate`: the old ModuleLLM-OpenAI-Plugin's config.yaml → this gateway's.

What the plugin's keys meant is read from its code (m5stack/ModuleLLM-OpenAI-Plugin, master 5f71dc2):
- `server: {host, port}`: the device's llm-sys address (services/model_list.py, since dcc871d); the
  plugin itself always listens on 0.0.0.0:8000 (api_server.py). Files older than dcc871d carry
  `server: {host: 0.0.0.0, port: 8000}`, which no version read.
- model entries: `type: llm | vlm | tts | asr` (or the older `tcp_client`, whose `object` says the unit)
  with the device's `host`/`port`, the device model in `model_name`, `pool_size`, `system_prompt`, and
  the plugin's own unit formats and sizes; `openai_proxy` and `vision_model` (both an upstream
  OpenAI-compatible server: base_url, api_key, model); `llama.cpp`, which no version implemented.
The result is plain data, checked against `Settings` before it is returned.
"""

from __future__ import annotations

import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from stackflow_openai.config import Settings
from stackflow_openai.plugin_config import LLM_SYS_PORT

__all__ = ["Migration", "migrate_plugin_config", "render_migration"]

_PLUGIN_LISTEN = {"host": "0.0.0.0", "port": 8000}  # where the plugin listened
_KIND_BY_OBJECT = {
    "llm.setup": "chat",
    "vlm.setup": "chat",
    "melotts.setup": "speech",
    "tts.setup": "speech",
    "whisper.setup": "transcription",
    "asr.setup": "transcription",
}
_KIND_BY_TYPE = {"llm": "chat", "vlm": "chat", "tts": "speech", "asr": "transcription"}
# Keys of the plugin's device entries that this gateway reads from the device itself (the prefill window,
# memory need and unit from lsmode's descriptors) or decides (the unit's formats).
_DROPPED = ("max_context_length", "memory_required", "object", "response_format", "input")


@dataclass
class Migration:
    config: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # what was translated or left out, and why


def migrate_plugin_config(raw: Mapping[str, Any]) -> Migration:
    out = Migration({"server": dict(_PLUGIN_LISTEN)})
    out.notes.append(
        "server: 0.0.0.0:8000 is where the plugin always listened (api_server.py); "
        "use host 127.0.0.1 to serve only this machine"
    )
    devices = _Devices()
    server = raw.get("server")
    if isinstance(server, dict) and server.get("host") and server.get("port") != _PLUGIN_LISTEN["port"]:
        devices.add(str(server["host"]), int(server.get("port") or LLM_SYS_PORT))
        out.notes.append(f"the plugin's `server` ({server['host']}:{server.get('port')}) is the device")
    elif isinstance(server, dict):
        where = f"{server.get('host')}:{server.get('port')}"
        out.notes.append(f"the plugin's `server` ({where}) was read by no version of the plugin")
    models: dict[str, Any] = {}
    entries = raw.get("models")
    for name, entry in (entries or {}).items() if isinstance(entries, dict) else ():
        if isinstance(entry, dict):
            translated = _model(str(name), entry, devices, out.notes)
            if translated is not None:
                models[str(name)] = translated
    dropped = sorted({k for e in (entries or {}).values() if isinstance(e, dict) for k in e if k in _DROPPED})
    if dropped:
        out.notes.append(
            f"{', '.join(dropped)} of the device entries dropped: the gateway reads each model's prefill "
            "window, memory need and unit from the device's descriptors and picks the unit's formats itself"
        )
    out.config["devices"] = devices.settings()
    if not out.config["devices"]:
        out.config["devices"] = [{"name": "device", "host": "127.0.0.1", "port": LLM_SYS_PORT}]
        out.notes.append("no device address in the file: the device on this machine (127.0.0.1:10001)")
    if len(out.config["devices"]) == 1:
        for entry in models.values():
            entry.pop("devices", None)  # one device: every model runs there anyway
    if models:
        out.config["models"] = models
    Settings.model_validate(out.config)  # a migration that this gateway cannot read is a bug here
    return out


def _model(name: str, entry: Mapping[str, Any], devices: _Devices, notes: list[str]) -> dict[str, Any] | None:
    kind = str(entry.get("type", ""))
    if kind in ("openai_proxy", "vision_model"):
        return _proxy(name, entry, notes)
    target = _KIND_BY_OBJECT.get(str(entry.get("object", ""))) or _KIND_BY_TYPE.get(kind)
    if target is None:
        why = (
            "the plugin never implemented it" if kind == "llama.cpp" else "unknown to the plugin's dispatcher"
        )
        notes.append(f"model {name!r} (type {kind or 'missing'}) left out: {why}")
        return None
    out: dict[str, Any] = {"type": target}
    if entry.get("model_name") and entry["model_name"] != name:
        out["device_model"] = str(entry["model_name"])
    if entry.get("host"):
        out["devices"] = [devices.add(str(entry["host"]), int(entry.get("port") or LLM_SYS_PORT))]
    if isinstance(entry.get("pool_size"), int) and entry["pool_size"] >= 1:
        out["pool_size"] = entry["pool_size"]
    if target == "chat" and entry.get("system_prompt"):
        out["system_prompt"] = str(entry["system_prompt"]).strip()
    if target == "transcription" and entry.get("language"):
        out["language"] = str(entry["language"])
    return out


def _proxy(name: str, entry: Mapping[str, Any], notes: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "openai_proxy"}
    for key in ("base_url", "model", "api_key"):
        if entry.get(key):
            out[key] = str(entry[key])
    leftovers = sorted(set(entry) - {"type", "base_url", "model", "api_key"})
    if leftovers:  # vision_model's max_image_size / image_timeout: the upstream receives the images as sent
        notes.append(f"model {name!r}: {', '.join(leftovers)} dropped (the request is forwarded as it is)")
    return out


class _Devices:
    """Distinct (host, port) pairs, named `device`, `device-2`, ... in order of appearance."""

    def __init__(self) -> None:
        self._names: dict[tuple[str, int], str] = {}

    def add(self, host: str, port: int) -> str:
        key = (host, port)
        if key not in self._names:
            self._names[key] = "device" if not self._names else f"device-{len(self._names) + 1}"
        return self._names[key]

    def settings(self) -> list[dict[str, Any]]:
        return [{"name": n, "host": h, "port": p} for (h, p), n in self._names.items()]


def _comment(note: str) -> list[str]:
    wrapped = textwrap.wrap(note, width=100)
    return [f"#   - {wrapped[0]}", *(f"#     {line}" for line in wrapped[1:])]


def render_migration(migration: Migration, source: str) -> str:
    """The new config file: what was done as comments, then the YAML (`config check` reads it)."""
    lines = [
        "# stackflow-openai config, migrated by `stackflow-openai config migrate` from",
        f"# {source} (a config.yaml of the old ModuleLLM-OpenAI-Plugin).",
        "# Every other key has its default: see config.example.yaml. Notes:",
        *(line for note in migration.notes for line in _comment(note)),
        "",
    ]
    body = yaml.safe_dump(migration.config, sort_keys=False, allow_unicode=True, default_flow_style=False)
    return "\n".join(lines) + body
