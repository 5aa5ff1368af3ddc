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
import time
import uuid
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .context import RequestInfo, current_request
from .metrics import Metrics

__all__ = ["REQUEST_ID_HEADER", "ObserveRequests"]

log = logging.getLogger("stackflow_openai.access")
REQUEST_ID_HEADER = "X-Request-Id"
# A caller's id is kept only if it cannot forge log lines or headers.
_SAFE_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")
_DEBUG_BODY = 2048
_ERROR_BODY = 64 * 1024


class ObserveRequests:
    """Pure ASGI middleware: request id, access log line, request metrics."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        info = RequestInfo(_request_id(scope))
        token = current_request.set(info)
        started = time.monotonic()
        state: dict[str, Any] = {"status": 500, "ttfb": None, "json": False, "error": bytearray()}
        debug = log.isEnabledFor(logging.DEBUG)
        body = bytearray()

        async def receive_logged() -> Message:
            message = await receive()
            if message["type"] == "http.request" and len(body) < _DEBUG_BODY:
                body.extend(message.get("body", b"")[: _DEBUG_BODY - len(body)])
            return message

        async def send_observed(message: Message) -> None:
            if message["type"] == "http.response.start":
                state["status"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((REQUEST_ID_HEADER.lower().encode(), info.request_id.encode()))
                message = {**message, "headers": headers}
                ctype = dict(headers).get(b"content-type", b"")
                state["json"] = message["status"] >= 400 and ctype.startswith(b"application/json")
            elif message["type"] == "http.response.body":
                if state["ttfb"] is None and message.get("body"):
                    state["ttfb"] = time.monotonic() - started
                if state["json"] and len(state["error"]) < _ERROR_BODY:
                    state["error"].extend(message.get("body", b""))
            await send(message)

        if self.metrics is not None:
            self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive_logged if debug else receive, send_observed)
        finally:
            current_request.reset(token)
            if self.metrics is not None:
                self.metrics.in_flight.dec()
            self._finish(scope, info, state, time.monotonic() - started)
            if debug:
                _log_body(scope, info, bytes(body))

    def _finish(self, scope: Scope, info: RequestInfo, state: dict[str, Any], elapsed: float) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"
        status = int(state["status"])
        code = _error_code(bytes(state["error"])) if state["json"] else None
        if self.metrics is not None:
            self.metrics.requests.labels(scope["method"], route, str(status)).inc()
            self.metrics.latency.labels(route).observe(elapsed)
            if status >= 400:
                self.metrics.errors.labels(code or f"http_{status}", str(status)).inc()
        fields = [
            ("request_id", info.request_id),
            ("method", scope["method"]),
            ("path", scope.get("path", "")),
            ("status", status),
            ("model", info.model or "-"),
            ("device", info.device or "-"),
            ("duration_ms", round(elapsed * 1000)),
        ]
        if state["ttfb"] is not None:
            fields.append(("ttfb_ms", round(state["ttfb"] * 1000)))
        if info.ttft is not None:
            fields.append(("ttft_ms", round(info.ttft * 1000)))
        if code:
            fields.append(("error", code))
        log.info(" ".join(f"{k}={_quote(v)}" for k, v in fields))


def _request_id(scope: Scope) -> str:
    for name, value in scope.get("headers", ()):
        if name == b"x-request-id":
            text = bytes(value).decode("latin-1")
            if _SAFE_ID.match(text):
                return text
            break
    return uuid.uuid4().hex


def _error_code(raw: bytes) -> str | None:
    try:
        code: object = json.loads(raw)["error"]["code"]
    except (ValueError, KeyError, TypeError):
        return None
    return None if code is None else str(code)


def _quote(value: object) -> str:
    text = str(value)
    return json.dumps(text) if (not text or any(c in text for c in ' "=\n')) else text


def _log_body(scope: Scope, info: RequestInfo, body: bytes) -> None:
    ctype = dict(scope.get("headers", ())).get(b"content-type", b"")
    if not body:
        return
    if ctype.startswith(b"application/json"):
        log.debug("request_id=%s body=%s", info.request_id, body.decode("utf-8", "replace"))
    else:  # audio uploads: never their content
        log.debug("request_id=%s body_bytes>=%d content_type=%s", info.request_id, len(body), ctype.decode())
