"""Where settings come from besides the file's own values: environment overrides, and error messages that
name the key and its line (or the variable that set it). Kept apart from config.py's models."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

__all__ = ["ENV_PREFIX", "ConfigError", "apply_env", "describe"]

ENV_PREFIX = "STACKFLOW_OPENAI__"


class ConfigError(ValueError):
    pass


def apply_env(
    raw: dict[str, Any], env: Mapping[str, str], defaults: dict[str, Any]
) -> dict[tuple[str | int, ...], str]:
    """Set the fields named by STACKFLOW_OPENAI__A__B variables; returns path → variable name.

    `defaults`: what a top-level section starts as when a variable creates it (e.g. one device)."""
    origins: dict[tuple[str | int, ...], str] = {}
    for name in sorted(env):
        if not name.upper().startswith(ENV_PREFIX) or len(name) == len(ENV_PREFIX):
            continue
        parts = [p.lower() for p in name[len(ENV_PREFIX) :].split("__")]
        if any(not p for p in parts):
            raise ConfigError(f"{name}: empty path segment (use __ between field names)")
        try:
            value = yaml.safe_load(env[name]) if env[name].strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"{name}: not a valid value: {exc}") from exc
        path = _set_path(raw, parts, value, name, defaults)
        origins[path] = name
    return origins


def _set_path(
    raw: dict[str, Any], parts: list[str], value: Any, name: str, defaults: dict[str, Any]
) -> tuple[str | int, ...]:
    node: Any = raw
    path: list[str | int] = []
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) > len(node):
                raise ConfigError(f"{name}: {part!r} is not an index of {'.'.join(map(str, path))}")
            index = int(part)
            if index == len(node):
                node.append({})
            path.append(index)
            if last:
                node[index] = value
            else:
                node = node[index]
            continue
        if not isinstance(node, dict):
            raise ConfigError(f"{name}: {'.'.join(map(str, path))} is not a section")
        path.append(part)
        if last:
            node[part] = value
        else:
            if part not in node or node[part] is None:
                node[part] = defaults.get(part, {}) if depth == 0 else {}
            node = node[part]
    return tuple(path)


def describe(
    path: str | Path, text: str, exc: ValidationError, origins: dict[tuple[str | int, ...], str]
) -> str:
    tree = _compose(text)
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if isinstance(p, str | int))
        where = ".".join(str(p) for p in loc) or "(top level)"
        source = next((var for p, var in origins.items() if loc[: len(p)] == p), None)
        if source is not None:
            at = f" (from {source})"
        else:
            line = _line_of(tree, loc)
            at = f" (line {line})" if line else ""
        msg = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        lines.append(f"{path}: {where}{at}: {msg}")
    return "\n".join(lines)


def _compose(text: str) -> yaml.Node | None:
    try:
        return yaml.compose(text) if text else None
    except yaml.YAMLError:
        return None


def _line_of(node: yaml.Node | None, loc: tuple[str | int, ...]) -> int | None:
    """The 1-based line of the deepest key of `loc` found in the YAML node tree."""
    line = None
    for key in loc:
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if getattr(k, "value", None) == str(key)), None)
            if match is None:
                break
            line = match[0].start_mark.line + 1
            node = match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
            node = node.value[key]
            line = node.start_mark.line + 1
        else:
            break
    return line
