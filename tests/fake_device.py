"""A scripted fake StackFlow device for client tests.

It frames input exactly like llm-sys (brace depth, ignoring strings, `\\`-predecessor exception,
protocol §1.2) and never answers on its own: each test pulls the requests it expects with `next()`
and writes whatever replies, in whatever order and byte splits, it wants. Simple standing answers
(e.g. a task list) can be installed with `respond()`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from stackflow_openai.stackflow.codec import dump_reply

__all__ = ["REACE_RESET_LINE", "DaemonFramer", "FakeDevice", "FakeLink", "Request", "reply_dict"]

# The daemon's hand-built line for a stray `}`: no newline, no object or data (protocol §1.2).
REACE_RESET_LINE = (
    b'{"request_id": "0","work_id": "sys","created": 1736400000,"error":{"code":-1, "message":"reace reset"}}'
)
_LBRACE, _RBRACE, _BACKSLASH = ord("{"), ord("}"), ord("\\")


class DaemonFramer:
    """llm-sys `select_json_str`: count braces byte by byte, blind to JSON strings."""

    def __init__(self) -> None:
        self.depth = 0
        self.resets = 0  # stray `}` seen (the daemon answers `reace reset`)
        self._buf = bytearray()
        self._prev = 0

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        for byte in data:
            escaped = self._prev == _BACKSLASH
            self._prev = byte
            if byte == _LBRACE and not escaped:
                self.depth += 1
            elif byte == _RBRACE and not escaped:
                self.depth -= 1
                if self.depth < 0:  # stray `}`: clear and drop the rest of this read
                    self.depth = 0
                    self._buf.clear()
                    self.resets += 1
                    return frames
                self._buf.append(byte)
                if self.depth == 0:
                    if self._buf.startswith(b"{"):
                        frames.append(bytes(self._buf))
                    self._buf.clear()
                continue
            if self.depth > 0:
                self._buf.append(byte)
        return frames

    @property
    def pending(self) -> bytes:
        """Bytes of an unclosed frame (the daemon would wait for more forever)."""
        return bytes(self._buf)


def reply_dict(
    request_id: str,
    work_id: str,
    *,
    object: str = "None",
    data: Any = "None",
    code: int = 0,
    message: str = "",
) -> dict[str, Any]:
    """A reply shaped like the device's (§2.2)."""
    return {
        "created": int(time.time()),
        "data": data,
        "error": {"code": code, "message": message},
        "object": object,
        "request_id": request_id,
        "work_id": work_id,
    }


class FakeLink:
    """One accepted client connection."""

    def __init__(
        self, device: FakeDevice, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        self.device = device
        self.reader = reader
        self.writer = writer
        self.framer = DaemonFramer()

    async def write(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def send(self, *replies: dict[str, Any]) -> None:
        await self.write(b"".join(dump_reply(r) for r in replies))

    async def close(self) -> None:
        """Drop the connection, like the device does on `reset`."""
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


@dataclass
class Request:
    link: FakeLink
    msg: dict[str, Any]
    raw: bytes = field(repr=False)

    @property
    def request_id(self) -> str:
        return str(self.msg.get("request_id"))

    @property
    def work_id(self) -> str:
        return str(self.msg.get("work_id"))

    @property
    def action(self) -> str:
        return str(self.msg.get("action"))

    def reply(
        self,
        *,
        work_id: str | None = None,
        object: str = "None",
        data: Any = "None",
        code: int = 0,
        message: str = "",
    ) -> dict[str, Any]:
        return reply_dict(
            self.request_id,
            self.work_id if work_id is None else work_id,
            object=object,
            data=data,
            code=code,
            message=message,
        )

    async def ok(self, **kwargs: Any) -> None:
        await self.link.send(self.reply(**kwargs))

    async def error(self, code: int, message: str, *, work_id: str | None = None) -> None:
        await self.link.send(self.reply(work_id=work_id, code=code, message=message))


Responder = Callable[[Request], Awaitable[bool]]


class FakeDevice:
    """A TCP server on 127.0.0.1 whose replies the test scripts."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[Request] = asyncio.Queue()
        self.log: list[Request] = []
        self.links: list[FakeLink] = []
        self.garbage: list[bytes] = []  # frames that were not valid JSON
        self._responders: list[Responder] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> FakeDevice:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return self

    @property
    def port(self) -> int:
        assert self._server is not None
        return int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for link in list(self.links):
            await link.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks, timeout=2)

    def respond(self, responder: Responder) -> None:
        """Install a standing answer: `responder(req)` returns True when it handled the request."""
        self._responders.append(responder)

    def serve_tasklist(self, unit: str, live: list[str]) -> None:
        """Answer `taskinfo` on the bare unit name with the (mutable) list `live`."""

        async def answer(req: Request) -> bool:
            if req.work_id == unit and req.action == "taskinfo":
                await req.ok(object=f"{unit}.tasklist", data=list(live))
                return True
            return False

        self.respond(answer)

    def serve_exit(self, live: list[str]) -> None:
        """Answer `exit` on instances: ack and remove from `live`, or -6 if unknown."""

        async def answer(req: Request) -> bool:
            if req.action != "exit" or "." not in req.work_id:
                return False
            if req.work_id in live:
                live.remove(req.work_id)
                await req.ok()
            else:
                await req.error(-6, "Unit Does Not Exist")
            return True

        self.respond(answer)

    async def next(self, action: str | None = None, *, timeout: float = 2.0) -> Request:  # noqa: ASYNC109
        """The next request no standing responder handled (fails the test after `timeout`)."""
        async with asyncio.timeout(timeout):
            req = await self.requests.get()
        if action is not None:
            assert req.action == action, f"expected {action!r}, got {req.msg}"
        return req

    def link(self, index: int = -1) -> FakeLink:
        return self.links[index]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        link = FakeLink(self, reader, writer)
        self.links.append(link)
        try:
            while data := await reader.read(65536):
                for frame in link.framer.feed(data):
                    await self._dispatch(link, frame)
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()

    async def _dispatch(self, link: FakeLink, frame: bytes) -> None:
        try:
            msg = json.loads(frame)
        except ValueError:
            self.garbage.append(frame)
            return
        req = Request(link, msg, frame)
        self.log.append(req)
        for responder in self._responders:
            if await responder(req):
                return
        self.requests.put_nowait(req)
