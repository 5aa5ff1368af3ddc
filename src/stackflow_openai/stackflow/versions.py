"""Unit versions from `sys.version2`, and what each version changes for a client.

`sys.version2` (dev:projects/llm_framework/main_sys/src/event_loop.cpp 716-732, also on main and axcl)
lists the unit binaries installed under /opt/m5stack/bin, named `llm_<unit>-<version>` by
`tools/llm_pack.py` (`create_bin_deb`): e.g. `llm_tts-1.7`, `llm_cosy_voice-1.10`, `llm_sys-1.6`.
Firmware without the action answers -3; then no version is known and callers must use a way of
driving the unit that works on every version.
"""

from __future__ import annotations

from typing import Any

__all__ = ["TTS_FINAL_ONLY", "Version", "parse_version2"]

Version = tuple[int, int]

# tts 1.7 (StackFlow dev) flags every segment but the last `finish:false` and ends with an empty
# `finish:true` message (dev:main_tts/src/main.cpp 287-307, 442-467, 545-557).
TTS_FINAL_ONLY: Version = (1, 7)


def parse_version2(data: Any) -> dict[str, Version]:
    """{unit: (major, minor)} from version2's list; names that do not parse are skipped."""
    versions: dict[str, Version] = {}
    for name in data if isinstance(data, list) else ():
        if not isinstance(name, str) or not name.startswith("llm_") or "-" not in name:
            continue
        unit, _, number = name[4:].rpartition("-")
        major, _, minor = number.partition(".")
        if unit and major.isdigit() and minor.isdigit():
            versions[unit] = (int(major), int(minor))
    return versions
