"""HTTP connection guards for uvicorn: a header deadline, a cap on open connections, quiet logs.

uvicorn closes an idle keep-alive connection (`timeout_keep_alive`), but a connection that never
completes a request's headers (slowloris: silent, or a byte every few seconds) is kept forever, and
uvicorn accepts connections until the process runs out of file descriptors, after which the accept
loop logs a traceback per attempt. `guarded_protocol()` returns uvicorn's httptools protocol with:

- a header deadline: from the connection's first byte (or its opening) to the end of the request's
  headers, `header_timeout` seconds in all, however slowly the bytes come; a connection that misses it
  is closed (with a 408 when part of a request arrived);
- a connection cap: beyond `max_connections` open connections, a new one gets an immediate 503 in
  OpenAI's error shape and is closed, so descriptors stay available for the requests being served.

`RepeatFilter` rate-limits identical log records (the accept loop's `EMFILE` traceback, a device error
per request): the first passes, repeats within the window are counted and reported with the next one.

docs/decisions.md ("HTTP server") says why this and not another server; docs/performance.md measures it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from stackflow_openai.errors import error_body, error_json

__all__ = ["RepeatFilter", "guarded_protocol"]

log = logging.getLogger(__name__)
# Time a refused client gets to read its 503 before the socket is closed (closing a socket with unread
# input sends a reset, which can destroy the answer before the client reads it).
_REFUSED_LINGER = 1.0


def _response(status: bytes, message: str, code: str, error_type: str) -> bytes:
    payload = error_json(error_body(message, error_type, None, code))
    head = (
        b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\nconnection: close\r\n"
        b"content-length: " + str(len(payload)).encode() + b"\r\n"
    )
    if status.startswith(b"503"):
        head += b"retry-after: 1\r\n"
    return head + b"\r\n" + payload


_BUSY = _response(
    b"503 Service Unavailable",
    "The server has too many open connections; retry shortly.",
    "too_many_connections",
    "server_error",
)
_TIMEOUT = _response(
    b"408 Request Timeout",
    "The request's headers did not arrive in time.",
    "request_timeout",
    "invalid_request_error",
)


class _GuardedHttpTools(HttpToolsProtocol):
    """uvicorn's httptools protocol with the guards above (set by `guarded_protocol`)."""

    header_timeout: float = 10.0
    max_connections: int = 0  # 0: no cap

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._header_timer: asyncio.TimerHandle | None = None
        self._refused = False
        super().connection_made(transport)
        if self.max_connections and len(self.connections) > self.max_connections:
            self._refuse()
            return
        self._arm_header_timer()  # a connection that never sends a byte is closed too

    def _refuse(self) -> None:
        self._refused = True
        log.warning("connection refused: %d open connections (server.max_connections)", self.max_connections)
        self.transport.write(_BUSY)
        if self.transport.can_write_eof():
            self.transport.write_eof()  # the client reads the 503 and an end of stream, not a reset
        self.loop.call_later(_REFUSED_LINGER, self.transport.close)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # the answer is already out; the request is not read
        super().data_received(data)

    def eof_received(self) -> bool | None:  # type: ignore[override]
        return None  # close on the client's EOF (the refused connection's linger included)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._header_timer is None:  # the next request of a keep-alive connection starts its own clock
            self._arm_header_timer()

    def on_headers_complete(self) -> None:
        self._cancel_header_timer()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _arm_header_timer(self) -> None:
        self._header_timer = self.loop.call_later(self.header_timeout, self._header_timeout_expired)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout_expired(self) -> None:
        self._header_timer = None
        if self.transport.is_closing():
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # A pipelined request is arriving while the previous response is still being sent: the
            # connection is working; give the next headers their own full deadline.
            self._arm_header_timer()
            return
        if self.headers is not None:  # part of a request arrived: say why the connection ends
            self.transport.write(_TIMEOUT)
        self.transport.close()


def guarded_protocol(*, header_timeout: float, max_connections: int) -> type[HttpToolsProtocol]:
    """uvicorn's httptools protocol class with these guards, for `uvicorn.Config(http=...)`."""
    return type(
        "GuardedHttpToolsProtocol",
        (_GuardedHttpTools,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )


class RepeatFilter(logging.Filter):
    """Lets the first of identical records through, then one per `window` seconds with a count of the
    ones held back. Identical: same logger, level, message text and exception type."""

    def __init__(self, window: float = 10.0, *, clock: Any = time.monotonic) -> None:
        super().__init__()
        self.window = window
        self._clock = clock
        self._seen: dict[tuple[str, int, str, str], tuple[float, int]] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[0].__name__ if record.exc_info and record.exc_info[0] else ""
        key = (record.name, record.levelno, record.getMessage(), exc)
        now = self._clock()
        last = self._seen.get(key)
        if last is not None and now - last[0] < self.window:
            self._seen[key] = (last[0], last[1] + 1)
            return False
        if last is not None and last[1]:
            record.msg = f"{record.getMessage()} ({last[1]} identical messages suppressed)"
            record.args = None
        if len(self._seen) > 1000:  # bounded: a flood of distinct messages must not grow it forever
            self._seen.clear()
        self._seen[key] = (now, 0)
        return True
