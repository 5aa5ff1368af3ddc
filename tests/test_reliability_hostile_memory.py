"""Hostile inputs that cost memory or device time out of proportion to their size (issue #13, items 1-2):
a small FLAC holding hours of silence, and images that decode to huge bitmaps.

Memory is measured in a fresh child process (hostile_inputs.run_child), so the figures are the request's
alone. Every test here is bounded to a few seconds: they run in CI.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from audio_fakes import (
    FakeRegistry,
    FakeTranscriptionBackend,
    encode_file,
    make_app,
    sse_events,
    validate_openai,
)
from chat_http import post
from e2e_harness import Harness
from fakes import VLM_INFO, FakeChatBackend, assert_error
from hostile_inputs import image_bomb, run_child, silent_flac, without_length
from stackflow_openai.audio import PcmStream, WindowReader
from stackflow_openai.audio import decode as decode_module
from stackflow_openai.backends.base import ModelEntry
from stackflow_openai.config import ModelSettings, Settings
from stackflow_openai.emulator import ScriptedEngine, Timing
from stackflow_openai.emulator.engines.scripted import ScriptedAsrSession
from stackflow_openai.services import images as images_module
from stackflow_openai.services.images import ImageLoader, ImagePolicy, decode_slots, usable_memory
from stackflow_openai.services.prompt import ImageRef
from stackflow_openai.stackflow.models import ModelDescriptor
from test_e2e_audio import speech_like
from test_http_chat_images import image_message


def app_with_asr(asr: FakeTranscriptionBackend, **extra: Any) -> Any:
    registry = FakeRegistry()
    registry.add(ModelEntry(id="whisper-1", kind="transcription", transcription=asr, extra=extra))
    return make_app(registry)


async def transcribe(app: Any, data: bytes, **fields: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.invalid/v1") as http:
        return await http.post(
            "/audio/transcriptions", files={"file": ("a.flac", data)}, data={"model": "whisper-1", **fields}
        )


# ---- item 1: long audio ------------------------------------------------------------------------

_TRANSCRIBE_IN_A_CHILD = """
import asyncio, json, sys
import httpx
from audio_fakes import FakeRegistry, FakeTranscriptionBackend, make_app
from hostile_inputs import memory_mib, silent_flac
from stackflow_openai.backends.base import ModelEntry
from stackflow_openai.config import ModelSettings, Settings

