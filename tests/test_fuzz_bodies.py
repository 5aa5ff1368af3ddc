"""Hypothesis fuzzing of the JSON bodies of /v1/chat/completions, /v1/completions, /v1/responses and
/v1/audio/speech.

The OpenAPI document has no body schemas (see test_fuzz_openapi.py), so the bodies are generated here:
a plausible request in which any field may be replaced by a random JSON value, or a random object.
Every response must be a success or a 4xx in OpenAI's shape (never a 5xx, never a hang), a stream
must end with [DONE] (a Responses stream: with its terminal response event), and afterwards the
gateway still serves and has leaked no unit instance.
Bounded: a fixed number of examples per endpoint, small values, a timeout on every request.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from e2e_harness import Harness

LLM = "qwen2.5-0.5B-p256-ax630c"
VLM = "internvl2.5-1B-364-ax630c"
REQUEST_TIMEOUT = 15.0
FUZZ = settings(
    max_examples=120,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

NASTY_TEXT = st.sampled_from(
    [
        "",
        " ",
        "\x00",
        "{",
        "}",
        '{"a": }',
        "\\",
        "\\u0000",
        "\ud800",  # a lone surrogate: json.dumps sends it as the escape \ud800
        "a\udfffb",
        "😀👨‍👩‍👧",
        "مرحبا",
        "\u202e",
        "<|im_end|>",
        "data: [DONE]\n\n",
        "x" * 3000,
        "word " * 300,
    ]
)
TEXT = st.one_of(st.text(max_size=40), NASTY_TEXT)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON = st.recursive(
    SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)


def mutated(
    required: dict[str, st.SearchStrategy[Any]], optional: dict[str, st.SearchStrategy[Any]]
) -> st.SearchStrategy[dict[str, Any]]:
    """Mostly a valid request, with up to two fields (known or not) replaced by random JSON values or
    dropped; sometimes a random object. Valid requests must reach the device, or nothing is tested."""
    names = sorted({*required, *optional})
    valid = st.fixed_dictionaries(required, optional=optional)
    changes = st.lists(st.tuples(st.one_of(st.sampled_from(names), st.text(max_size=8)), JSON), max_size=2)
    drops = st.lists(st.sampled_from(names), max_size=1)

    def apply(body: dict[str, Any], change: list[tuple[str, Any]], drop: list[str]) -> dict[str, Any]:
        body = {**body, **dict(change)}
        for name in drop:
            body.pop(name, None)
        return body

    random_object = st.dictionaries(st.one_of(st.sampled_from(names), st.text(max_size=8)), JSON, max_size=5)
    changed = st.builds(apply, valid, changes, drops)
    return st.one_of(valid, valid, changed, changed, random_object)


WORDS = st.from_regex(r"[A-Za-z]{1,8}( [A-Za-z]{1,8}){0,5}", fullmatch=True)
PROMPT = st.one_of(WORDS, WORDS, TEXT)
CONTENT_PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("text"), "text": PROMPT}),
    st.fixed_dictionaries(
        {
            "type": st.just("image_url"),
            "image_url": st.fixed_dictionaries(
                {
                    "url": st.one_of(
                        TEXT,
                        st.just(
                            "data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
                        ),
                    )
                }
            ),
        }
    ),
    st.dictionaries(st.text(max_size=8), JSON, max_size=3),
)
MESSAGE = st.fixed_dictionaries(
    {
        "role": st.one_of(
            st.sampled_from(["user", "user", "system", "assistant", "developer", "tool"]), JSON
        ),
        "content": st.one_of(PROMPT, PROMPT, st.lists(CONTENT_PART, min_size=1, max_size=3), JSON),
    }
)
USER_LAST = st.builds(
    lambda history, last: [*history, {"role": "user", "content": last}], st.lists(MESSAGE, max_size=3), PROMPT
)
COMMON = {
    "max_tokens": st.integers(min_value=-1, max_value=60),
    "n": st.integers(min_value=0, max_value=3),
    "stop": st.one_of(TEXT, st.lists(TEXT, max_size=5)),
    "stream": st.booleans(),
    "stream_options": st.fixed_dictionaries({}, optional={"include_usage": st.booleans()}),
    "temperature": st.floats(min_value=-0.5, max_value=2.5, allow_nan=False),
    "top_p": st.floats(min_value=-0.5, max_value=1.5, allow_nan=False),
    "seed": st.integers(),
}
CHAT = mutated(
    {"model": st.sampled_from([LLM, LLM, LLM, VLM, "gpt-4o", "tts-1"]), "messages": USER_LAST},
    {"max_completion_tokens": st.integers(min_value=-1, max_value=60), **COMMON},
)
COMPLETION = mutated(
    {
        "model": st.sampled_from([LLM, LLM, "whisper-1"]),
        "prompt": st.one_of(PROMPT, st.lists(PROMPT, max_size=3)),
    },
    {"echo": st.booleans(), **COMMON},
)
SPEECH = mutated(
    {
        "model": st.sampled_from(["tts-1", "melotts-en-us", "single-speaker-english-fast", LLM]),
        "input": st.one_of(WORDS, st.text(max_size=40)),
        "voice": st.one_of(
            st.sampled_from(["alloy", "alloy", "nova", "nobody"]), st.fixed_dictionaries({"id": TEXT})
        ),
    },
    {
        "response_format": st.sampled_from(["mp3", "opus", "aac", "flac", "wav", "pcm", "midi"]),
        "speed": st.floats(min_value=0, max_value=5, allow_nan=False),
        "stream_format": st.sampled_from(["audio", "audio", "sse", "video"]),
        "instructions": TEXT,
    },
)


INPUT_PART = st.one_of(
    st.fixed_dictionaries({"type": st.just("input_text"), "text": PROMPT}),
    st.fixed_dictionaries({"type": st.sampled_from(["input_image", "input_file"]), "image_url": TEXT}),
    st.dictionaries(st.text(max_size=8), JSON, max_size=3),
)
INPUT_ITEM = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.one_of(st.sampled_from(["user", "user", "assistant", "system", "developer"]), JSON),
            "content": st.one_of(PROMPT, st.lists(INPUT_PART, min_size=1, max_size=3), JSON),
        },
        optional={"type": st.sampled_from(["message", "item_reference", "reasoning"])},
    ),
    st.fixed_dictionaries(
        {"type": st.just("function_call"), "call_id": TEXT, "name": TEXT, "arguments": TEXT}
    ),
    st.fixed_dictionaries({"type": st.just("function_call_output"), "call_id": TEXT, "output": JSON}),
    st.dictionaries(st.text(max_size=8), JSON, max_size=3),
)
RESPONSES = mutated(
    {
        "model": st.sampled_from([LLM, LLM, LLM, VLM, "gpt-4o", "tts-1"]),
        "input": st.one_of(PROMPT, PROMPT, st.lists(INPUT_ITEM, min_size=1, max_size=3)),
    },
    {
        "instructions": TEXT,
        "max_output_tokens": st.integers(min_value=-1, max_value=60),
        "stream": st.booleans(),
        "store": st.booleans(),
        "truncation": st.sampled_from(["auto", "disabled", "middle"]),
        "temperature": st.floats(min_value=-0.5, max_value=2.5, allow_nan=False),
        "top_p": st.floats(min_value=-0.5, max_value=1.5, allow_nan=False),
        "metadata": st.dictionaries(st.text(max_size=70), st.text(max_size=20), max_size=3),
        "previous_response_id": st.one_of(st.just("resp_nope"), TEXT),
        "text": st.fixed_dictionaries(
            {"format": st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object"])})}
        ),
        "tools": st.lists(
            st.fixed_dictionaries({"type": st.sampled_from(["function", "web_search"])}), max_size=2
        ),
        "tool_choice": st.sampled_from(["auto", "none", "required"]),
        "reasoning": st.fixed_dictionaries({"effort": st.sampled_from(["low", "high"])}),
        "background": st.booleans(),
        "include": st.lists(TEXT, max_size=2),
    },
)
_RESPONSE_ENDS = ("event: response.completed\n", "event: response.incomplete\n", "event: response.failed\n")


@pytest.fixture(scope="module")
def gateway() -> Iterator[Harness]:
    # Fuzzed system prompts make a new setup signature almost every time: the pool must keep evicting
    # idle units, for the instance limits and for device memory (the emulator's default 3 GiB of CMM).
    h = Harness().start()
    with h.serving():
        yield h


@pytest.fixture(scope="module")
def http(gateway: Harness) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.base_url, timeout=REQUEST_TIMEOUT) as client:
        yield client


def assert_error_shape(body: Any, where: str) -> None:
    assert isinstance(body, dict) and set(body) == {"error"}, f"{where}: {body!r}"
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, f"{where}: {body!r}"
    assert isinstance(error["message"], str) and error["message"], where
    assert error["code"] is None or isinstance(error["code"], str), where


def check(http: httpx.Client, path: str, body: dict[str, Any]) -> None:
    started = time.monotonic()
    # ensure_ascii: lone surrogates travel as \\ud800 escapes, the way a JavaScript client sends them
    payload = json.dumps(body).encode()
    with http.stream("POST", path, content=payload, headers={"content-type": "application/json"}) as r:
        raw = r.read()
    where = f"POST {path} {payload[:300]!r}"
    assert time.monotonic() - started < REQUEST_TIMEOUT, where
    assert r.status_code < 500, f"{where} → {r.status_code} {raw[:300]!r}"
    content_type = r.headers.get("content-type", "")
    if r.status_code >= 400:
        assert content_type.startswith("application/json"), where
        assert_error_shape(json.loads(raw), where)
    elif content_type.startswith("text/event-stream"):
        text = raw.decode()
        last = text.rstrip("\n").rsplit("\n\n", 1)[-1]
        ended = text.endswith("data: [DONE]\n\n") or last.startswith(_RESPONSE_ENDS)
        assert ended or '"speech.audio.done"' in text, f"{where}: {text[-200:]!r}"
        for line in text.splitlines():
            if line.startswith("data: {") and '"error"' in line[:15]:
                assert_error_shape(json.loads(line[6:]), where)
    elif content_type.startswith("application/json"):
        assert isinstance(json.loads(raw), dict), where
    else:
        assert content_type.startswith("audio/"), f"{where}: {content_type}"


@FUZZ
@given(body=CHAT)
def test_fuzz_chat_completions(http: httpx.Client, body: dict[str, Any]) -> None:
    check(http, "/chat/completions", body)


@FUZZ
@given(body=COMPLETION)
def test_fuzz_completions(http: httpx.Client, body: dict[str, Any]) -> None:
    check(http, "/completions", body)


@FUZZ
@given(body=RESPONSES)
def test_fuzz_responses(http: httpx.Client, body: dict[str, Any]) -> None:
    check(http, "/responses", body)


@FUZZ
@given(body=SPEECH)
def test_fuzz_speech(http: httpx.Client, body: dict[str, Any]) -> None:
    check(http, "/audio/speech", body)


def test_still_serving_after_the_fuzzing(http: httpx.Client) -> None:
    r = http.post("/chat/completions", json={"model": LLM, "messages": [{"role": "user", "content": "ok"}]})
    assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "You said 1 word: ok."
