"""Fault injection for tests: ways a real device misbehaves, on demand.

Counters mean "the next N occurrences"; each use decrements them. They are set in-process
(`emulator.faults.drop_finish = 1`) or over the wire with the private sys action
`x_emulator_faults` (see the package docstring), whose `data` object takes the same field names.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

__all__ = ["Faults", "FaultsUpdateError"]


class FaultsUpdateError(ValueError):
    """An `x_emulator_faults` request named an unknown field or gave it a bad value."""


@dataclass
class Faults:
    # The next N llm/vlm generations end without their finish message (stream terminator, or the
    # single non-stream message): what a client sees when the unit's dump() throws mid-generation.
    drop_finish: int = 0
    # The next N setups never answer. The unit stays blocked (control actions queue behind it)
    # until `sys.reset` or emulator stop, like a unit stuck while loading a model.
    hang_setup: int = 0
    # The next N setups fail with `fail_setup_code` (after taking a work_id, like real failures).
    fail_setup: int = 0
    fail_setup_code: int = -5
    # The next N llm/vlm *stream* generations: after `close_after_deltas` deltas the connection
    # receiving the output is closed by the device side.
    close_mid_stream: int = 0
    close_after_deltas: int = 1
    # The next N llm/vlm generations whose prompt carries tools or asks for JSON answer with a broken call
    # (arguments that are no JSON) or no JSON at all, whatever the engine: tests the gateway's re-ask.
    malformed_answer: int = 0
    # Extra delay (s) after every generated llm/vlm token, on top of the engine's own timing.
    token_delay: float | None = None
    # The device hangs (a wedged llm-sys): every frame it reads is ignored (pings included) and running
    # generations stop producing output, until the flag is cleared. 0 or 1.
    hang: int = 0

    def take(self, name: str) -> bool:
        """Consume one occurrence of a counted fault; True if it fires."""
        remaining = getattr(self, name)
        if remaining > 0:
            setattr(self, name, remaining - 1)
            return True
        return False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def update(self, changes: Any) -> None:
        """Apply a wire update: known fields only, with their types; all or nothing."""
        if not isinstance(changes, dict):
            raise FaultsUpdateError("data must be an object")
        known = {f.name: f for f in fields(self)}
        checked: dict[str, Any] = {}
        for name, value in changes.items():
            if name not in known:
                raise FaultsUpdateError(f"unknown fault {name!r}")
            checked[name] = _check_value(name, value)
        for name, value in checked.items():
            setattr(self, name, value)


def _check_value(name: str, value: Any) -> Any:
    if name == "token_delay":
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise FaultsUpdateError("token_delay must be a number >= 0 or null")
        return float(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise FaultsUpdateError(f"{name} must be an integer")
    if name != "fail_setup_code" and value < 0:
        raise FaultsUpdateError(f"{name} must be >= 0")
    return value