async def main(seconds):
    asr = FakeTranscriptionBackend()
    registry = FakeRegistry()
    extra = {"max_audio_seconds": 10 * seconds}
    registry.add(ModelEntry(id="whisper-1", kind="transcription", transcription=asr, extra=extra))
    transport = httpx.ASGITransport(app=make_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.invalid/v1") as http:
        async def transcribe(data):
            fields = {"model": "whisper-1", "response_format": "verbose_json"}
            response = await http.post("/audio/transcriptions", files={"file": ("a.flac", data)}, data=fields)
            assert response.status_code == 200, response.text
            return response
        await transcribe(silent_flac(40))  # loads PyAV and numpy, and warms the allocator
        data = silent_flac(seconds)
        before = memory_mib()
        response = await transcribe(data)
        after = memory_mib()
    print(json.dumps({"before": before, "after": after, "duration": response.json()["duration"],
                      "windows": len(asr.windows) - 2, "file_bytes": len(data)}))

asyncio.run(main(float(sys.argv[1])))
"""


def test_half_an_hour_of_flac_silence_is_transcribed_in_constant_memory() -> None:
    # Decoded whole, half an hour is 58 MB of 16 kHz PCM, and joining its pieces doubled that: the peak
    # grew by ~110 MB (an hour: 219 MiB, 145 kept). Window by window it holds one window (0.9 MB) and a
    # second of decoded audio, whatever the length.
    seconds = 1800.0
    result = run_child(_TRANSCRIBE_IN_A_CHILD, str(seconds))
    assert result["duration"] == pytest.approx(seconds, abs=0.01)
    assert result["windows"] >= seconds / 28  # all of it was transcribed, at most 28 s at a time
    grew = result["after"]["hwm"] - result["before"]["rss"]
    assert grew < 40, (
        f"transcribing {seconds:.0f} s of a {result['file_bytes']} B file grew the peak by {grew:.0f} MiB"
    )
    assert result["after"]["rss"] - result["before"]["rss"] < 25  # and nothing of note is kept


async def test_audio_longer_than_the_limit_is_refused_from_the_container_before_any_work() -> None:
    asr = FakeTranscriptionBackend()
    three_hours = silent_flac(3 * 3600)
    response = await transcribe(app_with_asr(asr), three_hours)  # the default limit: 7200 s
    assert response.status_code == 400
    validate_openai(response.json(), "ErrorResponse")
    error = response.json()["error"]
    assert (error["code"], error["param"], error["type"]) == (
        "audio_too_long",
        "file",
        "invalid_request_error",
    )
    assert "7200 s" in error["message"] and "10800 s" in error["message"]
    assert asr.windows == []  # refused from the file's header: nothing decoded, nothing transcribed

    configured = app_with_asr(asr, max_audio_seconds=60)
    for fields in ({}, {"stream": "true"}, {"response_format": "srt"}):
        response = await transcribe(configured, silent_flac(90), **fields)
        assert response.status_code == 400 and response.json()["error"]["code"] == "audio_too_long"
    assert asr.windows == []
    assert (await transcribe(configured, silent_flac(59))).status_code == 200


async def test_audio_of_undeclared_length_is_refused_from_its_packets_before_any_work() -> None:
    data = without_length(silent_flac(600))
    with PcmStream(data) as stream:
        assert stream.declared_seconds is None  # the container cannot say; its packets can
    asr = FakeTranscriptionBackend()
    app = app_with_asr(asr, max_audio_seconds=60)
    for fields in ({}, {"stream": "true"}):
        response = await transcribe(app, data, **fields)
        assert response.status_code == 400
        validate_openai(response.json(), "ErrorResponse")
        assert response.json()["error"]["code"] == "audio_too_long"
        assert "60 s" in response.json()["error"]["message"]
    assert asr.windows == []
    assert (await transcribe(app, without_length(silent_flac(50)))).status_code == 200


async def test_audio_whose_length_shows_only_when_decoded_is_refused_once_decoding_passes_the_limit(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Packets without timing (or lying about it): only decoding finds out, and it stops at the limit.
    monkeypatch.setattr(decode_module, "_demuxed_seconds", lambda data, limit: None)
    data = without_length(silent_flac(600))
    asr = FakeTranscriptionBackend()
    app = app_with_asr(asr, max_audio_seconds=60)

    response = await transcribe(app, data)
    assert response.status_code == 400
    validate_openai(response.json(), "ErrorResponse")
    assert response.json()["error"]["code"] == "audio_too_long"
    assert sum(asr.windows) < 60  # the two windows before the limit; the other 9 minutes never ran

    asr.windows.clear()
    streamed = await transcribe(app, data, stream="true")  # the 200 is out before the limit is met
    events = sse_events(streamed.text)
    assert [e.get("type") for e in events[:-1]] == ["transcript.text.delta"] * 2
    assert events[-1]["error"]["code"] == "audio_too_long"
    assert sum(asr.windows) < 60


def test_closing_a_stream_while_another_thread_decodes_stops_it_at_once() -> None:
    # The event loop closes the reader when a client leaves, while a worker thread may be inside
    # FFmpeg: the read must stop at its next frame and close the container itself, not crash.
    stream = PcmStream(silent_flac(3600))
    pieces: list[int] = []
    ended = threading.Event()

    def read_all() -> None:
        while (piece := stream.read()) is not None:
            pieces.append(len(piece))
        ended.set()

    reader = threading.Thread(target=read_all)
    reader.start()
    while len(pieces) < 5:
        time.sleep(0.001)
    stream.close()
    assert ended.wait(2)
    reader.join(2)
    assert stream.closed and stream.read() is None
    assert stream.seconds < 3000  # of 3600: it stopped (at about 5 s, unless this machine is very busy)


class SlowAsr(FakeTranscriptionBackend):
    """Holds a "unit" for `delay` seconds per window; counts the units held at any time, and sets
    `busy` once `busy_after` windows are done."""

    def __init__(self, delay: float, busy_after: int) -> None:
        super().__init__()
        self.delay = delay
        self.held = 0
        self.busy_after = busy_after
        self.busy = asyncio.Event()

    async def transcribe(self, pcm: bytes, **kwargs: Any) -> str:
        self.held += 1
        try:
            await asyncio.sleep(self.delay)
            return await super().transcribe(pcm, **kwargs)
        finally:
            self.held -= 1
            if len(self.windows) >= self.busy_after:
                self.busy.set()


async def asgi_post_then_leave(app: Any, body: bytes, content_type: str, leave: asyncio.Event) -> list[Any]:
    """Drive the ASGI app as a server would: the whole body, then a disconnect once `leave` is set."""
    sent: list[Any] = []
    body_sent = False

    async def receive() -> dict[str, Any]:
        # Like a server's receive, safe to cancel and to call again (the app's watchers do both).
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        await leave.wait()
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
        "scheme": "http", "path": "/v1/audio/transcriptions", "raw_path": b"/v1/audio/transcriptions",
        "query_string": b"", "root_path": "", "client": ("127.0.0.1", 50000),
        "server": ("127.0.0.1", 8000),
        "headers": [(b"content-type", content_type.encode()), (b"content-length", str(len(body)).encode())],
    }  # fmt: skip
    await app(scope, receive, send)
    return sent


@pytest.mark.parametrize("stream", ["false", "true"])
async def test_a_client_that_leaves_stops_decoding_and_transcribing(
    monkeypatch: pytest.MonkeyPatch, stream: str
) -> None:
    readers: list[WindowReader] = []
    real_init = WindowReader.__init__

    def spy(self: WindowReader, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        readers.append(self)

    monkeypatch.setattr(WindowReader, "__init__", spy)
    asr = SlowAsr(delay=0.05, busy_after=3)
    app = app_with_asr(asr)
    request = httpx.Request(
        "POST", "http://gateway.invalid/", files={"file": ("a.flac", silent_flac(3600))},
        data={"model": "whisper-1", "stream": stream},
    )  # fmt: skip
    leave = asyncio.Event()
    served = asyncio.ensure_future(
        asgi_post_then_leave(app, request.read(), request.headers["content-type"], leave)
    )
    await asyncio.wait_for(asr.busy.wait(), 10)
    leave.set()
    sent = await asyncio.wait_for(served, 5)
    done = len(asr.windows)
    await asyncio.sleep(0.3)  # six more windows' time, if the work went on

    assert len(asr.windows) == done < 10  # of 129
    assert asr.held == 0  # the unit of the window in progress was given back
    (reader,) = readers
    assert reader.decoded_seconds < 10 * 28 + 2  # decoding stopped with the transcription
    if stream == "false":
        assert sent[0]["status"] == 499  # nobody reads it; logs and metrics see a client that left
    else:
        assert sent[0]["status"] == 200
        assert json.loads(b"".join(m.get("body", b"") for m in sent[1:]).split(b"data: ")[1])["type"] == (
            "transcript.text.delta"
        )


def test_a_client_that_leaves_a_device_transcription_returns_the_unit() -> None:
    # The real pool and the emulator's whisper unit: 0.2 s per window, 22 windows if it ran to the end.
    engine = CountingEngine(timing=Timing(transcription_delay=0.2))
    ears = ModelSettings(type="transcription", device_model="whisper-tiny", max_audio_seconds=60)
    with Harness(settings=Settings(models={"ears": ears}), engine=engine).start().serving() as h:
        data = encode_file("wav", speech_like(600.0), 16_000, stereo=False)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(
                f"{h.base_url}/audio/transcriptions",
                files={"file": ("talk.wav", data)},
                data={"model": "whisper-tiny"},
                timeout=httpx.Timeout(10.0, read=1.0),
            )  # the client gives up after a second and closes the connection
        h.assert_no_leak()
        deadline = time.monotonic() + 3
        while any(i["state"] == "busy" for i in h.live_instances()) and time.monotonic() < deadline:
            time.sleep(0.02)
        stopped_at = engine.windows
        time.sleep(0.6)  # three more windows' time, if the work went on
        assert engine.windows == stopped_at <= 8
        assert not any(i["state"] == "busy" for i in h.live_instances())
        # The unit is free for the next client at once.
        short = encode_file("wav", speech_like(3.0), 16_000, stereo=False)
        reply = httpx.post(
            f"{h.base_url}/audio/transcriptions",
            files={"file": ("a.wav", short)},
            data={"model": "whisper-tiny"},
            timeout=5,
        )
        assert reply.status_code == 200 and reply.json()["text"]
        # A configured max_audio_seconds reaches the model (the file's header says 90 s).
        too_long = encode_file("wav", speech_like(90.0), 16_000, stereo=False)
        refused = httpx.post(
            f"{h.base_url}/audio/transcriptions",
            files={"file": ("a.wav", too_long)},
            data={"model": "ears"},
            timeout=5,
        )
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "audio_too_long"
        assert "60 s" in refused.json()["error"]["message"]


class CountingEngine(ScriptedEngine):
    """The scripted engine, counting the windows its asr/whisper sessions transcribe."""

    windows = 0

    async def open_asr(self, model: ModelDescriptor) -> ScriptedAsrSession:
        session = await super().open_asr(model)
        engine = self
        transcribe = session.transcribe

        async def counted(pcm: bytes, *, language: str) -> str:
            engine.windows += 1
            return await transcribe(pcm, language=language)

        session.transcribe = counted  # type: ignore[method-assign]
        return session


# ---- item 2: images ----------------------------------------------------------------------------

PARAM = "messages[0].content[1].image_url"

_IMAGES_IN_A_CHILD = """
import io, json, sys
from PIL import Image
from hostile_inputs import image_bomb, memory_mib, reset_peak
from stackflow_openai.errors import InvalidRequestError
from stackflow_openai.services import image_decode

image_decode.to_jpeg(image_bomb(1500, 1000), "warm-up")  # loads Pillow's codecs
results = []
for width, height, mode, fmt, options in json.loads(sys.argv[1]):
    data = image_bomb(width, height, mode, fmt, **options)
    with Image.open(io.BytesIO(data)) as image:
        source = image.size
        if image.format == "JPEG":
            image.draft(None, image_decode._fitted(source))
        predicted = image_decode.decode_cost(image, source) / 2**20
    image_decode.release_memory()  # making the file left freed pages behind, which the decode could reuse
    before = memory_mib()
    reset_peak()
    try:
        out = Image.open(io.BytesIO(image_decode.to_jpeg(data, "image"))).size
    except InvalidRequestError as exc:
        out = exc.code
    after = memory_mib()
    results.append({"case": [width, height, mode, fmt], "file": len(data), "out": out,
                    "predicted": predicted, "peak": after["hwm"] - before["rss"],
                    "kept": after["rss"] - before["rss"]})
print(json.dumps({"results": results}))
"""


def test_decoding_costs_what_the_model_predicts_and_is_given_back() -> None:
    # One child measures each format and mode: the peak over the RSS before (VmHWM, reset between),
    # against decode_cost's prediction, which the refusal of larger images relies on.
    cases = [
        (3000, 3000, "RGB", "PNG", {}),
        (2500, 2500, "RGBA", "PNG", {}),
        (5000, 5000, "L", "PNG", {}),
        (4000, 4000, "P", "GIF", {}),
        (4000, 4000, "1", "PNG", {}),
        (2000, 2000, "RGB", "WEBP", {}),
        (6300, 6300, "RGB", "JPEG", {}),  # decoded at 1/4 scale: 20 MiB, not 150
        (4000, 4000, "RGB", "JPEG", {"progressive": True}),
        (9000, 900, "RGB", "PNG", {}),
    ]
    for result in run_child(_IMAGES_IN_A_CHILD, json.dumps(cases))["results"]:
        assert isinstance(result["out"], list) and max(result["out"]) == 1024, result
        assert result["peak"] <= result["predicted"] + 6, result  # + page and allocator rounding
        assert result["kept"] < 8, result  # malloc_trim gave the bitmap's pages back


def test_the_png_bomb_of_the_issue_is_refused_before_decoding() -> None:
    # 6300x6300: 170 KB of PNG that cost ~645 MB to convert (4 full-size copies). The 400 names the
    # limit; nothing is decoded.
    cases = [(6300, 6300, "RGB", "PNG", {}), (4700, 4700, "RGBA", "PNG", {}), (3500, 3500, "RGB", "WEBP", {})]
    for result in run_child(_IMAGES_IN_A_CHILD, json.dumps(cases))["results"]:
        assert result["out"] == "image_too_large", result
        assert result["peak"] < 4, result


async def test_a_png_bomb_in_a_chat_request_is_a_400_naming_the_limit() -> None:
    backend = FakeChatBackend(VLM_INFO)
    url = "data:image/png;base64," + base64.b64encode(image_bomb(6300, 6300)).decode()
    response = await post(backend, image_message(url))
    assert_error(response, 400, param=PARAM, code="image_too_large")
    message = response.json()["error"]["message"]
    assert "6300x6300" in message and "megapixels" in message
    assert backend.generations == []


async def test_concurrent_decodes_are_bounded_and_a_cancelled_one_keeps_its_slot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    running, most = 0, 0
    lock = threading.Lock()
    real = images_module.to_jpeg

    def slow_to_jpeg(raw: bytes, param: str) -> bytes:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
        try:
            time.sleep(0.15)
            return real(raw, param)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(images_module, "to_jpeg", slow_to_jpeg)
    loader = ImageLoader(ImagePolicy(decode_slots=2))
    url = "data:image/png;base64," + base64.b64encode(image_bomb(1600, 1200)).decode()
    loads = [asyncio.ensure_future(loader.load(ImageRef(url, PARAM))) for _ in range(8)]
    await asyncio.sleep(0.05)
    loads[0].cancel()  # its decode is running: the slot stays taken until it ends
    results = await asyncio.gather(*loads, return_exceptions=True)
    assert isinstance(results[0], asyncio.CancelledError)
    assert all(isinstance(r, bytes) and r[:2] == b"\xff\xd8" for r in results[1:])
    assert most == 2
    assert running == 0


def test_decode_slots_follow_the_memory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mib = 1024 * 1024
    assert decode_slots(512 * mib) == 1  # never none
    assert decode_slots(4096 * mib) == 3  # an eighth of 4 GiB, in decodes of 160 MiB
    assert decode_slots(64 * 1024 * mib) == 4
    # A container's limit counts, not the host's memory; "max" is no limit.
    limit = tmp_path / "memory.max"
    monkeypatch.setattr(images_module, "_CGROUP_LIMITS", (str(limit),))
    limit.write_text("max\n")
    assert usable_memory() == os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    limit.write_text(f"{512 * mib}\n")
    assert usable_memory() == 512 * mib and decode_slots() == 1
