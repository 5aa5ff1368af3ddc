"""Schemathesis against the gateway's own OpenAPI document: no 5xx, no hang, every error in OpenAI's shape.

The document the gateway publishes at /openapi.json describes the request bodies (the pydantic models the
services validate with, and the transcription routes' multipart form: routers/openapi.py), so schemathesis
generates bodies from them, as well as paths, methods and query parameters. The document is read from the
running gateway, as a client would. Requests go over HTTP to a real gateway in front of the emulator; the
number of cases is bounded and every request has a timeout. test_fuzz_bodies.py fuzzes malformed bodies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2e_harness import Harness
from fakes import make_app

# The document depends only on the routes, so a registry-less app describes the real one (for the
# parametrisation below); the tests fuzz the one the gateway publishes.
PATHS = sorted(make_app([]).openapi()["paths"])
REQUEST_TIMEOUT = 10.0
JSON_BODIES = {"/v1/chat/completions", "/v1/completions", "/v1/audio/speech"}
FORMS = {"/v1/audio/transcriptions", "/v1/audio/translations"}
SERVED = ["qwen2.5-0.5B-p256-ax630c", "internvl2.5-1B-364-ax630c", "tts-1", "whisper-1", "gpt-4o-mini"]


@pytest.fixture(scope="module")
def gateway() -> Iterator[Harness]:
    h = Harness().start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(scope="module")
def published(gateway: Harness) -> Any:
    r = httpx.get(gateway.base_url.removesuffix("/v1") + "/openapi.json", timeout=REQUEST_TIMEOUT)
    assert r.status_code == 200
    return schemathesis.openapi.from_dict(r.json())


def assert_openai_shaped(status: int, body: Any, where: str) -> None:
    assert status < 500, f"{where}: {status} {body!r}"
    if status >= 400:
        assert isinstance(body, dict) and set(body) == {"error"}, f"{where}: {body!r}"
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}, f"{where}: {body!r}"
        assert isinstance(error["message"], str) and error["message"], where
        assert error["type"] in ("invalid_request_error", "server_error", "authentication_error"), where
        assert error["code"] is None or isinstance(error["code"], str), where
        assert error["param"] is None or isinstance(error["param"], str), where


def test_the_document_lists_the_openai_routes_their_bodies_and_errors(published: Any) -> None:
    document = published.raw_schema
    paths = document["paths"]
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/audio/speech"} <= set(paths)
    assert {"/v1/responses", "/v1/responses/{response_id}", "/v1/responses/{response_id}/input_items"} <= set(
        paths
    )
    schemas = document["components"]["schemas"]
    for path in JSON_BODIES:
        body = paths[path]["post"]["requestBody"]["content"]["application/json"]["schema"]
        assert body["$ref"].rsplit("/", 1)[1] in schemas
    chat = schemas["ChatCompletionRequest"]
    assert {"model", "messages"} <= set(chat["required"]) and "temperature" in chat["properties"]
    for path in FORMS:
        form = paths[path]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
        assert form["properties"]["file"]["format"] == "binary" and set(form["required"]) == {"file", "model"}
    for path, operations in paths.items():
        for method, operation in operations.items():
            if path.startswith("/v1/"):
                responses = operation["responses"]
                assert "422" not in responses, (method, path)  # errors are OpenAI's 400s
                error = responses["400"]["content"]["application/json"]["schema"]["$ref"]
                assert error.endswith("/ErrorResponse") and "Retry-After" in responses["503"]["headers"]


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_every_documented_operation(gateway: Harness, published: Any, data: st.DataObject) -> None:
    case = data.draw(published.as_strategy())
    # Random model names stop at the 404; a served one takes the body to the service and the device.
    served = data.draw(st.sampled_from([None, *SERVED]))
    if served and isinstance(case.body, dict) and "model" in case.body:
        case.body["model"] = served
    base_url = gateway.base_url.removesuffix("/v1")
    started = time.monotonic()
    response = case.call(base_url=base_url, timeout=REQUEST_TIMEOUT)
    assert time.monotonic() - started < REQUEST_TIMEOUT  # no hang
    where = f"{case.method} {case.formatted_path}"
    content_type = response.headers.get("content-type", [""])
    content_type = content_type[0] if isinstance(content_type, list) else content_type
    body = response.json() if "json" in content_type else response.text
    assert_openai_shaped(response.status_code, body, where)


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(
    method=st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH"]),
    path=st.sampled_from([*PATHS, "/v1/nothing", "/", "/v1/models/a/b"]),
)
def test_undocumented_methods_and_paths_are_openai_errors(gateway: Harness, method: str, path: str) -> None:
    base_url = gateway.base_url.removesuffix("/v1")
    path = path.replace("{model_id}", "no-such-model")
    r = httpx.request(method, base_url + path, timeout=REQUEST_TIMEOUT)
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
    assert_openai_shaped(r.status_code, body, f"{method} {path}")
