"""Where the gateway keeps its data when the config names no `data_dir`."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

__all__ = ["default_data_dir"]

APP_DIR = "stackflow-openai"


def default_data_dir(environ: Mapping[str, str] | None = None) -> Path:
    """$XDG_DATA_HOME/stackflow-openai, else ~/.local/share/stackflow-openai (the XDG base directory
    specification's default; a relative XDG_DATA_HOME is invalid by that spec and ignored)."""
    env = os.environ if environ is None else environ
    base = env.get("XDG_DATA_HOME", "")
    if base and os.path.isabs(base):
        return Path(base) / APP_DIR
    return Path(env.get("HOME") or Path.home()) / ".local" / "share" / APP_DIR
