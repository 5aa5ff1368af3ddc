"""Where a lease goes in a device's unit pool: the pool's slots and the pure rules that choose among them.

The pool (pool.py) holds the lock, waits and talks to the device; this module only decides, over the
list of slots, which idle instance serves a setup, whether the limits leave room for a new one, and
which idle instance to evict otherwise. Kept apart so the rules read in one place and `capacity` (routing
among devices) and `pick` (leasing) count the same way.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .models import ModelDescriptor
from .poolapi import Prefer
from .unit import Unit

__all__ = ["UNIT_LIMITS", "Slot", "capacity", "pick", "signature", "unit_limit", "unit_states"]

# Instances per unit type on a device (protocol §6). melotts and tts both drive llm-audio and must not
# run together (StackFlow docs), so they share one slot.
UNIT_LIMITS: Mapping[str, int] = {
    "llm": 2, "vlm": 2, "melotts": 1, "tts": 1, "whisper": 1, "asr": 1,
    "cosy_voice": 2,  # MAX_TASK_NUM (dev:main_cosy_voice/src/main.cpp 31)
}  # fmt: skip
_SLOT_GROUP: Mapping[str, str] = {"melotts": "audio", "tts": "audio"}


@dataclass(eq=False)
class Slot:
    model: str
    unit_type: str
    signature: str
    unit: Unit | None = None  # None while the setup is in progress
    busy: bool = True
    last_used: float = field(default_factory=time.monotonic)

    @property
    def idle(self) -> bool:
        """Set up and not leased."""
        return not self.busy and self.unit is not None


def signature(setup: Mapping[str, Any]) -> str:
    """The key an instance is reused by: the LLM unit fixes its whole setup (design.md, "Unit pool")."""
    return json.dumps(setup, sort_keys=True, ensure_ascii=False)


def unit_limit(limits: Mapping[str, int], unit_type: str) -> int:
    return limits.get(unit_type, 1)


def _group(unit_type: str) -> str:
    return _SLOT_GROUP.get(unit_type, unit_type)


def _shares(slots: list[Slot], model: ModelDescriptor) -> tuple[list[Slot], list[Slot]]:
    """(this model's slots, the slots of its unit group: those the per-unit limit counts)."""
    group = _group(model.unit)
    return [s for s in slots if s.model == model.mode], [s for s in slots if _group(s.unit_type) == group]


def _matching(slots: list[Slot], model: ModelDescriptor, setup_key: str) -> list[Slot]:
    return [s for s in slots if s.idle and s.model == model.mode and s.signature == setup_key]


def capacity(
    slots: list[Slot], model: ModelDescriptor, setup_key: str, pool_size: int, limits: Mapping[str, int]
) -> tuple[int, int]:
    """(free places, idle instances with this setup). Free places: idle matching instances, plus new ones
    the limits allow, or else evictable idle ones."""
    mine, in_group = _shares(slots, model)
    matching = sum(1 for s in _matching(slots, model, setup_key) if s.unit is not None and not s.unit.broken)
    new = max(0, min(pool_size - len(mine), unit_limit(limits, model.unit) - len(in_group)))
    evictable = sum(1 for s in in_group if s.idle) - matching
    return matching + (new if new else max(0, evictable)), matching


def pick(
    slots: list[Slot],
    model: ModelDescriptor,
    setup_key: str,
    pool_size: int,
    limits: Mapping[str, int],
    prefer: Prefer = None,
) -> tuple[Slot | None, Slot | None]:
    """(slot, victim), both marked busy: an idle match (one `prefer` accepts first, else the least recently
    used), or a new slot appended to `slots`, or an idle instance to evict; (None, None): wait."""
    if idle := _matching(slots, model, setup_key):
        preferred = [s for s in idle if prefer is not None and s.unit is not None and prefer(s.unit)]
        chosen = preferred[0] if preferred else min(idle, key=lambda s: s.last_used) if prefer else idle[0]
        chosen.busy = True
        return chosen, None
    mine, in_group = _shares(slots, model)
    if len(mine) < pool_size and len(in_group) < unit_limit(limits, model.unit):
        slot = Slot(model.mode, model.unit, setup_key)
        slots.append(slot)
        return slot, None
    # Evict the least recently used idle instance that stands in the way.
    candidates = [s for s in (mine if len(mine) >= pool_size else in_group) if s.idle]
    if candidates:
        victim = min(candidates, key=lambda s: s.last_used)
        victim.busy = True
        return None, victim
    return None, None


def unit_states(slots: list[Slot]) -> dict[tuple[str, str], int]:
    """(unit type, state) → instances; state is loading, busy or idle."""
    counts: dict[tuple[str, str], int] = {}
    for s in slots:
        state = "loading" if s.unit is None else "busy" if s.busy else "idle"
        counts[(s.unit_type, state)] = counts.get((s.unit_type, state), 0) + 1
    return counts
