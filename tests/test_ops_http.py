"""The operations layer over HTTP with fake backends: API keys, CORS, request ids and log lines,
/health, /ready, /metrics (parsed with the Prometheus text parser), body limits, and the routes."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fakes import FakeChatBackend, chat_entry, client_for, make_app, parse_sse, serve_in_thread
from stackflow_openai.app import HttpSettings

MODEL = "qwen2.5-0.5B-p256-ax630c"
KEY = "sk-test-0123456789"
CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "a secret prompt"}]}


def app_with(**settings: object):  # type: ignore[no-untyped-def]
    return make_app([chat_entry(MODEL, FakeChatBackend())], HttpSettings(**settings))  # type: ignore[arg-type]


def metrics_of(text: str) -> dict[str, list[tuple[dict[str, str], float]]]:
    samples: dict[str, list[tuple[dict[str, str], float]]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append((sample.labels, sample.value))
    return samples


# ---- API keys ---------------------------------------------------------------------------------------
async def test_keys_are_required_on_v1_routes_and_errors_have_openai_shape() -> None:
    async with client_for(app_with(api_keys=(KEY, "another-key"))) as client:
        missing = await client.post("/v1/chat/completions", json=CHAT)
        wrong = await client.get("/v1/models", headers={"Authorization": "Bearer sk-wrong"})
        basic = await client.get("/v1/models", headers={"Authorization": f"Basic {KEY}"})
        ok = await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
        other = await client.get("/v1/models", headers={"Authorization": "Bearer another-key"})
    for response in (missing, wrong, basic):
        assert response.status_code == 401
        assert response.headers["www-authenticate"] == "Bearer"
        error = response.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error" and error["code"] == "invalid_api_key"
        assert KEY not in response.text and "sk-wrong" not in response.text
    assert "didn't provide an API key" in missing.json()["error"]["message"]
    assert "Incorrect API key" in wrong.json()["error"]["message"]
    assert ok.status_code == 200 and ok.json()["choices"][0]["message"]["content"] == "Hello world!"
    assert other.status_code == 200


async def test_health_and_metrics_stay_open_unless_protected() -> None:
    async with client_for(app_with(api_keys=(KEY,))) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).status_code == 200
        assert (await client.get("/metrics")).status_code == 200
    async with client_for(app_with(api_keys=(KEY,), protect_health=True, protect_metrics=True)) as client:
        assert (await client.get("/health")).status_code == 401
        assert (await client.get("/ready")).status_code == 401
        assert (await client.get("/metrics")).status_code == 401
        auth = {"Authorization": f"Bearer {KEY}"}
        assert (await client.get("/metrics", headers=auth)).status_code == 200


def test_the_official_sdk_sees_an_authentication_error() -> None:
    with serve_in_thread(app_with(api_keys=(KEY,))) as base_url:
        bad = openai.OpenAI(base_url=f"{base_url}/v1", api_key="sk-nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as err:
            bad.models.list()
        assert err.value.code == "invalid_api_key"
        good = openai.OpenAI(base_url=f"{base_url}/v1", api_key=KEY, max_retries=0)
        assert [m.id for m in good.models.list().data] == [MODEL]


async def test_keys_and_prompts_never_reach_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with client_for(app_with(api_keys=(KEY,))) as client:
        await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {KEY}"})
        await client.post("/v1/chat/completions", json=CHAT, headers={"Authorization": "Bearer sk-guess"})
    text = caplog.text
    assert "status=200" in text and "status=401" in text
    assert KEY not in text and "sk-guess" not in text and "secret prompt" not in text


def test_http_settings_repr_hides_the_keys() -> None:
    assert KEY not in repr(HttpSettings(api_keys=(KEY,)))


# ---- CORS -------------------------------------------------------------------------------------------
async def test_cors_is_off_unless_configured() -> None:
    preflight = {"Origin": "http://ui.example", "Access-Control-Request-Method": "POST"}
    async with client_for(app_with()) as client:
        response = await client.get("/v1/models", headers={"Origin": "http://ui.example"})
        assert "access-control-allow-origin" not in response.headers
    async with client_for(app_with(cors_origins=("http://ui.example",), api_keys=(KEY,))) as client:
        response = await client.options("/v1/chat/completions", headers=preflight)
        assert response.status_code == 200  # a preflight carries no key and must not be refused
        assert response.headers["access-control-allow-origin"] == "http://ui.example"
        response = await client.get("/v1/models", headers={"Origin": "http://ui.example"})
        assert response.status_code == 401  # the 401 is readable by the page, too
        assert response.headers["access-control-allow-origin"] == "http://ui.example"
        evil = await client.options("/v1/models", headers={**preflight, "Origin": "http://evil.example"})
        assert "access-control-allow-origin" not in evil.headers


# ---- request ids and the log line -------------------------------------------------------------------
async def test_request_id_is_returned_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="stackflow_openai.access")
    async with client_for(app_with()) as client:
        mine = await client.post("/v1/chat/completions", json=CHAT, headers={"X-Request-Id": "abc-123"})
        generated = await client.get("/v1/models")
        forged = await client.get("/v1/models", headers={"X-Request-Id": 'x" status=200'})
    assert mine.headers["x-request-id"] == "abc-123"
    assert len(generated.headers["x-request-id"]) == 32
    assert forged.headers["x-request-id"] != 'x" status=200'
    lines = [r.getMessage() for r in caplog.records if r.name == "stackflow_openai.access"]
    chat_line = next(line for line in lines if "request_id=abc-123" in line)
    assert (
        f"model={MODEL}" in chat_line
        and "status=200" in chat_line
        and "path=/v1/chat/completions" in chat_line
    )
    assert "duration_ms=" in chat_line


async def test_debug_logging_shows_request_bodies(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="stackflow_openai.access")
    async with client_for(app_with()) as client:
        await client.post("/v1/chat/completions", json=CHAT)
    assert "secret prompt" in caplog.text  # only because debug logging asked for it


# ---- health, ready, metrics -------------------------------------------------------------------------
async def test_health_ready_and_metrics_with_a_registry_without_devices() -> None:
    async with client_for(app_with()) as client:
        health = await client.get("/health")
        ready = await client.get("/ready")
    assert health.json()["status"] == "ok"
    assert ready.status_code == 200 and ready.json()["models"] == [MODEL]
    async with client_for(make_app([])) as client:
        not_ready = await client.get("/ready")
    assert not_ready.status_code == 503 and not_ready.json()["status"] == "not ready"


async def test_metrics_count_requests_errors_tokens_and_time_to_first_token() -> None:
    async with client_for(app_with()) as client:
        await client.post("/v1/chat/completions", json=CHAT)
        stream = await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
        await client.post("/v1/chat/completions", json={**CHAT, "model": "gpt-9"})
        await client.get("/v1/models/gpt-9")
        scraped = await client.get("/metrics")
    assert scraped.headers["content-type"].startswith("text/plain")
    m = metrics_of(scraped.text)
    requests = {(s["route"], s["status"]): v for s, v in m["stackflow_openai_requests_total"]}
    assert requests[("/v1/chat/completions", "200")] == 2
    assert requests[("/v1/chat/completions", "404")] == 1
    assert requests[("/v1/models/{model_id:path}", "404")] == 1
    errors = {s["code"]: v for s, v in m["stackflow_openai_errors_total"]}
    assert errors["model_not_found"] == 2
    tokens = {(s["model"], s["kind"]): v for s, v in m["stackflow_openai_tokens_total"]}
    assert tokens[(MODEL, "completion")] == 2 * 3  # "Hello", " world", "!" twice
    assert tokens[(MODEL, "prompt")] > 0
    ttft = {s["model"]: v for s, v in m["stackflow_openai_time_to_first_token_seconds_count"]}
    assert ttft[MODEL] == 1  # measured on the stream
    # The client did not ask for usage: the stream it got has none, though the gateway counted it.
    events, done = parse_sse(stream.text)
    assert done and all("usage" not in e for e in events) and all(e["choices"] for e in events)


async def test_a_stream_that_asked_for_usage_keeps_it() -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    async with client_for(app_with()) as client:
        events, _ = parse_sse((await client.post("/v1/chat/completions", json=body)).text)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] == 3


def test_each_app_has_its_own_metrics_registry() -> None:
    first, second = app_with(), app_with()
    assert first.state.metrics.registry is not second.state.metrics.registry


# ---- body limits and routes -------------------------------------------------------------------------
async def test_body_limit_by_content_length_and_by_chunked_reading() -> None:
    async with client_for(app_with(max_body_bytes=2000)) as client:
        declared = await client.post("/v1/chat/completions", json={**CHAT, "pad": "x" * 5000})

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(10):
                yield b" " * 500

        chunked = await client.post(
            "/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"}
        )
    for response in (declared, chunked):
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "request_too_large"


def route_paths(routes: Iterable[Any]) -> set[str]:
    """Every path of the app, including those of included routers (however FastAPI wraps them)."""
    paths: set[str] = set()
    for route in routes:
        inner = getattr(getattr(route, "original_router", None), "routes", None) or getattr(
            route, "routes", None
        )
        if inner:
            paths |= route_paths(inner)
        elif getattr(route, "path", None):
            paths.add(route.path)
    return paths


def test_no_route_reaches_device_administration() -> None:
    forbidden = ("bashexec", "reboot", "reset", "uartsetup", "upgrade", "push", "pull", "sys")
    paths = route_paths(app_with().routes)
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/health", "/ready", "/metrics"} <= paths
    for path in paths:
        assert not any(word in path.lower() for word in forbidden), path
        # every route is an OpenAI resource, an operations endpoint, the API docs or the playground's
        # page and static files (which call the same /v1 routes)
        api = ("/v1/", "/health", "/ready", "/metrics", "/docs", "/openapi", "/redoc")
        assert path in ("/", "/playground") or path.startswith(api), path
