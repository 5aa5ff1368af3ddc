"""The gateway against a misbehaving wire and misbehaving clients: garbage and stray braces, a `reace reset`
line or undecodable bytes on a unit's connection, and clients that leave while the device works; and idle
units evicted to free device memory. After each: the emulator holds exactly the pool's instances.

Helpers and the harness come from test_reliability_faults.py (same stack, default device timeouts here).
"""

from __future__ import annotations

import contextlib
import io
import math
import socket
import threading
import wave
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx

import test_reliability_faults
from e2e_harness import Harness
from stackflow_openai.config import PoolSettings
from stackflow_openai.emulator import Timing
from stackflow_openai.emulator.framing import reace_reset_line
from test_reliability_faults import (
    LLM,
    VLM,
    assert_openai_error,
    assert_serves,
    chat,
    post,
    start,
    stream,
    text_of,
    wait_until,
)

harness = test_reliability_faults.harness  # the same fixture: a started gateway, checked for leaks


# ---- garbage on the wire -------------------------------------------------------------------------


def test_garbage_and_stray_braces_from_another_client_do_not_disturb_the_gateway(harness: Harness) -> None:
    replies: list[bytes] = []
    stop = threading.Event()

    def vandal() -> None:
        with socket.create_connection(("127.0.0.1", harness.emulator.port), timeout=5) as sock:
            sock.settimeout(0.2)
            for i in range(50):
                if stop.is_set():
                    break
                sock.sendall([b"\x00\xff garbage \n", b"}", b'{"a":}}', b"\xc3\x28{}"][i % 4])
                with contextlib.suppress(TimeoutError):
                    replies.append(sock.recv(4096))

    thread = threading.Thread(target=vandal)
    thread.start()
    try:
        for i in range(5):
            status, events, done = stream(harness, chat(f"alpha {i}", stream=True))
            assert status == 200 and done and text_of(events) == f"You said 2 words: alpha {i}."
    finally:
        stop.set()
        thread.join(10)
    assert any(b"reace reset" in r for r in replies)  # the stray braces were answered -1, to the vandal


def test_a_reace_reset_line_on_the_units_connection_fails_that_request_only(harness: Harness) -> None:
    harness.emulator.faults.token_delay = 0.05
    body = chat("one two three four five six seven eight nine", stream=True)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(stream, harness, body)
        wait_until(lambda: any(i["state"] == "busy" for i in harness.live_instances()))
        (work_id,) = harness.pool_work_ids()
        # What the device sends when it sees a stray `}`: the gateway cannot tell which request it
        # concerns, so everything in flight on that connection fails.
        harness.call(lambda: harness.emulator.state.registry[work_id].push_conn.send(reace_reset_line()))
        status, events, done = pending.result(10)
    # Before the first delta it is a 503; after it, an in-band error event and [DONE].
    assert (status == 503 and not done) or (status == 200 and done)
    assert_openai_error(events[-1])
    harness.emulator.faults.token_delay = None
    assert_serves(harness)


def test_undecodable_bytes_from_the_device_are_skipped(harness: Harness) -> None:
    harness.emulator.faults.token_delay = 0.03
    body = chat("one two three four five six", stream=True)
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(stream, harness, body)
        wait_until(lambda: any(i["state"] == "busy" for i in harness.live_instances()))
        (work_id,) = harness.pool_work_ids()
        conn = harness.call(lambda: harness.emulator.state.registry[work_id].push_conn)
        harness.call(lambda: conn.send(b"\xff\xfe not json at all\n[1,2]\n"))
        status, events, done = pending.result(10)
    assert status == 200 and done
    assert text_of(events) == "You said 6 words: one two three four five six."


def test_the_gateway_never_sends_a_stray_brace_even_for_brace_heavy_input(harness: Harness) -> None:
    # A `}` reaching the device outside a string would reset the framing of the gateway's connection.
    text = "}}} {{{ \\} \\{ } { end"
    r = post(harness, chat(text))
    assert r.status_code == 200
    assert r.json()["choices"][0]["message"]["content"] == "You said 1 word: end."


# ---- device memory -------------------------------------------------------------------------------


def test_idle_units_are_evicted_to_free_device_memory(harness: Harness) -> None:
    # 3 GiB of CMM: two idle llm units (2 × 0.53 GiB) and an idle vlm (1.3 GiB) leave 0.63 GiB, too little
    # for a second vlm setup (another system prompt) unless an idle instance is exited first.
    for system in ("one", "two"):
        body = {
            "model": LLM,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
        }
        assert post(harness, body).status_code == 200
    for system in ("three", "four"):
        body = {
            "model": VLM,
            "messages": [{"role": "system", "content": system}, {"role": "user", "content": "hi"}],
        }
        r = post(harness, body)
        assert r.status_code == 200, r.text


# ---- clients that leave while the device works -------------------------------------------------


def leave_after_first_chunk(h: Harness, path: str, **kwargs: Any) -> None:
    with httpx.stream("POST", f"{h.base_url}{path}", timeout=10, **kwargs) as r:
        assert r.status_code == 200, r.read()
        next(r.iter_raw())  # the first piece arrived; the device is still working on the next one


def test_leaving_a_speech_stream_while_the_device_synthesizes_frees_the_unit() -> None:
    # Under uvicorn the disconnect cancels the response task for good (an anyio cancel scope): the
    # backend must not run its clean-up in there, or its lease is never released (found by the soak).
    h = start(timing=Timing(synthesis_seconds_per_char=0.01), pool=PoolSettings(queue_timeout=2.0))
    try:
        text = "Hi. " + "This second sentence takes the device a while to synthesize, " * 2 + "really."
        body = {"model": "tts-1", "voice": "alloy", "input": text, "response_format": "pcm"}
        for _ in range(2):
            leave_after_first_chunk(h, "/audio/speech", json=body)
        r = httpx.post(f"{h.base_url}/audio/speech", json={**body, "input": "Again."}, timeout=10)
        assert r.status_code == 200, r.text
        h.assert_no_leak()
    finally:
        h.stop()


def test_leaving_a_transcription_stream_between_windows_frees_the_unit() -> None:
    h = start(timing=Timing(transcription_delay=0.3), pool=PoolSettings(queue_timeout=2.0))
    try:
        rate, seconds = 16000, 50  # two windows: whisper takes under 30 s at a time
        samples = bytearray()
        for i in range(rate * seconds):
            on = (i / rate) % 3.0 < 2.4
            samples += int(8000 * math.sin(i / 6) if on else 0).to_bytes(2, "little", signed=True)
        out = io.BytesIO()
        with wave.open(out, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(bytes(samples))
        files = {"file": ("a.wav", out.getvalue(), "audio/wav")}
        form = {"model": "whisper-1", "stream": "true"}
        for _ in range(2):
            leave_after_first_chunk(h, "/audio/transcriptions", data=form, files=files)
        r = httpx.post(
            f"{h.base_url}/audio/transcriptions", data={"model": "whisper-1"}, files=files, timeout=20
        )
        assert r.status_code == 200, r.text
        h.assert_no_leak()
    finally:
        h.stop()
