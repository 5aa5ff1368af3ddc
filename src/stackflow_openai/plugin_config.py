"""Recognising the old m5stack/ModuleLLM-OpenAI-Plugin's config.yaml (config.py refuses it, and
ops/migrate.py translates it)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = [
    "LLM_SYS_PORT",
    "PLUGIN_MODEL_KEYS",
    "PLUGIN_MODEL_TYPES",
    "old_plugin_message",
    "old_plugin_signs",
]

# The old m5stack/ModuleLLM-OpenAI-Plugin's config.yaml (config/config.yaml there) shares the `server` and
# `models` keys with this gateway's but not their meaning: its `server: {host, port}` is the address of
# the device's llm-sys daemon (services/model_list.py connects to it; the plugin itself always listens
# on 0.0.0.0:8000, api_server.py), and its model entries name device setups (model_name, object, ...).
# Read as this gateway's config, that `server` would make it listen on the device's port 10001.
PLUGIN_MODEL_TYPES = frozenset({"tcp_client", "llm", "vlm", "tts", "asr", "vision_model", "llama.cpp"})
PLUGIN_MODEL_KEYS = frozenset(
    {
        "model_name",
        "object",
        "response_format",
        "input",
        "memory_required",
        "max_context_length",
        "host",
        "port",
    }
)
LLM_SYS_PORT = 10001


def old_plugin_signs(raw: Mapping[str, Any]) -> list[str]:
    """Why `raw` looks like the old plugin's config (empty: it does not)."""
    signs = []
    server = raw.get("server")
    if isinstance(server, dict) and server.get("port") == LLM_SYS_PORT and "devices" not in raw:
        signs.append(
            f"`server` names port {LLM_SYS_PORT}, the device's llm-sys port, and there is no `devices`"
        )
    models = raw.get("models")
    for name, entry in (models or {}).items() if isinstance(models, dict) else ():
        if not isinstance(entry, dict):
            continue
        keys = sorted(PLUGIN_MODEL_KEYS & set(entry))
        if entry.get("type") in PLUGIN_MODEL_TYPES or keys:
            what = f"type: {entry['type']}" if entry.get("type") in PLUGIN_MODEL_TYPES else ", ".join(keys)
            signs.append(f"model {name!r} is a plugin entry ({what})")
    return signs


def old_plugin_message(path: str | Path, signs: list[str]) -> str:
    return (
        f"{path}: this is the config.yaml of the old ModuleLLM-OpenAI-Plugin, not of this gateway "
        f"({'; '.join(signs[:3])}{'; ...' if len(signs) > 3 else ''}). In the plugin, "
        "`server: {host, port}` is the address of the device's llm-sys daemon (versions before "
        "2025-03-25 did not read it at all) and the plugin always listens on 0.0.0.0:8000; here "
        "`server` is where this gateway listens and the device goes under `devices:`. Convert the "
        f"file with:  stackflow-openai config migrate {path} -o config.yaml"
    )
