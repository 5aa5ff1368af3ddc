"""Fake chat/proxy backends, a fake registry and HTTP helpers for the OpenAI-layer tests.

The fakes follow backends/base.py exactly and record what a real device would see: every lease's
UnitSettings, every prompt and image, whether each generation ran to its end or was closed early.
"""

from __future__ import annotations

import asyncio
import io
import json
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import uvicorn
from fastapi import FastAPI
from PIL import Image

from stackflow_openai.app import HttpSettings, create_app
from stackflow_openai.backends.base import (
    BackendError,
    ChatModelInfo,
    ModelEntry,
    ProxyResponse,
    UnitSettings,
)
from stackflow_openai.tokens import Tokenizers

QWEN_P256 = ChatModelInfo(prefill_len=256, max_token_len=1023, tokenizer="qwen", template="qwen")
QWEN_P128 = ChatModelInfo(prefill_len=128, max_token_len=1023, tokenizer="qwen", template="qwen")
VLM_INFO = ChatModelInfo(prefill_len=256, max_token_len=1023, tokenizer="qwen", template="qwen", vision=True)
ESTIMATE_INFO = ChatModelInfo(prefill_len=128, max_token_len=511, tokenizer="estimate", template="generic")

Script = Sequence["str | BaseException | Pause"]


@dataclass(frozen=True)
class Pause:
    """In a script: wait this long (or forever with None) before the next delta."""

    seconds: float | None = None


@dataclass
class Generation:
    prompt: str
    images: list[bytes]
    emitted: list[str] = field(default_factory=list)
    completed: bool = False  # the script ran to its end
    closed: bool = False  # the generator's finally ran (aclose, cancellation or end)
    exited_early: bool = False  # stopped before the end of its script (aclose or cancellation)
    cleanup_done: bool = False  # its asynchronous clean-up (like a device pause) ran to the end
    closed_event: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Lease:
    settings: UnitSettings
    exit_error: type[BaseException] | None = None
    exited: bool = False
    cleanup_done: bool = False  # the asynchronous release ran to the end (not cut by a cancellation)


class FakeChatBackend:
    """Scripted deltas. `script` is a list (the same for every generation), or a function of the prompt
    and the generation number returning one."""

    def __init__(
        self,
        info: ChatModelInfo = QWEN_P256,
        script: Script | Callable[[str, int], Script] = ("Hello", " world", "!"),
        *,
        lease_error: BackendError | None = None,
        delay: float = 0.0,
    ) -> None:
        self.info = info
        self.script = script
        self.lease_error = lease_error
        self.delay = delay
        self.leases: list[Lease] = []
        self.generations: list[Generation] = []

    @asynccontextmanager
    async def lease(self, settings: UnitSettings) -> AsyncIterator[FakeUnit]:
        if self.lease_error is not None:
            raise self.lease_error
        record = Lease(settings)
        self.leases.append(record)
        try:
            yield FakeUnit(self)
        except BaseException as exc:
            record.exit_error = type(exc)
            raise
        finally:
            record.exited = True
            await asyncio.sleep(0.01)  # a real pool awaits here (pause/exit a unit): must not be cut short
            record.cleanup_done = True

    def script_for(self, prompt: str) -> Script:
        if callable(self.script):
            return self.script(prompt, len(self.generations) - 1)
        return self.script


class FakeUnit:
    stopped_at_capacity = False

    def __init__(self, backend: FakeChatBackend) -> None:
        self._backend = backend

    async def generate(self, prompt: str, *, images: list[bytes], turn: Any = None) -> AsyncIterator[str]:
        record = Generation(prompt, list(images))
        self._backend.generations.append(record)
        try:
            for item in self._backend.script_for(prompt):
                if self._backend.delay:
                    await asyncio.sleep(self._backend.delay)
                if isinstance(item, Pause):
                    await (
                        asyncio.sleep(item.seconds) if item.seconds is not None else asyncio.Event().wait()
                    )
                    continue
                if isinstance(item, BaseException):
                    raise item
                record.emitted.append(item)
                yield item
            record.completed = True
        finally:
            record.exited_early = not record.completed
            record.closed = True
            if record.exited_early:
                await asyncio.sleep(0.01)  # like pausing the device unit: must not be cut short
            record.cleanup_done = True
            record.closed_event.set()


class FakeProxyBackend:
    def __init__(
        self, status: int = 200, body: bytes = b'{"ok":true}', content_type: str = "application/json"
    ):
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.status, self.body, self.content_type = status, body, content_type

    async def forward(self, path: str, body: dict[str, Any]) -> ProxyResponse:
        self.calls.append((path, body))

        async def chunks() -> AsyncIterator[bytes]:
            yield self.body

        return ProxyResponse(self.status, {"content-type": self.content_type}, chunks())


