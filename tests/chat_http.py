"""Posting chat requests to a test app whose model "qwen" is served by a fake backend."""

from __future__ import annotations

from typing import Any

from fakes import FakeChatBackend, chat_entry, client_for, make_app
from stackflow_openai.app import HttpSettings

URL = "/v1/chat/completions"


def user(text: str, **extra: Any) -> dict[str, Any]:
    return {"model": "qwen", "messages": [{"role": "user", "content": text}], **extra}


async def post(
    backend: FakeChatBackend, body: dict[str, Any], *, settings: HttpSettings | None = None, **entry: Any
) -> Any:
    app = make_app(
        [chat_entry("qwen", backend, **entry), chat_entry("other/model:v1", FakeChatBackend())], settings
    )
    async with client_for(app) as client:
        return await client.post(URL, json=body)
