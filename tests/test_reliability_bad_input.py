"""Bad input end to end: each is refused with a 4xx in OpenAI's error shape and a message that says what
is wrong, and the gateway keeps serving (a normal request succeeds afterwards).

One gateway + emulator serves the whole module; a fixture checks after every test that a normal chat
request still works and that no unit instance was leaked.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from e2e_harness import Harness
from stackflow_openai.config import ServerSettings, Settings

LLM = "qwen2.5-0.5B-p256-ax630c"
VLM = "internvl2.5-1B-364-ax630c"
BODY_LIMIT = 256 * 1024


@pytest.fixture(scope="module")
def gateway() -> Iterator[Harness]:
    h = Harness(settings=Settings(server=ServerSettings(max_body_bytes=BODY_LIMIT))).start()
    try:
        yield h
    finally:
        h.stop()


@pytest.fixture(autouse=True)
def still_serving(gateway: Harness) -> Iterator[None]:
    yield
    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        json={"model": LLM, "messages": [{"role": "user", "content": "still serving"}]},
        timeout=10,
    )
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == "You said 2 words: still serving."
    gateway.assert_no_leak()


def post_raw(h: Harness, path: str, body: bytes, **headers: str) -> httpx.Response:
    return httpx.post(
        f"{h.base_url}{path}",
        content=body,
        headers={"content-type": "application/json", **headers},
        timeout=10,
    )


def post(h: Harness, path: str, body: Any) -> httpx.Response:
    return post_raw(h, path, json.dumps(body).encode())


def refused(r: httpx.Response, status: int = 400, *, param: str | None = None, says: str = "") -> str:
    """Assert an OpenAI-shaped 4xx; returns the message."""
    assert r.status_code == status, (r.status_code, r.text)
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["type"] == "invalid_request_error"
    assert isinstance(error["code"], str) and error["code"]
    assert isinstance(error["message"], str) and len(error["message"]) > 10
    if param is not None:
        assert error["param"] == param, error
    assert says.lower() in error["message"].lower(), error["message"]
    return str(error["message"])


def chat(content: Any, **extra: Any) -> dict[str, Any]:
    return {"model": LLM, "messages": [{"role": "user", "content": content}], **extra}


# ---- size ----------------------------------------------------------------------------------------


def test_an_oversized_body_is_413(gateway: Harness) -> None:
    body = json.dumps(chat("x" * (BODY_LIMIT + 10))).encode()
    refused(post_raw(gateway, "/chat/completions", body), 413, says=f"larger than {BODY_LIMIT} bytes")


def test_an_oversized_body_without_content_length_is_413(gateway: Harness) -> None:
    def chunks() -> Iterator[bytes]:
        for _ in range(BODY_LIMIT // 4096 + 2):
            yield b" " * 4096  # chunked transfer: the size is only known by reading

    r = httpx.post(
        f"{gateway.base_url}/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
        timeout=10,
    )
    refused(r, 413, says="larger than")


def test_a_lying_content_length_is_refused_before_the_body_is_read(gateway: Harness) -> None:
    port = int(gateway.base_url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 999999999999\r\n\r\n{}"
        )
        head = sock.recv(65536)
    assert head.startswith(b"HTTP/1.1 413"), head[:100]


def test_a_long_single_token_is_context_length_exceeded(gateway: Harness) -> None:
    refused(post(gateway, "/chat/completions", chat("a" * 100_000)), says="prefill window")


def test_nesting_deeper_than_the_parser_allows_is_400(gateway: Harness) -> None:
    body = b'{"model":"m","messages":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    refused(post_raw(gateway, "/chat/completions", body), says="nested too deeply")


# ---- wrong types and values ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"messages": "hello"}, "messages"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages[0].role"),
        ({"model": 5}, "model"),
        ({"max_tokens": "ten"}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n": 1000}, "n"),
        ({"temperature": -0.1}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 1.5}, "top_p"),
        ({"stream": "maybe"}, "stream"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": 7}, "stop"),
    ],
)
def test_chat_wrong_types_and_values_name_the_parameter(
    gateway: Harness, change: dict[str, Any], param: str
) -> None:
    refused(post(gateway, "/chat/completions", {**chat("hi"), **change}), param=param)


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": LLM}, "prompt"),
        ({"model": LLM, "prompt": [1, 2, 3]}, "prompt"),
        ({"model": LLM, "prompt": "hi", "max_tokens": -5}, "max_tokens"),
        ({"model": LLM, "prompt": "   "}, "prompt"),
    ],
)
def test_completions_wrong_types_and_values(gateway: Harness, body: dict[str, Any], param: str) -> None:
    refused(post(gateway, "/completions", body), param=param)


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"speed": -1}, "speed"),
        ({"speed": 100}, "speed"),
        ({"input": ""}, "input"),
        ({"input": 42}, "input"),
        ({"input": "x" * 5000}, "input"),
        ({"response_format": "midi"}, "response_format"),
        ({"voice": "nobody"}, "voice"),
    ],
)
def test_speech_wrong_types_and_values(gateway: Harness, change: dict[str, Any], param: str) -> None:
    body = {"model": "tts-1", "voice": "alloy", "input": "Hello.", **change}
    refused(post(gateway, "/audio/speech", body), param=param)


@pytest.mark.parametrize(
    "body",
    [b"", b"{", b"[1, 2]", b'"just a string"', b"null", b"\xff\xfe{}", b'{"model": NaN}', b'{"a": Infinity}'],
)
def test_bodies_that_are_not_a_json_object(gateway: Harness, body: bytes) -> None:
    refused(post_raw(gateway, "/chat/completions", body), says="json")


def test_max_tokens_above_the_model_is_clamped_and_beyond_any_model_refused(gateway: Harness) -> None:
    # By design (docs/decisions.md) max_tokens is a cap the gateway enforces, clamped to the model's
    # capacity after the prompt: clients send defaults such as 4096 to 1023-token device models.
    r = post(gateway, "/chat/completions", chat("a b", max_tokens=100_000))
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "stop"
    # A value no model could mean is a mistake: refused, naming the parameter and the bound.
    for field in ("max_tokens", "max_completion_tokens"):
        message = refused(post(gateway, "/chat/completions", chat("a b", **{field: 10**30})), param=field)
        assert "2147483647" in message
    body = {"model": LLM, "prompt": "a b", "max_tokens": 2**31}
    refused(post(gateway, "/completions", body), param="max_tokens")
    # A number that is not an integer at all is refused.
    refused(
        post_raw(
            gateway, "/chat/completions", json.dumps(chat("a b")).encode()[:-1] + b',"max_tokens":1e400}'
        )
    )


# ---- images --------------------------------------------------------------------------------------


def image_chat(url: str) -> dict[str, Any]:
    content = [{"type": "text", "text": "what is it"}, {"type": "image_url", "image_url": {"url": url}}]
    return {"model": VLM, "messages": [{"role": "user", "content": content}]}


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("data:image/png;base64,!!!not-base64!!!", "not valid base64"),
        ("data:image/png;base64,iVBORw0KGgo", "not valid base64"),  # bad padding
        (
            "data:image/png;base64," + base64.b64encode(b"hello, I am not a PNG").decode(),
            "could not be decoded",
        ),
        ("data:image/jpeg;base64," + base64.b64encode(b"\xff\xd8\xff\xe0" + b"\0" * 64).decode(), "decoded"),
        ("data:text/plain;base64,aGVsbG8=", "not image"),
        ("data:image/png,rawdata", "must be base64"),
        ("ftp://example.com/cat.png", "http(s)"),
        ("http://127.0.0.1:1/cat.png", "private"),
        # issue 13, item 6: URLs httpx refuses (these were 500s)
        ("http://[::1", "not valid"),
        ("http://127.0.0.1:70000/cat.png", "out of range"),
        ("http://xn--zz.invalid/cat.png", "not valid"),
    ],
)
def test_bad_images(gateway: Harness, url: str, says: str) -> None:
    refused(post(gateway, "/chat/completions", image_chat(url)), says=says)


def test_a_truncated_jpeg_is_refused_before_it_reaches_the_device(gateway: Harness) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(buffer, "JPEG")
    data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    url = "data:image/jpeg;base64," + base64.b64encode(data).decode()
    refused(post(gateway, "/chat/completions", image_chat(url)), says="could not be decoded")


def test_an_image_for_a_text_only_model(gateway: Harness) -> None:
    body = image_chat("data:image/png;base64,AAAA")
    body["model"] = LLM
    refused(post(gateway, "/chat/completions", body), says="does not accept images")


# ---- audio ---------------------------------------------------------------------------------------


def transcribe(h: Harness, data: bytes, name: str = "a.wav", **fields: str) -> httpx.Response:
    return httpx.post(
        f"{h.base_url}/audio/transcriptions",
        files={"file": (name, data)},
        data={"model": "whisper-1", **fields},
        timeout=10,
    )


def _wav_header_only() -> bytes:
    return (
        b"RIFF" + struct.pack("<I", 36) + b"WAVEfmt " + struct.pack("<IHHIIHH", 16, 1, 1, 16000, 32000, 2, 16)
    )


@pytest.mark.parametrize(
    ("data", "name"),
    [
        (b"this is a text file, not audio", "a.wav"),
        (b"", "a.wav"),
        (b"\x00" * 1000, "a.mp3"),
        (_wav_header_only(), "a.wav"),  # a header and no samples
        (b"\x89PNG\r\n\x1a\n" + b"\0" * 200, "a.png"),
    ],
)
def test_audio_that_is_not_audio(gateway: Harness, data: bytes, name: str) -> None:
    refused(transcribe(gateway, data, name), param="file")


def test_transcription_form_errors(gateway: Harness) -> None:
    wav = _wav_header_only()
    refused(transcribe(gateway, wav, response_format="xml"), param="response_format")
    refused(
        httpx.post(f"{gateway.base_url}/audio/transcriptions", json={"model": "whisper-1"}, timeout=10),
        says="multipart",
    )
    r = httpx.post(
        f"{gateway.base_url}/audio/transcriptions", data={"model": "whisper-1"}, files={}, timeout=10
    )
    assert r.status_code == 400


# ---- unicode -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/chat/completions", b'{"model":"%s","messages":[{"role":"user","content":"hi \\ud800 there"}]}'),
        (
            "/chat/completions",
            b'{"model":"%s","stream":true,"messages":[{"role":"user","content":"\\udfff"}]}',
        ),
        ("/chat/completions", b'{"model":"%s\\ud800","messages":[{"role":"user","content":"hi"}]}'),
        ("/chat/completions", b'{"model":"%s","stop":"\\udc00","messages":[{"role":"user","content":"hi"}]}'),
        ("/chat/completions", b'{"model":"%s","messages":[{"role":"user","content":"hi"}],"x\\ud800":1}'),
        ("/completions", b'{"model":"%s","prompt":"a \\ude00 b"}'),
        ("/audio/speech", b'{"model":"tts-1","voice":"alloy","input":"%s \\ud83d"}'),
        # issue 13, item 6: the exact forms that were 500s
        ("/chat/completions", b'{"model":"\\ud800","messages":[{"role":"user","content":"%s"}]}'),
        ("/completions", b'{"model":"\\ud800","prompt":"%s"}'),
        ("/audio/speech", b'{"model":"tts-1","voice":"\\ud800","input":"%s"}'),
    ],
)
def test_lone_surrogates_are_refused_and_named(gateway: Harness, path: str, body: bytes) -> None:
    message = refused(post_raw(gateway, path, body.replace(b"%s", LLM.encode())), says="surrogate")
    assert "\\u" in message or "surrogate" in message


def test_a_surrogate_pair_escape_is_an_emoji_not_an_error(gateway: Harness) -> None:
    body = b'{"model":"%s","messages":[{"role":"user","content":"smile \\ud83d\\ude00"}]}' % LLM.encode()
    r = post_raw(gateway, "/chat/completions", body)
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "You said 1 word: smile."


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("nul\u0000inside", "nul inside"),
        ("مرحبا بالعالم", "مرحبا بالعالم"),  # right-to-left
        ("\u202eevil\u202c text", "evil text"),  # bidi override characters
        ("family 👨‍👩‍👧‍👦 and 😀🎉", "family and"),  # 4-byte emoji and ZWJ sequences
        ("e\u0301 combining", "combining"),
        ("\ufeffbom first", "bom first"),
    ],
)
def test_unicode_edge_cases_are_served(gateway: Harness, text: str, words: str) -> None:
    r = post(gateway, "/chat/completions", chat(text))
    assert r.status_code == 200, r.text
    content = r.json()["choices"][0]["message"]["content"]
    assert content.startswith("You said") and all(w in content for w in words.split())


def test_a_very_long_word_within_the_window_is_served(gateway: Harness) -> None:
    word = "supercalifragilistic" * 8  # one "word" of 160 characters, a few dozen tokens
    r = post(gateway, "/chat/completions", chat(word))
    assert r.status_code == 200 and word in r.json()["choices"][0]["message"]["content"]


def test_non_finite_numbers_are_not_json(gateway: Harness) -> None:
    for constant in (b"NaN", b"Infinity", b"-Infinity"):
        body = b'{"model":"%s","temperature":%s,"messages":[{"role":"user","content":"x"}]}'
        refused(
            post_raw(gateway, "/chat/completions", body % (LLM.encode(), constant)), says="not a valid json"
        )


# ---- client-chosen names in response headers -----------------------------------------------------


@pytest.mark.parametrize("name", ["é", "日本", "😀", "a\r\nSet-Cookie: evil=1", "tab\there", "a,b", " "])
def test_unknown_parameters_with_any_name_are_reported_in_a_valid_header(gateway: Harness, name: str) -> None:
    for path, body in [
        ("/chat/completions", {**chat("hi"), name: 1}),
        ("/chat/completions", {**chat("hi", stream=True), name: 1}),
        ("/completions", {"model": LLM, "prompt": "hi", name: 1}),
        (
            "/audio/speech",
            {"model": "tts-1", "voice": "alloy", "input": "Hi.", "response_format": "pcm", name: 1},
        ),
    ]:
        r = post(gateway, path, body)
        assert r.status_code == 200, (path, r.text)
        header = r.headers["x-ignored-params"]
        assert header.isascii() and "\r" not in header and "\n" not in header
        assert json.dumps(name) in header or name in header
        assert "set-cookie" not in {k.lower() for k in r.headers}


# ---- clients that go away ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "content_type"),
    [
        ("/v1/chat/completions", "application/json"),
        ("/v1/audio/speech", "application/json"),
        ("/v1/audio/transcriptions", "multipart/form-data; boundary=XyZ"),
    ],
)
def test_a_client_leaving_mid_body_is_not_a_server_error(
    gateway: Harness, caplog: pytest.LogCaptureFixture, path: str, content_type: str
) -> None:
    caplog.set_level(logging.ERROR)
    port = int(gateway.base_url.rsplit(":", 1)[1].split("/")[0])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: {content_type}\r\nContent-Length: 5000\r\n\r\n"
        )
        sock.sendall(head.encode() + b'--XyZ\r\nContent-Disposition: form-data; name="model"\r\n\r\n{"mo')
        time.sleep(0.1)  # the gateway is now waiting for the rest of the body
    time.sleep(0.3)
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []
