"""The emulated device's installed models: `mode_*.json` descriptors, as in /opt/m5stack/data/models.

The built-in set mirrors a Module LLM (AX630C) with the models this project drives. Each file is the
device's own descriptor, as in m5stack/StackFlow (commit d9084ba, `projects/llm_framework/main_*/`), so
the gateway is never tested against a field a real device lacks; the one addition: every built-in
descriptor carries `mode_param.cmm_size` (KiB) so the emulated CMM memory has numbers: the device's
own value where it declares one, else the bridge's heuristics of protocol §6 (0.5B 560460, 1B
1363148, 1.5B 1782579, melotts 59764, whisper-tiny 289132); whisper-base (548610) is scaled from
whisper-tiny by parameter count, and CPU-only models (SummerTTS, sherpa-ncnn) use no CMM at all.

The ctx models (`qwen2.5-HA-0.5B-ctx-ax630c`, `internvl3-1B-448-ax630c` from StackFlow `dev` @865ca0e and
`qwen3-1.7B-Int8-ctx-axcl` from `axcl` @20079ff) are their branches' files byte for byte, `cmm_size` theirs.

Extra directories add models or replace built-in ones with the same `mode`.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterable
from pathlib import Path

from stackflow_openai.stackflow.models import ModelDescriptor

__all__ = ["BUILTIN_CATALOGUE_DIR", "load_catalogue"]

BUILTIN_CATALOGUE_DIR = Path(__file__).resolve().parent / "catalogue"
_log = logging.getLogger(__name__)


def load_catalogue(
    dirs: Iterable[str | os.PathLike[str]] = (), *, include_builtin: bool = True
) -> list[ModelDescriptor]:
    """Descriptors from the built-in directory (unless excluded) and then each of `dirs`, in order.

    Like the device, a file that is not valid JSON (or not an object) is skipped with a warning.
    A directory that does not exist is an error: it is always a configuration mistake here.
    """
    folders = ([BUILTIN_CATALOGUE_DIR] if include_builtin else []) + [Path(d) for d in dirs]
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
