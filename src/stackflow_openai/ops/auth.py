"""API keys: `Authorization: Bearer KEY` on every route once keys are configured.

The playground's page and files (GET / and /playground/...) are always open: a browser loads them before
the user could type a key, and they hold no data; the page then sends the key on its API calls.
/health, /ready and /metrics stay open unless `auth.protect_health` / `auth.protect_metrics` say
otherwise, so that load balancers and Prometheus need no key. Keys are compared in constant time
(`hmac.compare_digest`, against every key, without stopping at a match) and never logged or echoed.
Failures are 401 in OpenAI's shape: type `invalid_request_error`, code `invalid_api_key`.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from starlette.types import Scope

from stackflow_openai.errors import APIError

__all__ = ["ApiKeyAuth"]

_HEALTH_PATHS = ("/health", "/ready")
_METRICS_PATHS = ("/metrics",)
_PLAYGROUND_FILES = "/playground/"
_MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header "
    "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_WRONG = "Incorrect API key provided."


class ApiKeyAuth:
    """The API key check of the operations middleware (app.py), which calls `refusal` per request."""

    def __init__(
        self,
        keys: Sequence[str],
        *,
        protect_health: bool = False,
        protect_metrics: bool = False,
    ) -> None:
        self._keys = [k.encode("utf-8") for k in keys if k]
        open_paths: list[str] = []
        if not protect_health:
            open_paths += _HEALTH_PATHS
        if not protect_metrics:
            open_paths += _METRICS_PATHS
        self._open = frozenset(open_paths)

    def refusal(self, scope: Scope) -> APIError | None:
        """The 401 for a request without a valid key, or None when it may pass."""
        if not self._keys or self._is_open(scope):
            return None
        token = _bearer(scope)
        if token is not None and self._valid(token):
            return None
        message = _MISSING if token is None else _WRONG
        return APIError(
            message, code="invalid_api_key", status_code=401, headers={"WWW-Authenticate": "Bearer"}
        )

    def allows_websocket(self, scope: Scope) -> bool:
        """A WebSocket handshake carries its key as `Authorization: Bearer KEY`, or (browsers cannot set
        headers on a WebSocket) as the subprotocol `openai-insecure-api-key.KEY`, as OpenAI accepts it."""
        if not self._keys:
            return True
        token = _bearer(scope)
        if token is None:
            token = _subprotocol_key(scope)
        return token is not None and self._valid(token)

    def _is_open(self, scope: Scope) -> bool:
        # CORS preflights carry no credentials; no route answers OPTIONS with data.
        if scope.get("method") == "OPTIONS":
            return True
        path = scope.get("path", "")
        if scope.get("method") in ("GET", "HEAD") and (path == "/" or path.startswith(_PLAYGROUND_FILES)):
            return True
        return path.rstrip("/") in self._open

    def _valid(self, token: bytes) -> bool:
        ok = False
        for key in self._keys:
            ok |= hmac.compare_digest(token, key)
        return ok


def _bearer(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = bytes(value).partition(b" ")
            token = token.strip()
            if scheme.lower() == b"bearer" and token:
                return token
            return None
    return None


_KEY_PROTOCOL = "openai-insecure-api-key."


def _subprotocol_key(scope: Scope) -> bytes | None:
    for protocol in scope.get("subprotocols", ()):
        if protocol.startswith(_KEY_PROTOCOL) and len(protocol) > len(_KEY_PROTOCOL):
            return str(protocol)[len(_KEY_PROTOCOL) :].encode("utf-8")
    return None
