"""Handle on one live unit instance and its own connection (protocol §4, §5).

Each instance gets a dedicated connection because the device pushes an instance's output to the
last connection that spoke to it (protocol §1.4): sharing would let one caller steal another's tokens.

Discipline: a generation that is abandoned (consumer breaks out, closes or is cancelled) is paused
and its terminator consumed, so the next generation starts on a clean stream; if that cannot be
done the handle is marked `broken` and its owner must `exit()` it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, Callable, Mapping
from typing import Any

from .codec import Reply
from .connection import INFERENCE_ERROR_CODES, Connection
from .errors import (
    ConnectionLost,
    DeviceError,
    DeviceTimeout,
    InferencePushFalse,
    StackFlowError,
    UnitDoesNotExist,
    error_for_code,
)

__all__ = ["PAUSABLE_UNITS", "Unit", "UnitBroken", "reply_text"]

log = logging.getLogger(__name__)

# `pause` aborts a running generation only on these units; melotts/tts answer -18 (protocol §4.2).
PAUSABLE_UNITS = frozenset({"llm", "vlm"})


class UnitBroken(StackFlowError):
    """The unit handle was exited or is in an unknown state: exit and discard it."""


def reply_text(reply: Reply) -> str:
    """The text carried by an output message: the stream `delta`, or the whole non-stream string."""
    data = reply.data
    if isinstance(data, dict):
        delta = data.get("delta", "")
        return delta if isinstance(delta, str) else ""
    return data if isinstance(data, str) else ""


def _is_unit_wide_error(item: Reply | BaseException) -> bool:
    return isinstance(item, Reply) and item.code in INFERENCE_ERROR_CODES and "." not in item.work_id


class Unit:
    """One live instance (`work_id`) of a unit, with its own connection."""

    # Time allowed to pause (or drain) a generation abandoned by its consumer.
    recover_timeout: float = 10.0

    def __init__(
        self,
        conn: Connection,
        *,
        work_id: str,
        unit: str,
        setup: Mapping[str, Any],
        host: str,
        port: int,
        on_exit: Callable[[Unit], None] | None = None,
    ) -> None:
        self.work_id = work_id
        self.unit = unit
        self.setup: dict[str, Any] = dict(setup)
        self._conn = conn
        self._host = host
        self._port = port
        self._on_exit = on_exit
        self._queue = conn.subscribe(work_id)
        # Only one reader of the queue at a time (a consumer, or pause draining for it).
        self._read_lock = asyncio.Lock()
        self._busy = False
        self._broken = False
        self._exited = False
        self._failure: BaseException | None = None
        # Bumped when a new inference starts or pause ends one: stale consumers stop reading.
        self._generation = 0
        # What the unit's users know of state the device keeps between inferences (a ctx model's KV cache:
        # backends/conversations.py). Opaque here, and kept on the unit so that every backend leasing it
        # sees the same; None for a unit just set up.
        self.context_state: object | None = None

    # ---- state ---------------------------------------------------------------------------------

    @property
    def busy(self) -> bool:
        return self._busy

    @property
    def broken(self) -> bool:
        return self._broken or self._conn.closed

    @property
    def exited(self) -> bool:
        return self._exited

    @property
    def streaming(self) -> bool:
        """Output is streamed ({delta, index, finish} messages) rather than one message."""
        return "stream" in str(self.setup.get("response_format", ""))

    @property
    def connection(self) -> Connection:
        return self._conn

    def mark_broken(self) -> None:
        """The owner knows the instance is in an unknown state (e.g. an image sent, its text not)."""
        self._broken = True

    def _check_usable(self) -> None:
        if self._exited:
            raise UnitBroken(f"{self.work_id} was exited")
        if self._conn.closed:
            self._broken = True
            raise ConnectionLost(f"{self.work_id}: its connection is closed")
        if self._broken or self._failure is not None:
            raise UnitBroken(f"{self.work_id} is broken; exit it")

    # ---- input ---------------------------------------------------------------------------------

    async def infer(self, data: Any, *, object: str) -> None:
        """Send one plain inference message. The device does not acknowledge it."""
        self._start_inference(object)
        await self._send(object, data)

    async def infer_chunks(self, deltas: list[str], *, object: str) -> None:
        """Send one input as `.stream` chunks {delta, index, finish}, index from 0, finish on the last."""
        if "stream" not in object:
            raise ValueError(f"chunked input needs a .stream object, got {object!r}")
        if not deltas:
            raise ValueError("no chunks to send")
        self._start_inference(object)
        last = len(deltas) - 1
        for index, delta in enumerate(deltas):
            await self._send(object, {"delta": delta, "index": index, "finish": index == last})

    async def infer_base64_stream(self, b64: str, *, object: str, chunk_chars: int = 4096) -> None:
        """Send ONE base64 string sliced on multiples of 4 characters (protocol §1.5).

        Each slice is itself valid base64, and the unit concatenates them before decoding.
        """
        step = chunk_chars - chunk_chars % 4
        if step < 4:
            raise ValueError(f"chunk_chars must be at least 4, got {chunk_chars}")
        text = "".join(b64.split())  # line-wrapped base64 would shift the slice boundaries
        chunks = [text[i : i + step] for i in range(0, len(text), step)] or [""]
        await self.infer_chunks(chunks, object=object)

    def discard_stale(self) -> None:
        """Drop anything queued while nothing is expected (call before feeding a chain's first unit)."""
        if not self._busy:
            self._drop_stale_output()

    def expect_output(self) -> None:
        """Output is coming without an inference from this handle: the unit is chained on the device
        (its setup `input` or a `link` names another instance, whose output it takes). Read it with
        `outputs()` as for an inference. What is already queued is kept: it may be the start of it."""
        self._check_usable()
        self._busy = True
        self._generation += 1

    async def link(self, source: str, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - the API takes explicit timeouts
        """Subscribe this instance to `source`'s output on the device (§4.2 `link`; -20 if it cannot)."""
        self._check_usable()
        await self._conn.request(self.work_id, "link", object="work_id", data=source, timeout=timeout)

    async def unlink(self, source: str, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - the API takes explicit timeouts
        self._check_usable()
        await self._conn.request(self.work_id, "unlink", object="work_id", data=source, timeout=timeout)

    def _start_inference(self, object: str) -> None:
        self._check_usable()
        if not self._busy:
            self._drop_stale_output()
        if "jpeg" in object:
            return  # a VLM image gets no reply; it is consumed by the next text (protocol §5.3)
        self._busy = True
        self._generation += 1

    def _drop_stale_output(self) -> None:
        """Nothing is in flight, so anything queued is left over (e.g. a late terminator)."""
        while not self._queue.empty():
            item = self._queue.get_nowait()
            if isinstance(item, BaseException):
                self._failure = item
                self._check_usable()
            log.debug("%s: dropping stale output %s", self.work_id, item)

    async def _send(self, object: str, data: Any) -> None:
        message = {"work_id": self.work_id, "action": "inference", "object": object, "data": data}
        try:
            await self._conn.send(message)
        except (ConnectionLost, DeviceTimeout):
            self._busy = False
            self._broken = True
            raise

    # ---- output --------------------------------------------------------------------------------

    async def _next_output(self, idle_timeout: float | None, *, silence_ends: bool = False) -> Reply:
        """The next message for this instance; maps errors and marks the handle broken when needed."""
        if self._failure is not None:
            raise self._failure
        while True:
            try:
                if self._queue.empty():
                    async with asyncio.timeout(idle_timeout):
                        item = await self._queue.get()
                else:  # already here (deltas come in bursts): no timer to arm and cancel
                    item = self._queue.get_nowait()
            except TimeoutError:
                if silence_ends:
                    self._busy = False  # a late message would be dropped as stale
                else:
                    self._broken = True
                raise DeviceTimeout(f"{self.work_id}: no output for {idle_timeout} s") from None
            if self._busy or not _is_unit_wide_error(item):
                break
            # A bare-unit inference error while we have nothing in flight belongs to another
            # instance of this unit: the device sends them to the last control request's
            # connection (protocol §2.4).
            log.debug("%s: ignoring %s, not ours", self.work_id, item)
        if isinstance(item, BaseException):
            self._failure = item
            self._broken = True
            raise item
        if item.code != 0:
            self._busy = False  # the device sends nothing more for this inference
            if item.code == InferencePushFalse.code:
                self._broken = True  # the instance no longer exists
            raise error_for_code(item.code, item.message, item.work_id, item.request_id)
        return item

    def _is_final(self, reply: Reply) -> bool:
        if not self.streaming:
            return True
        return isinstance(reply.data, dict) and bool(reply.data.get("finish"))

    async def outputs(
        self, *, idle_timeout: float, silence_ends: bool = False
    ) -> AsyncGenerator[Reply, None]:
        """Every output message of the current inference, up to and including its end.

        Stream mode ends with the message whose `data.finish` is true; non-stream mode yields one
        message (call again for the next, e.g. one per tts segment). Raises `DeviceTimeout` (and
        marks the unit broken) after `idle_timeout` seconds without a message, the mapped
        `DeviceError` on an error reply, `ConnectionLost` if the connection drops.

        `silence_ends=True` is for units whose silence is an answer (whisper sends nothing for an
        empty non-en/ja transcript, §5.5): the timeout still raises, but the unit stays usable.
        """
        generation = self._generation
        streaming = self.streaming  # fixed by the setup: looked up once, not per message
        finished = False
        try:
            while not finished:
                async with self._read_lock:
                    if generation != self._generation:
                        return  # pause or a newer inference ended this one
                    reply = await self._next_output(idle_timeout, silence_ends=silence_ends)
                    data = reply.data
                    finished = not streaming or (isinstance(data, dict) and bool(data.get("finish")))
                    if finished:
                        self._busy = False
                yield reply
        finally:
            if not finished:
                await self._recover(generation)

    async def generate(
        self, text: str, *, object: str = "llm.utf-8", idle_timeout: float = 30.0
    ) -> AsyncGenerator[str, None]:
        """llm/vlm: send `text`, then yield each non-empty delta (or the single non-stream string)."""
        if not text:
            raise ValueError("empty prompt: the llm ignores empty input and would never answer")
        if self._busy:
            await self._recover(self._generation)
        await self.infer(text, object=object)
        replies = self.outputs(idle_timeout=idle_timeout)
        try:
            async for reply in replies:
                piece = reply_text(reply)
                if piece:
                    yield piece
        finally:
            # Close the inner generator now (not at garbage collection) so its recovery runs here.
            await replies.aclose()

    async def _recover(self, generation: int) -> None:
        """Bring an abandoned generation to its end: pause it, or drain it on units without pause."""
        if generation != self._generation or not self._busy or self.broken:
            return
        try:
            if self.unit in PAUSABLE_UNITS:
                await self.pause(timeout=self.recover_timeout)
            else:
                async with asyncio.timeout(self.recover_timeout):
                    await self._drain_generation([])
                self._generation += 1
        except (StackFlowError, TimeoutError) as exc:
            log.warning("%s: could not recover an abandoned generation: %s", self.work_id, exc)
            self._broken = True
        except asyncio.CancelledError:
            self._broken = True
            raise

    async def _drain_generation(self, pieces: list[str]) -> None:
        """Read until the in-flight generation ends, collecting its text into `pieces`."""
        while self._busy:
            async with self._read_lock:
                if not self._busy:
                    break  # the consumer read the end itself
                try:
                    reply = await self._next_output(None)  # bounded by the caller's timeout
                except DeviceError:
                    if self._broken:
                        raise
                    break  # the generation ended with an inference error
                pieces.append(reply_text(reply))
                if self._is_final(reply):
                    self._busy = False

    # ---- control -------------------------------------------------------------------------------

    async def pause(self, *, timeout: float = 10.0) -> str:  # noqa: ASYNC109 - the API takes explicit timeouts
        """Abort the running generation (llm, vlm) and consume its ack AND terminator, in any order.

        Returns the text that arrived meanwhile. Afterwards the unit is idle and reusable.
        On whisper/asr this stops microphone capture; melotts/tts answer -18 (`NoUnitAction`).
        """
        self._check_usable()
        pieces: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                # The terminator may arrive before the ack: it waits in the queue meanwhile.
                await self._conn.request(self.work_id, "pause", timeout=timeout)
                if self.unit in PAUSABLE_UNITS:
                    await self._drain_generation(pieces)
        except TimeoutError as exc:
            self._broken = True
            if isinstance(exc, DeviceTimeout):
                raise
            raise DeviceTimeout(f"{self.work_id}: pause not completed within {timeout} s") from None
        except (ConnectionLost, UnitDoesNotExist):
            self._broken = True
            raise
        except asyncio.CancelledError:
            self._broken = True
            raise
        self._generation += 1
        return "".join(pieces)

    async def exit(self, *, timeout: float = 10.0) -> None:  # noqa: ASYNC109 - the API takes explicit timeouts
        """Exit the instance on the device and close its connection. Idempotent.

        If this handle's connection is dead, the exit goes through a fresh connection. An instance
        the device no longer knows (-6) counts as exited.
        """
        if self._exited:
            return
        try:
            if self._conn.closed:
                await self._exit_elsewhere(timeout)
            else:
                try:
                    await self._conn.request(self.work_id, "exit", timeout=timeout)
                except ConnectionLost:
                    await self._exit_elsewhere(timeout)
        except UnitDoesNotExist:
            pass  # already gone: device reset, or exited by someone else
        except BaseException:
            self._broken = True
            await self._conn.close()
            raise
        self._exited = True
        self._busy = False
        self._generation += 1
        await self._conn.close()
        if self._on_exit is not None:
            self._on_exit(self)

    async def _exit_elsewhere(self, timeout: float) -> None:  # noqa: ASYNC109 - the API takes explicit timeouts
        conn = await Connection.open(self._host, self._port, connect_timeout=timeout)
        try:
            await conn.request(self.work_id, "exit", timeout=timeout)
        finally:
            await conn.close()

    async def close(self) -> None:
        """Alias of `exit()`."""
        await self.exit()

    async def __aenter__(self) -> Unit:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.exit()

    def __repr__(self) -> str:
        states = (("busy", self._busy), ("broken", self.broken), ("exited", self._exited))
        flags = [name for name, on in states if on]
        return f"<Unit {self.work_id} {' '.join(flags) or 'idle'}>"
