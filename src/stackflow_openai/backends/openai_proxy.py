"""Forward a model to an upstream OpenAI-compatible server (a bigger machine, a serving cluster)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from .base import BackendUnavailable, ProxyResponse

__all__ = ["OpenAIProxyBackend"]

# Hop-by-hop and length headers must not be copied: the body is re-chunked on the way through.
_DROP_HEADERS = {"content-length", "transfer-encoding", "connection", "keep-alive", "content-encoding"}


class OpenAIProxyBackend:
    def __init__(
        self,
        base_url: str,
        *,
        upstream_model: str,
        api_key: str | None = None,
        timeout: float = 120.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self.upstream_model = upstream_model
        self._client = httpx.AsyncClient(
            headers=headers, timeout=httpx.Timeout(timeout, connect=10.0), transport=transport
        )

    async def forward(self, path: str, body: dict[str, Any]) -> ProxyResponse:
        payload = dict(body, model=self.upstream_model)
        request = self._client.build_request("POST", f"{self.base_url}{path}", json=payload)
        try:
            response = await self._client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise BackendUnavailable(f"upstream {self.base_url} is unreachable: {exc}") from exc
        headers = {k: v for k, v in response.headers.items() if k.lower() not in _DROP_HEADERS}
        if response.status_code >= 400:
            raw = await response.aread()
            await response.aclose()
            return ProxyResponse(
                response.status_code,
                {"content-type": "application/json"},
                _once(_upstream_error(response.status_code, raw)),
            )
        return ProxyResponse(response.status_code, headers, _relay(response))

    async def aclose(self) -> None:
        await self._client.aclose()


async def _relay(response: httpx.Response) -> AsyncIterator[bytes]:
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    finally:
        await response.aclose()


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _upstream_error(status: int, raw: bytes) -> bytes:
    """Keep an upstream error that is already in OpenAI's shape; wrap anything else in it."""
    try:
        parsed = json.loads(raw)
        if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
            return raw
    except ValueError:
        pass
    text = raw.decode("utf-8", "replace")[:500]
    error = {
        "message": f"upstream server answered {status}: {text}",
        "type": "upstream_error",
        "param": None,
        "code": "upstream_error",
    }
    return json.dumps({"error": error}).encode()