class FakeRegistry:
    def __init__(self, entries: Sequence[ModelEntry]) -> None:
        self.entries = {e.id: e for e in entries}
        self.started = self.stopped = False

    def list(self) -> list[ModelEntry]:
        return list(self.entries.values())

    def get(self, model_id: str) -> ModelEntry | None:
        return self.entries.get(model_id)

    async def start(self) -> None:
        self.started = True

    async def stop(self) -> None:
        self.stopped = True


def chat_entry(model_id: str, backend: FakeChatBackend, **kwargs: Any) -> ModelEntry:
    return ModelEntry(id=model_id, kind="chat", created=1700000000, chat=backend, **kwargs)


# One Tokenizers for the whole test session: loading Qwen's BPE takes ~0.35 s.
_TOKENIZERS = Tokenizers()


def tokenizers() -> Tokenizers:
    return _TOKENIZERS


def make_app(entries: Sequence[ModelEntry], settings: HttpSettings | None = None, **kwargs: Any) -> FastAPI:
    return create_app(FakeRegistry(entries), settings, tokenizers=_TOKENIZERS, **kwargs)


@asynccontextmanager
async def client_for(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An httpx client on the app through ASGI, with the app's lifespan running."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10) as client:
            yield client


# ---- uvicorn in a thread (for the official SDK and real disconnects) ---------------------------------
@contextmanager
def serve_in_thread(app: FastAPI) -> Iterator[str]:
    """Run the app with uvicorn on a free 127.0.0.1 port; yields the base URL."""
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    for _ in range(500):
        if server.started:
            break
        if not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        threading.Event().wait(0.01)
    else:
        raise RuntimeError("uvicorn did not start in 5 s")
    host, port = server.servers[0].sockets[0].getsockname()[:2]
    try:
        yield f"http://{host}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


# ---- OpenAI schemas -------------------------------------------------------------------------------------
_SUBSET = Path(__file__).resolve().parents[2] / "shared" / "openai" / "openai-subset.json"
_DOCUMENT: dict[str, Any] = json.loads(_SUBSET.read_text())


def _relaxed_completion_chunk() -> dict[str, Any]:
    """OpenAI streams legacy completions with ``finish_reason: null`` until the last chunk, but the schema
    (shared by response and chunk) does not allow null there: the one relaxation these tests make."""
    schema = json.loads(json.dumps(_DOCUMENT["$defs"]["CreateCompletionResponse"]))
    reason = schema["properties"]["choices"]["items"]["properties"]["finish_reason"]
    reason["type"] = ["string", "null"]
    reason["enum"] = [*reason["enum"], None]
    return schema


def validate(name: str, instance: Any) -> None:
    """Validate against `#/$defs/<name>` of OpenAI's schema subset (draft 2020-12)."""
    if name == "CompletionChunk":
        schema: dict[str, Any] = {**_relaxed_completion_chunk(), "$defs": _DOCUMENT["$defs"]}
    else:
        schema = {**_DOCUMENT, "$ref": f"#/$defs/{name}"}
    jsonschema.Draft202012Validator(schema).validate(instance)


def assert_error(
    response: httpx.Response, status: int, *, code: str | None = None, param: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    body = response.json()
    validate("ErrorResponse", body)
    assert set(body["error"]) == {"message", "type", "param", "code"}
    if code is not None:
        assert body["error"]["code"] == code, body
    if param is not None:
        assert body["error"]["param"] == param, body
    return body["error"]


def parse_sse(text: str) -> tuple[list[dict[str, Any]], bool]:
    """(events, ended_with_done) of an SSE body; asserts the framing is `data: ...` + blank line."""
    events: list[dict[str, Any]] = []
    done = False
    assert text.endswith("\n\n"), text[-50:]
    for block in text.strip("\n").split("\n\n"):
        assert block.startswith("data: "), block
        data = block[len("data: ") :]
        assert not done, "an event after [DONE]"
        if data == "[DONE]":
            done = True
        else:
            events.append(json.loads(data))
    return events, done


def image_bytes(fmt: str = "PNG", size: tuple[int, int] = (32, 24), mode: str = "RGBA") -> bytes:
    color = (200, 30, 30, 128) if mode == "RGBA" else (200, 30, 30)
    out = io.BytesIO()
    Image.new(mode, size, color).save(out, format=fmt)
    return out.getvalue()
