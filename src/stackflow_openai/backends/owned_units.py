"""The device instances this gateway set up and has not exited, remembered across restarts.

At start and on every reconnect the gateway exits instances left on a device by an earlier run that was
killed or crashed (a StackFlow instance outlives its client's connection). Only the work_ids recorded
here are exited: a UART application's units, or the AI Pyramid's own kws → asr → llm → melotts pipeline,
share the device and must survive a gateway restart. One small JSON file per device, rewritten
atomically (temporary file, fsync, rename) whenever an instance is set up or exited, so a kill at any
moment leaves either the old or the new list, never a torn one.

Limit: a work_id is only a unit name and a counter. If the device reboots while the gateway is down,
the counter restarts and another application may get a recorded work_id back; the next start would exit
it. The window is small (the gateway must be killed, the device rebooted, and the other application must
set up that very unit before the gateway starts again) and is documented in docs/operations.md.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from pathlib import Path

__all__ = ["OwnedUnits"]

log = logging.getLogger(__name__)
_FORMAT = 1
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class OwnedUnits:
    """work_id → model of the instances set up on one device (the pool's `UnitLedger`)."""

    def __init__(self, path: Path, device: str) -> None:
        self.path = path
        self.device = device
        self._units = self._load()
        self._write_failed = False

    @classmethod
    def for_device(cls, state_dir: Path, address: str) -> OwnedUnits:
        # The address names the device: two devices never share a file, and a renamed device keeps its list.
        name = _UNSAFE.sub("_", address).strip("_") or "device"
        return cls(state_dir / f"owned-units-{name}.json", address)

    def snapshot(self) -> dict[str, str]:
        return dict(self._units)

    def opened(self, work_id: str, model: str) -> None:
        self._units[work_id] = model
        self._save()

    def closed(self, work_id: str) -> None:
        if self._units.pop(work_id, None) is not None:
            self._save()

    def _load(self) -> dict[str, str]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s: unreadable (%s); no leftover of an earlier run will be exited", self.path, exc)
            return {}
        units = data.get("units") if isinstance(data, dict) else None
        if not isinstance(units, dict):
            log.warning("%s: not a list of owned units; ignored", self.path)
            return {}
        return {str(w): str(m) for w, m in units.items()}

    def _save(self) -> None:
        body = json.dumps({"format": _FORMAT, "device": self.device, "units": self._units}, indent=1)
        try:
            if not self._units:
                # Nothing owned: no file (an emulator on a new port each run would otherwise leave one each).
                self.path.unlink(missing_ok=True)
                return
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".owned-units-", dir=self.path.parent)
            try:
                with os.fdopen(fd, "w", encoding="utf-8") as out:
                    out.write(body)
                    out.flush()
                    os.fsync(out.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        except OSError as exc:
            # A read-only disk must not stop the gateway from serving; it only loses the clean-up.
            if not self._write_failed:
                log.warning("%s: cannot record the instances this gateway owns: %s", self.path, exc)
            self._write_failed = True
            return
        self._write_failed = False
