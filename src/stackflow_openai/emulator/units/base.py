"""What every emulated unit shares: the StackFlow base class of the device (`StackFlow.cpp`).

A unit (`UnitService`) handles control actions one at a time, in arrival order, on its own worker:
while a setup loads, everything else for that unit type waits behind it. Replies made by the unit's
generic `send` carry the request_id of the last control request the unit handled and go to that
request's connection; that is also where inference-time errors (-23, -25) of *any* instance go.
Instances themselves live in `instance.py`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, ClassVar

from stackflow_openai.emulator.memory import model_cmm_kib
from stackflow_openai.emulator.rawjson import c_stoi, extract
from stackflow_openai.emulator.replies import build_reply
from stackflow_openai.emulator.units.instance import Instance
from stackflow_openai.emulator.units.links import Route, link_input, subscribe_setup_inputs, unlink_input
from stackflow_openai.emulator.units.setup_fields import SetupError, check_setup

if TYPE_CHECKING:
    from stackflow_openai.emulator.connection import ClientConnection
    from stackflow_openai.emulator.state import DeviceState

__all__ = ["CONTROL_ACTIONS", "Instance", "SetupError", "UnitService", "work_id_number"]

CONTROL_ACTIONS = frozenset({"setup", "pause", "work", "exit", "link", "unlink", "taskinfo"})
_log = logging.getLogger(__name__)


def work_id_number(work_id: str) -> int | None:
    """`sample_get_work_id_num`: the number after the first '.', None for a bare unit name.

    Raises ValueError for a non-numeric suffix (the device unit would crash on it).
    """
    dot = work_id.find(".")
    if dot < 0 or dot == len(work_id) - 1:
        return None
    return c_stoi(work_id[dot + 1 :])


class UnitService:
    """One unit process (llm-llm, llm-melotts, ...): its control worker and its instances."""

    name: ClassVar[str] = ""
    limit: ClassVar[int] = 1  # MAX_TASK_NUM / task_count_
    user_tag: ClassVar[str] = ""
    instance_class: ClassVar[type[Instance]] = Instance
    parse_error_work_id: ClassVar[str | None] = None  # -2 copy-paste bug: llm/vlm say "kws"
    load_error_work_id: ClassVar[str | None] = None  # -5 copy-paste bug: whisper says "asr"
    has_pause: ClassVar[bool] = True
    has_work: ClassVar[bool] = False
    # What the unit subscribes to at setup and on `link`, and which handler gets it (links.py).
    setup_routes: ClassVar[tuple[Route, ...]] = ()
    link_routes: ClassVar[tuple[Route, ...]] = ()

    def __init__(self, state: DeviceState) -> None:
        self.state = state
        self.channels: dict[int, Instance] = {}  # registered, loading included
        self.instances: dict[int, Instance] = {}  # set up successfully
        self.last_request_id = ""
        self.last_conn: ClientConnection | None = None
        self.stream_chunks: dict[int, str] = {}  # `static stream_buff`: shared by all instances
        self.out_index = 0
        self._queue: asyncio.Queue[tuple[ClientConnection, str, str]] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None

    def subscribes_user_input(self, source: str) -> bool:
        return self.user_tag in source

    # ----------------------------------------------------------------- RPC entry
    def submit(self, conn: ClientConnection, raw: str) -> None:
        """A control request relayed by llm-sys. Actions without a handler get no reply at all."""
        action = extract(raw, "action")
        if action not in CONTROL_ACTIONS:
            return
        if self._worker is None:
            self._worker = asyncio.create_task(self._work_loop(), name=f"emulator-unit-{self.name}")
        self._queue.put_nowait((conn, raw, action))

    async def _work_loop(self) -> None:
        while True:
            conn, raw, action = await self._queue.get()
            self.last_request_id = extract(raw, "request_id")
            self.last_conn = conn
            try:
                if action == "setup":
                    await self._setup(conn, extract(raw, "data"))
                else:
                    await self._control(action, conn, extract(raw, "work_id"), extract(raw, "data"))
            except Exception:
                _log.exception("unit %s: %s failed", self.name, action)

    def reply(
        self,
        work_id: str,
        *,
        code: int = 0,
        object: str = "None",
        data: Any = "None",
        message: str | None = None,
    ) -> None:
        """`StackFlow::send`: last control request's id, to that request's connection."""
        if self.last_conn is not None:
            line = build_reply(
                self.last_request_id, work_id, object=object, data=data, code=code, message=message
            )
            self.last_conn.send(line)

    def send_error(self, code: int) -> None:
        """Inference-time errors: bare unit name, routed like control replies (protocol §2.4)."""
        self.reply(self.name, code=code)

    # ----------------------------------------------------------------- setup
    async def _setup(self, conn: ClientConnection, data: str) -> None:
        number = self.state.allocate_work_id()
        instance = self.instance_class(self, number, conn, self.last_request_id)
        self.channels[number] = instance
        self.state.register(instance)
        try:
            await self._load(instance, data)
        except SetupError as err:
            await self._discard(instance)
            self.reply(self._error_work_id(err.code), code=err.code, message=err.message)
            return
        except asyncio.CancelledError:
            await self._discard(instance)
            raise
        except Exception:
            _log.exception("%s: model load failed", instance.work_id)
            await self._discard(instance)
            self.reply(self._error_work_id(-5), code=-5)
            return
        self.instances[number] = instance
        instance.start()
        await subscribe_setup_inputs(instance)
        self.reply(instance.work_id)

    def _error_work_id(self, code: int) -> str:
        if code == -2 and self.parse_error_work_id:
            return self.parse_error_work_id
        if code == -5 and self.load_error_work_id:
            return self.load_error_work_id
        return self.name

    async def _load(self, instance: Instance, data: str) -> None:
        if len(self.channels) - 1 == self.limit:
            raise SetupError(-21)
        faults = self.state.faults
        if faults.take("fail_setup"):
            code = faults.fail_setup_code
            raise SetupError(code, "json format error." if code == -2 else None)
        try:
            config = json.loads(data, parse_constant=_reject_constant)
        except ValueError:
            raise SetupError(-2, "json format error.") from None
        if isinstance(config, dict):
            instance.config = config  # lets introspection name the model while it loads
        if faults.take("hang_setup"):
            await asyncio.Future()  # never completes: only reset/stop cancel it
        model, params = check_setup(self.name, config, self.state.find_model)
        need = model_cmm_kib(model)
        if need > self.state.cmm_remain_kib():
            raise SetupError(-5)  # the device's load fails in AX_SYS_MemAlloc: "Model loading failed."
        instance.cmm_kib = need
        instance.configure(config, params, model)
        await instance.open()

    async def _discard(self, instance: Instance) -> None:
        self.channels.pop(instance.number, None)
        self.instances.pop(instance.number, None)
        self.state.release(instance)
        await instance.kill()

    # ----------------------------------------------------------------- other control actions
    async def _control(self, action: str, conn: ClientConnection, work_id: str, data: str) -> None:
        try:
            number = work_id_number(work_id)
        except ValueError:
            number = -1  # never an instance number: answered like an unknown instance
        channel = self.channels.get(number) if number is not None else None
        if channel is not None:
            channel.push_conn = conn  # every control action retargets the instance's output
        instance = self.instances.get(number) if number is not None else None
        if action == "taskinfo":
            self._taskinfo(work_id, number, instance)
        elif (action == "pause" and not self.has_pause) or (action == "work" and not self.has_work):
            self.reply(work_id, code=-18)
        elif instance is None:
            self.reply(work_id, code=-6)
        elif action == "exit":
            await self._exit(instance)
        elif action == "pause":
            await self.pause(instance)
            self.reply(work_id)
        elif action == "work":
            self.reply(work_id)  # resumes microphone capture: nothing to do without a microphone
        elif action == "link":
            linked = await link_input(instance, data)
            self.reply(instance.work_id, code=0 if linked else -20)
        else:
            await unlink_input(instance, data)
            self.reply(instance.work_id)

    async def pause(self, instance: Instance) -> None:
        """Unit-specific effect of `pause` (llm/vlm stop generating; whisper/asr stop the mic)."""

    def _taskinfo(self, work_id: str, number: int | None, instance: Instance | None) -> None:
        if number is None:
            live = [self.channels[n].work_id for n in sorted(self.channels)]
            self.reply(work_id, object=f"{self.name}.tasklist", data=live)
        elif instance is None:
            self.reply(work_id, code=-6)
        else:
            info = {
                "enoutput": instance.enoutput,
                "inputs": list(instance.inputs),
                "model": instance.config.get("model"),
                "response_format": instance.response_format,
            }
            self.reply(work_id, object=f"{self.name}.taskinfo", data=info)

    async def _exit(self, instance: Instance) -> None:
        instance.state = "exiting"
        await instance.finish_for_exit()
        await instance.kill()
        self.channels.pop(instance.number, None)
        self.instances.pop(instance.number, None)
        self.reply(instance.work_id)
        self.state.release(instance)  # after the ack, like `sys_release_unit`

    # ----------------------------------------------------------------- shutdown
    async def shutdown(self) -> None:
        """Service restart or emulator stop: drop the queue, kill every instance."""
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
            self._worker = None
        for instance in list(self.channels.values()):
            await instance.kill()
        self.channels.clear()
        self.instances.clear()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")  # nlohmann rejects NaN/Infinity; json.loads would not
