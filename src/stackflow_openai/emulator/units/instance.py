"""One emulated instance: the device's channel object plus its task object (`StackFlow.h`).

An instance owns its output route (the "push URL"): set at setup, replaced by every inference it
receives and by every control action naming it. Its output carries the request_id of the latest
inference it received, and reaches the client only with `enoutput`. User input reaches it only if
its `input` named the unit's tag; it is taken from an inbox by one receiver task, like the device's
ZMQ receive thread, so a unit that works inside that thread (vlm, tts, asr) delays the next message.
Every output is also published on the instance's out port, enoutput or not, for linked instances
(chain.py); their subscriptions are set up by the unit (units/links.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from stackflow_openai.emulator.rawjson import StreamIndexError, decode_base64, decode_stream, extract
from stackflow_openai.emulator.replies import build_reply
from stackflow_openai.stackflow.models import ModelDescriptor

if TYPE_CHECKING:
    from stackflow_openai.emulator.connection import ClientConnection
    from stackflow_openai.emulator.units.base import UnitService

__all__ = ["Instance"]

_log = logging.getLogger(__name__)


class Instance:
    """One set-up instance (the device's channel plus task objects)."""

    def __init__(self, unit: UnitService, number: int, conn: ClientConnection, request_id: str) -> None:
        self.unit = unit
        self.number = number
        self.work_id = f"{unit.name}.{number}"
        self.push_conn: ClientConnection | None = conn
        self.request_id = request_id
        self.state = "loading"  # loading → ready ⇄ busy → exiting
        self.model: ModelDescriptor | None = None
        self.config: dict[str, Any] = {}  # setup data
        self.params: dict[str, Any] = {}  # descriptor mode_param overridden by setup data
        self.response_format = ""
        self.enoutput = False
        self.enstream = False
        self.inputs: list[str] = []
        self.user_subscribed = False
        self.cmm_kib = 0
        self.ports: list[int] = []  # llm-sys's ports for this work_id (output, input, inference)
        self.out_url = ""  # the output (PUB) URL, set at register_unit
        self.prefill_overflows = 0
        self._inbox: asyncio.Queue[tuple[ClientConnection, str]] = asyncio.Queue()
        self._tasks: set[asyncio.Task[Any]] = set()

    # ----------------------------------------------------------------- set-up hooks (override)
    def configure(self, config: dict[str, Any], params: dict[str, Any], model: ModelDescriptor) -> None:
        """Take the validated setup: common fields here, unit-specific ones in subclasses."""
        self.model = model
        self.config = config
        self.params = params
        self.response_format = config["response_format"]
        self.enoutput = config["enoutput"]
        self.enstream = "stream" in self.response_format
        raw_input = config.get("input")
        if isinstance(raw_input, str):
            self.inputs = [raw_input]
        elif isinstance(raw_input, list):
            self.inputs = list(raw_input)
        self.user_subscribed = any(self.unit.subscribes_user_input(i) for i in self.inputs)

    async def open(self) -> None:
        """Load the model through the engine (the setup delay happens here)."""

    async def on_user_data(self, object: str, data: str) -> None:
        """One inference message, with `object` and `data` as the raw extracted strings."""

    async def finish_for_exit(self) -> None:
        """`exit`: what must still happen before the acknowledgement (e.g. llm's finish message)."""

    async def close_session(self) -> None:
        """Release engine resources."""

    # ----------------------------------------------------------------- output
    def emit(self, data: Any, *, object: str | None = None, code: int = 0) -> None:
        """The channel's `send`: latest inference request_id, instance work_id; published to linked
        instances always, sent to the client only if `enoutput`.

        May raise UnicodeEncodeError, as the device's `dump()` throws on invalid text.
        """
        line = build_reply(
            self.request_id,
            self.work_id,
            object=self.response_format if object is None else object,
            data=data,
            code=code,
        )
        self.unit.state.bus.publish(self.out_url, line)  # `send_raw_to_pub`: always, before the client
        if self.enoutput and self.push_conn is not None:
            self.push_conn.send(line)

    def next_stream_index(self, *, finish: bool) -> int:
        """The unit process's `static int count`: shared by every instance, reset by any finish."""
        index = self.unit.out_index
        self.unit.out_index = 0 if finish else index + 1
        return index

    # ----------------------------------------------------------------- input
    def deliver(self, conn: ClientConnection, raw: str) -> None:
        """An inference published by llm-sys; dropped unless this instance listens to user input."""
        if self.state in ("ready", "busy") and self.user_subscribed:
            self._inbox.put_nowait((conn, raw))

    async def _receive_loop(self) -> None:
        while True:
            conn, raw = await self._inbox.get()
            # `subscriber_event_call`: the envelope retargets output and restamps request_id.
            self.push_conn = conn
            self.request_id = extract(raw, "request_id")
            try:
                await self.on_user_data(extract(raw, "object"), extract(raw, "data"))
            except Exception:  # the device logs and carries on with the next message
                _log.exception("%s: inference failed", self.work_id)

    def decode_common(self, object: str, data: str) -> bytes | str | None:
        """Stream reassembly then base64, with the unit-level -25/-23 errors; None: nothing to do."""
        text = data
        if "stream" in object:
            try:
                joined = decode_stream(data, self.unit.stream_chunks)
            except StreamIndexError:
                self.unit.stream_chunks.clear()
                self.unit.send_error(-25)
                return None
            if joined is None:
                return None
            text = joined
        if "base64" in object:
            payload = decode_base64(text)
            if payload is None:
                self.unit.send_error(-23)
                return None
            return payload
        return text

    # ----------------------------------------------------------------- lifecycle
    def start(self) -> None:
        self.state = "ready"
        self.spawn(self._receive_loop())

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro, name=f"emulator-{self.work_id}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    async def kill(self) -> None:
        """Stop everything now (exit after draining, reset, emulator stop)."""
        self.state = "exiting"
        self.unit.state.bus.drop_subscriber(self)
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        try:
            await self.close_session()
        except Exception:
            _log.exception("%s: closing the engine session failed", self.work_id)

    def describe(self) -> dict[str, Any]:
        return {
            "work_id": self.work_id,
            "unit": self.unit.name,
            "model": self.model.mode if self.model else self.config.get("model"),
            "state": self.state,
            "prefill_overflows": self.prefill_overflows,
            "inputs": list(self.inputs),  # setup input and links: what a test sees of a chain
        }
