"""llm-sys's own actions (`work_id` "sys"; protocol §3), plus the emulator's private `x_emulator_*`.

Replies echo the request's `work_id` as sent (even ""), except `cmminfo` and `hwinfo`, which
always say "sys", and the -3 for an unknown action, which uses the normalised "sys".
"""

from __future__ import annotations

import asyncio
import random
import time
from typing import TYPE_CHECKING, Any

from stackflow_openai.emulator.connection import ClientConnection
from stackflow_openai.emulator.faults import FaultsUpdateError
from stackflow_openai.emulator.replies import build_reply
from stackflow_openai.stackflow.codec import dump_reply

if TYPE_CHECKING:
    from stackflow_openai.emulator.server import Emulator

__all__ = ["SysActions"]

Conn = ClientConnection
Envelope = dict[str, Any]

VERSION = "v1.6"  # hard-coded in every branch (main_sys/src/event_loop.cpp `sys_version`)


class SysActions:
    def __init__(self, emulator: Emulator) -> None:
        self._emu = emulator

    def handle(self, conn: ClientConnection, envelope: dict[str, Any], request_id: str, action: str) -> None:
        echo = envelope["work_id"]  # the handlers re-read the original frame: "" stays ""
        handler = getattr(self, f"_do_{action}", None)
        if handler is None or action.startswith("_"):
            conn.send(build_reply(request_id, echo or "sys", code=-3))
            return
        handler(conn, envelope, request_id, echo)

    # ----------------------------------------------------------------- device actions
    def _do_ping(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        conn.send(build_reply(request_id, echo))

    def _do_version(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        conn.send(build_reply(request_id, echo, object="sys.utf-8", data=VERSION))

    def _do_version2(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        # glob("/opt/m5stack/bin/llm_*-*") (dev:main_sys/src/event_loop.cpp 716-732): the installed unit
        # binaries, named llm_<unit>-<version> by llm_pack.py; glob sorts them.
        versions = self._emu.generation.versions
        units = ["sys", *self._emu.installed_units]
        names = sorted(f"llm_{unit}-{versions[unit]}" for unit in units if unit in versions)
        conn.send(build_reply(request_id, echo, object="sys.utf-8.stream", data=names))

    def _do_lsmode(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        models = [descriptor.raw for descriptor in self._emu.catalogue]
        conn.send(build_reply(request_id, echo, object="sys.lsmode", data=models))

    def _do_cmminfo(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        if self._emu.board.axcl:
            # An AXCL host has no /proc/ax_proc/mem_cmm_info: the three numbers are never assigned and
            # the reply carries whatever the stack held (axcl:main_sys/src/event_loop.cpp 230-284).
            data = {
                key: random.getrandbits(random.choice((16, 32, 47))) for key in ("total", "used", "remain")
            }
        else:
            data = self._memory()
        conn.send(build_reply(request_id, "sys", object="sys.cmminfo", data=data))

    def _do_axcl_cmminfo(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        if not self._emu.board.axcl:
            conn.send(build_reply(request_id, echo or "sys", code=-3))  # no such action off the axcl branch
            return
        # axcl-smi -d <devid> info --cmm (axcl:main_sys/src/event_loop.cpp 294-369); `devid` is read from
        # the top level of the request, and a card that does not exist gives zeros.
        devid = envelope.get("devid", 0)
        devid = devid if isinstance(devid, int) and not isinstance(devid, bool) else 0
        data = self._memory() if devid == 0 else {"total": 0, "used": 0, "remain": 0}
        data["devid"] = devid
        conn.send(build_reply(request_id, "sys", object="sys.axcl_cmminfo", data=data))

    def _memory(self) -> dict[str, int]:
        state = self._emu.state
        used = state.cmm_used_kib()
        return {"remain": max(0, state.cmm_total_kib - used), "total": state.cmm_total_kib, "used": used}

    def _do_hwinfo(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        self._emu.spawn(self._hwinfo_later(conn, request_id))

    async def _hwinfo_later(self, conn: ClientConnection, request_id: str) -> None:
        # The device samples /proc/stat twice, one second apart, on a thread of its own.
        await asyncio.sleep(self._emu.hwinfo_delay)
        busy = sum(1 for i in self._emu.state.registry.values() if i.state == "busy")
        loaded = len(self._emu.state.registry)
        data = {
            "cpu_loadavg": min(100, 3 + 30 * busy),
            "eth_info": [{"ip": self._emu.host or "127.0.0.1", "name": "eth0", "speed": "1000"}],
            "mem": min(100, 28 + 6 * loaded),
            "temperature": 44500 + 3500 * busy,
        }
        conn.send(build_reply(request_id, "sys", object="sys.hwinfo", data=data))

    def _do_lstask(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        conn.send(build_reply(request_id, echo, code=-10))

    def _do_reset(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        conn.send(build_reply(request_id, echo, message="llm server restarting ..."))
        self._emu.schedule_reset()

    def _do_reboot(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        conn.send(build_reply(request_id, echo, message="rebooting ..."))
        self._emu.schedule_reset(delay=0.2)  # the board goes down ~200 ms later; here: a reset

    # ----------------------------------------------------------------- private test extension
    def _do_x_emulator_instances(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        # Totals ride in an extra top-level key so `data` stays the same list as live_instances().
        message = {
            "created": int(time.time()),
            "data": self._emu.live_instances(),
            "error": {"code": 0, "message": ""},
            "object": "sys.x_emulator_instances",
            "request_id": request_id,
            "totals": self._emu.totals(),
            "work_id": echo,
        }
        conn.send(dump_reply(message))

    def _do_x_emulator_faults(self, conn: Conn, envelope: Envelope, request_id: str, echo: str) -> None:
        changes = envelope.get("data", {})
        try:
            self._emu.faults.update(changes)
        except FaultsUpdateError as exc:
            conn.send(build_reply(request_id, echo, code=-2, message=f"json format error: {exc}"))
            return
        faults = self._emu.faults.as_dict()
        conn.send(build_reply(request_id, echo, object="sys.x_emulator_faults", data=faults))
