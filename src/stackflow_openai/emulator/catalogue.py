"""The emulated device's installed models: `mode_*.json` descriptors, as in /opt/m5stack/data/models.

The built-in sets are one directory per board (`catalogue/ax630c`, `ax650`, `axcl`; see `boards.py` for
which StackFlow branch and files each holds). Each file is the device's own descriptor, byte for byte,
so the gateway is never tested against a field a real device lacks; the memory a model takes when
loaded comes from `memory.py`, not from invented descriptor fields.

The ctx models are there as on their boards (`qwen2.5-HA-0.5B-ctx-ax630c`, `internvl3-1B-448-ax630c` in
`ax630c`; `qwen3-1.7B-Int8-ctx-axcl` and the other `*-axcl` LLMs in `axcl`), `cmm_size` theirs.

Extra directories add models or replace built-in ones with the same `mode`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["BUILTIN_CATALOGUE_DIR", "board_catalogue_dir", "load_catalogue"]

CATALOGUE_ROOT = Path(__file__).resolve().parent / "catalogue"
BUILTIN_CATALOGUE_DIR = CATALOGUE_ROOT / "ax630c"  # the default board's


def board_catalogue_dir(board: str) -> Path:
    return CATALOGUE_ROOT / board


_log = logging.getLogger(__name__)


def load_catalogue(
    dirs: Iterable[str | os.PathLike[str]] = (), *, include_builtin: bool = True, board: str = "ax630c"
) -> list[ModelDescriptor]:
    """Descriptors of `board`'s built-in directory (unless excluded) and then each of `dirs`, in order.

    Like the device, a file that is not valid JSON (or not an object) is skipped with a warning.
    A directory that does not exist is an error: it is always a configuration mistake here.
    """
    folders = ([board_catalogue_dir(board)] if include_builtin else []) + [Path(d) for d in dirs]
    by_mode: dict[str, ModelDescriptor] = {}
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"catalogue directory not found: {folder}")
        for path in sorted(folder.glob("*.json")):
            descriptor = _read_descriptor(path)
            if descriptor is not None:
                by_mode[descriptor.mode] = descriptor  # later directories win, in place
    return list(by_mode.values())


def _read_descriptor(path: Path) -> ModelDescriptor | None:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        _log.warning("skipping model descriptor %s: %s", path, exc)
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("mode"), str) or not obj["mode"]:
        _log.warning("skipping model descriptor %s: not an object with a 'mode'", path)
        return None
    return ModelDescriptor.from_json(obj)
