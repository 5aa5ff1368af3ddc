"""One log line and the HTTP metrics per request, and the request id (`X-Request-Id`).

The line (logger `stackflow_openai.access`, level INFO) is logfmt:

    request_id=4f1c… method=POST path=/v1/chat/completions status=200 model=qwen2.5-0.5B-p256-ax630c
    device=kit duration_ms=812 ttfb_ms=640 ttft_ms=655

Prompts, outputs, audio and headers (API keys) are never logged. With DEBUG enabled on that logger,
the first 2 KB of JSON request bodies are logged too (a separate line, same request id); audio
uploads only by size.
"""

from __future__ import annotations

import json
import logging
import re
import secrets
import time

from starlette.types import Message, Receive, Scope, Send

from .context import RequestInfo, current_request
from .metrics import Metrics

__all__ = ["REQUEST_ID_HEADER", "RequestObservation"]

log = logging.getLogger("stackflow_openai.access")
REQUEST_ID_HEADER = "X-Request-Id"
_REQUEST_ID_NAME = REQUEST_ID_HEADER.lower().encode()
# A caller's id is kept only if it cannot forge log lines or headers.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_NEEDS_QUOTES = re.compile(r'[ "=\n]')
_DEBUG_BODY = 2048
_ERROR_BODY = 64 * 1024


class RequestObservation:
    """One HTTP request seen by the operations middleware (app.py): its id (set as the current
    `RequestInfo`, returned as a header), its access log line and its request metrics.

        observation = RequestObservation(scope, metrics)
        try:
            ... serve with `observation.send` (and `observation.receive(receive)`) ...
        finally:
            observation.finish()
    """

    __slots__ = (
        "_body",
        "_error",
        "_json_error",
        "_metrics",
        "_scope",
        "_send",
        "_started",
        "_token",
        "info",
        "started",
        "status",
        "ttfb",
    )

    def __init__(self, scope: Scope, send: Send, metrics: Metrics | None) -> None:
        self._scope = scope
        self._send = send
        self._metrics = metrics
        self.info = RequestInfo(_request_id(scope))
        self._token = current_request.set(self.info)
        self._started = time.monotonic()
        self.started = False  # the response has started: an error can only close the connection now
        self.status = 500
        self.ttfb: float | None = None
        self._json_error = False  # the response is a JSON error: keep its body for the error code
        self._error = bytearray()
        self._body: bytearray | None = bytearray() if log.isEnabledFor(logging.DEBUG) else None
        if metrics is not None:
            metrics.in_flight.inc()

    async def send(self, message: Message) -> None:
        if message["type"] == "http.response.body":
            if self.ttfb is None and message.get("body"):
                self.ttfb = time.monotonic() - self._started
            if self._json_error and len(self._error) < _ERROR_BODY:
                self._error.extend(message.get("body", b""))
        elif message["type"] == "http.response.start":
            self.started = True
            self.status = message["status"]
            headers = list(message.get("headers", []))
            headers.append((_REQUEST_ID_NAME, self.info.request_id.encode()))
            message = {**message, "headers": headers}
            if self.status >= 400:
                ctype = dict(headers).get(b"content-type", b"")
                self._json_error = ctype.startswith(b"application/json")
        await self._send(message)

    def receive(self, receive: Receive) -> Receive:
        """`receive` that keeps the start of the body for the debug log (when DEBUG is on)."""
        body = self._body
        if body is None:
            return receive

        async def receive_logged() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < _DEBUG_BODY:
                body.extend(message.get("body", b"")[: _DEBUG_BODY - len(body)])
            return message

        return receive_logged

    def finish(self) -> None:
        """The request is over (answered, failed or abandoned): log it and count it."""
        elapsed = time.monotonic() - self._started
        current_request.reset(self._token)
        scope, info, metrics = self._scope, self.info, self._metrics
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        status = int(self.status)
        code = _error_code(bytes(self._error)) if self._json_error else None
        if metrics is not None:
            metrics.in_flight.dec()
            metrics.request(scope["method"], route, status, elapsed, code)
        if log.isEnabledFor(logging.INFO):
            fields = [
                ("request_id", info.request_id),
                ("method", scope["method"]),
                ("path", scope.get("path", "")),
                ("status", status),
                ("model", info.model or "-"),
                ("device", info.device or "-"),
                ("duration_ms", round(elapsed * 1000)),
            ]
            if self.ttfb is not None:
                fields.append(("ttfb_ms", round(self.ttfb * 1000)))
            if info.ttft is not None:
                fields.append(("ttft_ms", round(info.ttft * 1000)))
            if code:
                fields.append(("error", code))
            log.info(" ".join(f"{k}={_quote(v)}" for k, v in fields))
        if self._body:
            _log_body(scope, info, bytes(self._body))


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _SAFE_ID.match(text):
                return text
            break
    return secrets.token_hex(16)  # as uuid4().hex, without building the object


def _error_code(raw: bytes) -> str | None:
    try:
        code: object = json.loads(raw)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return None if code is None else str(code)


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or _NEEDS_QUOTES.search(text)) else text


def _log_body(scope: Scope, info: RequestInfo, body: bytes) -> None:
    ctype = dict(scope.get("headers", ())).get(b"content-type", b"")
    if not body:
        return
    if ctype.startswith(b"application/json"):
        log.debug("request_id=%s body=%s", info.request_id, body.decode("utf-8", "replace"))
    else:  # audio uploads: never their content
        log.debug("request_id=%s body_bytes>=%d content_type=%s", info.request_id, len(body), ctype.decode())
