"""Schemathesis against the gateway's own OpenAPI document: no 5xx, no hang, every error in OpenAI's shape.

The gateway reads its JSON bodies itself (it must report unknown parameters rather than reject them), so
the document has no request-body schemas: schemathesis fuzzes what it does describe (paths, methods,
path and query parameters, missing or odd bodies). The bodies themselves are fuzzed with hypothesis in
test_fuzz_bodies.py. Requests go over HTTP to a real gateway in front of the emulator; the number of
cases is bounded and every request has a timeout.
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

# The document depends only on the routes, so a registry-less app describes the real one.
SCHEMA = schemathesis.openapi.from_dict(make_app([]).openapi())
CASES = SCHEMA.as_strategy()
REQUEST_TIMEOUT = 10.0


@pytest.fixture(scope="module")
def gateway() -> Iterator[Harness]:
    h = Harness().start()
    try:
        yield h
    finally:
        h.stop()


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


def test_the_document_lists_the_openai_routes() -> None:
    paths = set(SCHEMA.raw_schema["paths"])
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/audio/speech"} <= paths
    assert {
        "/v1/responses",
        "/v1/responses/{response_id}",
        "/v1/responses/{response_id}/input_items",
    } <= paths


@settings(
    max_examples=150,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(case=CASES)
def test_every_documented_operation(gateway: Harness, case: Any) -> None:
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
    path=st.sampled_from([*sorted(SCHEMA.raw_schema["paths"]), "/v1/nothing", "/", "/v1/models/a/b"]),
)
def test_undocumented_methods_and_paths_are_openai_errors(gateway: Harness, method: str, path: str) -> None:
    base_url = gateway.base_url.removesuffix("/v1")
    path = path.replace("{model_id}", "no-such-model")
    r = httpx.request(method, base_url + path, timeout=REQUEST_TIMEOUT)
    body = r.json() if r.headers.get("content-type", "").startswith("application/json") else r.text
    assert_openai_shaped(r.status_code, body, f"{method} {path}")
