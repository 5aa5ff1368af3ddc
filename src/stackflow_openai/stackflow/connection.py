"""One asyncio TCP connection to a StackFlow device, with request/response correlation.

A background reader task feeds every byte into a `ReplyDecoder` and routes each reply:

- control replies go to the waiter of their `request_id` (pipelining: many requests may be in
  flight at once and the device answers them in any order, protocol §1.4);
- unit output goes to the subscribers of its `work_id` (it carries the request_id of the latest
  *inference*, which never has a waiter);
- inference-time errors (-11, -23, -25) carry the BARE unit name and the request_id of some other
  control request (protocol §2.4), so they are never matched by request_id: they go to every
  subscriber of that unit on this connection;
- the daemon's framing errors (`-1 reace reset`, `-2` with request_id "0") cannot be attributed to a
  request, so they fail every pending waiter and every subscriber.

When the socket closes or breaks, every waiter and subscriber gets `ConnectionLost`: nothing waits
on a dead connection.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import secrets
from collections import deque
from collections.abc import Mapping
from typing import Any, TypeAlias

from .codec import Reply, ReplyDecoder, encode_request
from .errors import ConnectionLost, DeviceTimeout, StackFlowError, error_for_code

__all__ = ["INFERENCE_ERROR_CODES", "Connection", "Subscription"]

log = logging.getLogger(__name__)

# Errors raised while a unit handles an inference; they carry the bare unit name (protocol §2.4).
INFERENCE_ERROR_CODES = frozenset({-11, -23, -25})
_READ_SIZE = 1 << 16
_CLOSE_TIMEOUT = 2.0
_SEND_TIMEOUT = 30.0

Subscription: TypeAlias = asyncio.Queue[Reply | BaseException]


class Connection:
    """One TCP connection: a reader task, pending control requests and output subscribers."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, *, peer: str = "") -> None:
        self.peer = peer
        self._reader = reader
        self._writer = writer
        self._decoder = ReplyDecoder()
        # A random prefix per connection: unit output carries the request_id of whichever
        # connection last sent it an inference, which must never match one of our waiters.
        self._id_prefix = secrets.token_hex(3)
        self._ids = itertools.count(1)
        self._pending: dict[str, asyncio.Future[Reply]] = {}
        self._subscribers: dict[str, list[Subscription]] = {}
        self._failure: ConnectionLost | None = None
        # Replies nobody waited for (late answers, stolen output): kept for diagnostics only.
        self.unrouted: deque[Reply] = deque(maxlen=64)
        self._reader_task = asyncio.get_running_loop().create_task(
            self._read_loop(), name=f"stackflow-reader {peer}"
        )

    @classmethod
    async def open(cls, host: str, port: int, *, connect_timeout: float = 5.0) -> Connection:
        peer = f"{host}:{port}"
        try:
            async with asyncio.timeout(connect_timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError as exc:  # before OSError: TimeoutError is an OSError too
            raise DeviceTimeout(f"connecting to {peer} took longer than {connect_timeout} s") from exc
        except OSError as exc:
            raise ConnectionLost(f"cannot connect to {peer}: {exc}") from exc
        return cls(reader, writer, peer=peer)

    @property
    def closed(self) -> bool:
        return self._failure is not None

    def new_request_id(self) -> str:
        """A request_id unique on this connection; alphanumeric because units find keys by substring."""
        return f"{self._id_prefix}{next(self._ids)}"

    # ---- sending -------------------------------------------------------------------------------

    async def request(
        self,
        work_id: str,
        action: str,
        *,
        object: str | None = None,
        data: Any = None,
        timeout: float,  # noqa: ASYNC109 - the API takes explicit timeouts
    ) -> Reply:
        """Send one control request and wait for the reply with its request_id.

        Raises the mapped `DeviceError` for a non-zero code, `DeviceTimeout` after `timeout`
        seconds, `ConnectionLost` if the connection closes first.
        """
        request_id = self.new_request_id()
        message: dict[str, Any] = {"request_id": request_id, "work_id": work_id, "action": action}
        if object is not None:
            message["object"] = object
        if data is not None:
            message["data"] = data
        self._raise_if_closed()
        waiter: asyncio.Future[Reply] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = waiter
        try:
            async with asyncio.timeout(timeout):
                await self._write(encode_request(message))
                reply = await waiter
        except TimeoutError as exc:
            if isinstance(exc, StackFlowError):
                raise
            raise DeviceTimeout(f"{work_id}.{action}: no reply within {timeout} s ({self.peer})") from None
        finally:
            self._pending.pop(request_id, None)
        if reply.code != 0:
            raise error_for_code(reply.code, reply.message, reply.work_id, reply.request_id)
        return reply

    async def send(self, message: Mapping[str, Any], *, timeout: float = _SEND_TIMEOUT) -> str:  # noqa: ASYNC109 - the API takes explicit timeouts
        """Fire and forget (inference has no acknowledgement). Fills in a request_id if missing.

        Returns the request_id used.
        """
        full = dict(message)
        if "request_id" not in full:
            full = {"request_id": self.new_request_id(), **full}
        await self.send_raw(encode_request(full), timeout=timeout)
        return str(full["request_id"])

    async def send_raw(self, data: bytes, *, timeout: float = _SEND_TIMEOUT) -> None:  # noqa: ASYNC109 - the API takes explicit timeouts
        """Write bytes exactly as given. For diagnostics and tests: requests should use `send`."""
        try:
            async with asyncio.timeout(timeout):
                await self._write(data)
        except TimeoutError as exc:
            if isinstance(exc, StackFlowError):
                raise
            raise DeviceTimeout(f"writing to {self.peer} blocked for {timeout} s") from None

    async def _write(self, data: bytes) -> None:
        self._raise_if_closed()
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (OSError, RuntimeError) as exc:  # RuntimeError: transport already closing
            lost = ConnectionLost(f"write to {self.peer} failed: {exc}")
            self._shutdown(lost)
            raise lost from exc

    def _raise_if_closed(self) -> None:
        if self._failure is not None:
            raise ConnectionLost(str(self._failure))

    # ---- receiving -----------------------------------------------------------------------------

    def subscribe(self, work_id: str) -> Subscription:
        """A queue receiving every reply routed to `work_id` (unit output and its errors).

        Connection-level failures arrive as exception instances in the queue.
        """
        queue: Subscription = asyncio.Queue()
        if self._failure is not None:
            queue.put_nowait(self._failure)
        else:
            self._subscribers.setdefault(work_id, []).append(queue)
        return queue

    def unsubscribe(self, work_id: str, queue: Subscription) -> None:
        queues = self._subscribers.get(work_id, [])
        if queue in queues:
            queues.remove(queue)
        if not queues:
            self._subscribers.pop(work_id, None)

    async def _read_loop(self) -> None:
        failure = ConnectionLost(f"connection to {self.peer} closed")
        try:
            while True:
                chunk = await self._reader.read(_READ_SIZE)
                if not chunk:
                    failure = ConnectionLost(f"device {self.peer} closed the connection")
                    break
                for reply in self._decoder.feed(chunk):
                    self._route(reply)
        except OSError as exc:
            failure = ConnectionLost(f"connection to {self.peer} broke: {exc}")
        finally:
            self._shutdown(failure)

    def _route(self, reply: Reply) -> None:
        if reply.code == -1 or (reply.code == -2 and reply.request_id == "0"):
            # The daemon rejected a frame it cannot attribute: whatever was in flight may be lost.
            error = error_for_code(reply.code, reply.message, reply.work_id, reply.request_id)
            log.warning("%s: %s; failing everything in flight", self.peer, error)
            self._fail_waiters(error)
            for queues in self._subscribers.values():
                for queue in queues:
                    queue.put_nowait(error)
            return
        if reply.code in INFERENCE_ERROR_CODES and "." not in reply.work_id:
            unit = reply.work_id
            self._deliver(
                reply, [q for wid, qs in self._subscribers.items() if wid.split(".")[0] == unit for q in qs]
            )
            return
        waiter = self._pending.pop(reply.request_id, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(reply)
            return
        self._deliver(reply, self._subscribers.get(reply.work_id, []))

    def _deliver(self, reply: Reply, queues: list[Subscription]) -> None:
        if not queues:
            log.debug("%s: unrouted reply %s", self.peer, reply)
            self.unrouted.append(reply)
        for queue in queues:
            queue.put_nowait(reply)

    def _fail_waiters(self, error: BaseException) -> None:
        pending, self._pending = self._pending, {}
        for waiter in pending.values():
            if not waiter.done():
                waiter.set_exception(error)
                # A waiter whose request already timed out would log "never retrieved".
                waiter.exception()

    def _shutdown(self, failure: ConnectionLost) -> None:
        if self._failure is not None:
            return
        self._failure = failure
        self._fail_waiters(failure)
        subscribers, self._subscribers = self._subscribers, {}
        for queues in subscribers.values():
            for queue in queues:
                queue.put_nowait(failure)
        self._writer.close()

    # ---- closing -------------------------------------------------------------------------------

    def abort(self, reason: str) -> None:
        """Fail everything waiting on this connection now with `ConnectionLost(reason)`, and close it
        (the device was found hung: its silence must not hold callers for their own timeouts)."""
        self._shutdown(ConnectionLost(reason))
        self._reader_task.cancel()

    async def close(self) -> None:
        """Close the socket; everything still waiting gets `ConnectionLost`. Idempotent."""
        self._shutdown(ConnectionLost(f"connection to {self.peer} closed by the client"))
        if self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader_task
        with contextlib.suppress(OSError, TimeoutError):
            async with asyncio.timeout(_CLOSE_TIMEOUT):
                await self._writer.wait_closed()

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{len(self._pending)} pending"
        return f"<Connection {self.peer} {state}>"
