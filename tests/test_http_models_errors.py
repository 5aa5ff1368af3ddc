"""GET /v1/models, the lifespan, and OpenAI-shaped errors on every path (404, 405, bad JSON, size, 500)."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi import APIRouter, Query

from fakes import (
    FakeChatBackend,
    FakeRegistry,
    assert_error,
    chat_entry,
    client_for,
    make_app,
    tokenizers,
    validate,
)
from stackflow_openai.app import HttpSettings, create_app
from stackflow_openai.backends.base import ModelEntry


def entries() -> list[ModelEntry]:
    return [
        chat_entry("qwen2.5-0.5B-p256-ax630c", FakeChatBackend()),
        chat_entry("org/model:v1", FakeChatBackend(), owned_by="someone"),
        ModelEntry(id="melotts-en-us", kind="speech", created=5),
    ]


async def test_list_models() -> None:
    async with client_for(make_app(entries())) as client:
        response = await client.get("/v1/models")
    body = response.json()
    validate("ListModelsResponse", body)
    assert [m["id"] for m in body["data"]] == ["qwen2.5-0.5B-p256-ax630c", "org/model:v1", "melotts-en-us"]
    assert body["data"][1] == {
        "id": "org/model:v1",
        "object": "model",
        "created": 1700000000,
        "owned_by": "someone",
        "stackflow": {"kind": "chat", "device": None, "devices": [], "alias_of": None},
    }
    assert body["data"][2]["stackflow"]["kind"] == "speech"


@pytest.mark.parametrize("model_id", ["qwen2.5-0.5B-p256-ax630c", "org/model:v1"])
async def test_retrieve_model_including_ids_with_slashes(model_id: str) -> None:
    async with client_for(make_app(entries())) as client:
        response = await client.get(f"/v1/models/{model_id}")
    assert response.status_code == 200
    validate("Model", response.json())
    assert response.json()["id"] == model_id


async def test_retrieve_unknown_model_is_404_listing_the_models() -> None:
    async with client_for(make_app(entries())) as client:
        response = await client.get("/v1/models/gpt-5")
    error = assert_error(response, 404, code="model_not_found", param="model")
    assert "org/model:v1" in error["message"]


async def test_lifespan_starts_and_stops_the_registry() -> None:
    registry = FakeRegistry(entries())
    app = create_app(registry, tokenizers=tokenizers())
    async with client_for(app):
        assert registry.started and not registry.stopped
    assert registry.stopped


async def test_chat_on_a_speech_model_is_400() -> None:
    async with client_for(make_app(entries())) as client:
        response = await client.post(
            "/v1/chat/completions",
            json={"model": "melotts-en-us", "messages": [{"role": "user", "content": "hi"}]},
        )
    assert_error(response, 400, code="model_not_supported", param="model")


async def test_unknown_url_is_404_in_openai_shape() -> None:
    async with client_for(make_app(entries())) as client:
        response = await client.post("/v1/engines/davinci/completions", json={})
    error = assert_error(response, 404, code="unknown_url")
    assert "/v1/engines/davinci/completions" in error["message"]


@pytest.mark.parametrize(
    ("method", "path"),
    [("GET", "/v1/chat/completions"), ("DELETE", "/v1/completions"), ("POST", "/v1/models")],
)
async def test_wrong_method_is_405_in_openai_shape(method: str, path: str) -> None:
    async with client_for(make_app(entries())) as client:
        response = await client.request(method, path)
    assert_error(response, 405, code="method_not_allowed")
    assert response.headers["allow"]


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'"text"', b"\xff\xfe{"])
async def test_malformed_bodies_are_400(content: bytes) -> None:
    async with client_for(make_app(entries())) as client:
        response = await client.post(
            "/v1/chat/completions", content=content, headers={"content-type": "application/json"}
        )
    assert_error(response, 400, code="invalid_json")


async def test_body_over_the_limit_is_413() -> None:
    app = make_app(entries(), HttpSettings(max_body_bytes=1000))
    big = {"model": "qwen2.5-0.5B-p256-ax630c", "messages": [{"role": "user", "content": "x" * 2000}]}
    async with client_for(app) as client:
        response = await client.post("/v1/chat/completions", json=big)
        chunked = await client.post("/v1/completions", content=_chunks(b"x" * 2000))
    assert_error(response, 413, code="request_too_large")
    assert_error(chunked, 413, code="request_too_large")


async def _chunks(data: bytes) -> Any:
    for i in range(0, len(data), 100):
        yield data[i : i + 100]


async def test_fastapi_validation_errors_become_400_with_the_param() -> None:
    """Routes added by others with FastAPI-validated parameters get the same error shape."""
    app = make_app(entries())
    extra = APIRouter()

    @extra.get("/v1/echo")
    async def echo(count: int = Query(ge=1)) -> dict[str, int]:
        return {"count": count}

    app.include_router(extra)
    async with client_for(app) as client:
        response = await client.get("/v1/echo?count=0")
    assert_error(response, 400, param="count")


async def test_unexpected_errors_in_any_route_are_a_logged_500(caplog: pytest.LogCaptureFixture) -> None:
    app = make_app(entries())
    extra = APIRouter()

    @extra.get("/v1/boom")
    async def boom() -> None:
        raise ZeroDivisionError("hidden detail")

    app.include_router(extra)
    async with client_for(app) as client:
        response = await client.get("/v1/boom")
    assert_error(response, 500, code="internal_error")
    assert "hidden detail" not in response.text
    assert any("ZeroDivisionError" in (r.exc_text or "") for r in caplog.records)


def test_the_app_serves_every_openai_resource() -> None:
    paths = set(make_app(entries()).openapi()["paths"])
    assert {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/models",
        "/v1/models/{model_id}",
        "/v1/audio/speech",
        "/v1/audio/transcriptions",
    } <= paths
