"""End to end: the official openai SDK → gateway (uvicorn) → device client and pool → emulator.

After every test the emulator holds exactly the instances the pool holds (nothing leaked).
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import openai
import pytest
from PIL import Image

from e2e_harness import Harness
from stackflow_openai.config import ImageSettings, ModelSettings, PoolSettings, Settings
from stackflow_openai.emulator import ScriptedEngine, Timing

LLM = "qwen2.5-0.5B-p256-ax630c"
VLM = "internvl2.5-1B-364-ax630c"


class RecordingEngine(ScriptedEngine):
    """The scripted engine, plus a record of what reached each generation (system prompt, user turn)."""

    def __init__(self, timing: Timing | None = None) -> None:
        super().__init__(timing=timing or Timing())
        self.prompts: list[tuple[str, str]] = []

    async def open_llm(self, model, settings):  # type: ignore[no-untyped-def]
        session = await super().open_llm(model, settings)
        record, generate = self.prompts, session.generate

        def recording_generate(prompt, *, images, max_new_tokens):  # type: ignore[no-untyped-def]
            record.append((settings.system_prompt, prompt))
            return generate(prompt, images=images, max_new_tokens=max_new_tokens)

        session.generate = recording_generate  # type: ignore[method-assign]
        return session


@pytest.fixture
def harness():
    h = Harness(engine=RecordingEngine()).start()
    with h.serving():
        yield h


def test_chat_non_stream_and_stream_with_usage(harness):
    c = harness.sdk()
    reply = c.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "alpha beta"}])
    choice = reply.choices[0]
    assert choice.message.content == "You said 2 words: alpha beta."
    assert choice.finish_reason == "stop" and choice.message.role == "assistant"
    assert reply.usage.completion_tokens > 0 and reply.usage.prompt_tokens > 10
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    chunks = list(
        c.chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": "alpha beta"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
    assert text == "You said 2 words: alpha beta."
    assert [ch.choices[0].finish_reason for ch in chunks if ch.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == reply.usage.completion_tokens
    # Same setup both times: one unit served both requests.
    assert len(harness.pool_work_ids()) == 1


def test_async_sdk_stream(harness):
    async def run() -> str:
        ac = openai.AsyncOpenAI(base_url=harness.base_url, api_key="unused", max_retries=0)
        stream = await ac.chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": "one two three"}], stream=True
        )
        parts = [ch.choices[0].delta.content or "" async for ch in stream if ch.choices]
        await ac.close()
        return "".join(parts)

    assert asyncio.run(run()) == "You said 3 words: one two three."


def test_completions_with_a_list_of_prompts(harness):
    c = harness.sdk()
    reply = c.completions.create(model=LLM, prompt=["red", "green blue"], max_tokens=50)
    assert [ch.text for ch in reply.choices] == ["You said 1 word: red.", "You said 2 words: green blue."]
    assert [ch.index for ch in reply.choices] == [0, 1]
    streamed = "".join(
        ch.choices[0].text for ch in c.completions.create(model=LLM, prompt="red", stream=True)
    )
    assert streamed == "You said 1 word: red."


def test_max_tokens_1_then_the_same_unit_serves_again(harness):
    c = harness.sdk()
    reply = c.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "a b c d"}], max_tokens=1
    )
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 1
    assert reply.choices[0].message.content == "You"
    units = harness.pool_work_ids()
    again = c.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "e f"}], max_tokens=200
    )
    assert again.choices[0].message.content == "You said 2 words: e f."
    assert harness.pool_work_ids() == units  # reused, not set up again


def test_stop_across_deltas(harness):
    c = harness.sdk()
    # The scripted engine sends one word per piece, so "beta gam" spans two deltas.
    reply = c.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "alpha beta gamma"}], stop=["beta gam"]
    )
    assert reply.choices[0].message.content == "You said 3 words: alpha "
    assert reply.choices[0].finish_reason == "stop"
    text = "".join(
        ch.choices[0].delta.content or ""
        for ch in c.chat.completions.create(
            model=LLM,
            messages=[{"role": "user", "content": "alpha beta gamma"}],
            stop="beta gam",
            stream=True,
        )
        if ch.choices
    )
    assert text == "You said 3 words: alpha "


def test_braces_backslashes_emoji_and_japanese_reach_the_device_intact(harness):
    text = 'Code: {"a": [1, {"b": "\\\\n"}]} \\ end } { 😀👍🏽 日本語のテキスト'
    system = "You are {name}\\. Reply in 日本語 😀."
    reply = harness.sdk().chat.completions.create(
        model=LLM, messages=[{"role": "system", "content": system}, {"role": "user", "content": text}]
    )
    assert reply.choices[0].finish_reason == "stop"
    assert harness.engine.prompts[-1] == (system, text)


def test_long_conversation_is_truncated_to_the_p256_window(harness):
    messages = [{"role": "system", "content": "Be brief."}]
    for i in range(30):
        messages.append({"role": "user", "content": f"Question number {i} about the weather in town {i}?"})
        messages.append({"role": "assistant", "content": f"Answer number {i}: it is sunny in town {i}."})
    messages.append({"role": "user", "content": "And the last question?"})
    reply = harness.sdk().chat.completions.create(model=LLM, messages=messages)
    assert reply.choices[0].finish_reason == "stop"
    sent = harness.engine.prompts[-1][1]
    assert sent.endswith("And the last question?")
    assert "town 29" in sent and "town 0?" not in sent  # oldest turns dropped first
    assert reply.usage.prompt_tokens <= 256 - 20
    # assert_no_leak (fixture) also checks that the emulator counted no prefill overflow.


def test_an_over_long_single_message_is_400(harness):
    with pytest.raises(openai.BadRequestError) as err:
        harness.sdk().chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": "word " * 400}]
        )
    assert err.value.code == "context_length_exceeded"
    assert err.value.status_code == 400


def test_unknown_model_and_malformed_json(harness):
    with pytest.raises(openai.NotFoundError) as err:
        harness.sdk().chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "x"}])
    assert err.value.code == "model_not_found" and LLM in err.value.message
    r = httpx.post(
        f"{harness.base_url}/chat/completions",
        content=b'{"model": ',
        timeout=10,
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}


def _jpeg(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), color).save(buf, "JPEG")
    return buf.getvalue()


def _png(color: str) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (16, 16), color).save(buf, "PNG")
    return buf.getvalue()


class _ImageServer:
    def __enter__(self) -> str:
        png = _png("blue")

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "image/png")
                self.send_header("Content-Length", str(len(png)))
                self.end_headers()
                self.wfile.write(png)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"127.0.0.1:{self.server.server_address[1]}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()


def test_images_by_data_url_and_by_allowed_url_and_a_refused_private_address():
    with _ImageServer() as host:
        settings = Settings(images=ImageSettings(allowed_hosts=[host]))
        with Harness(settings=settings, engine=RecordingEngine()).start().serving() as h:
            c = h.sdk()
            data_url = "data:image/jpeg;base64," + base64.b64encode(_jpeg("red")).decode()
            content = [
                {"type": "text", "text": "what is this"},
                {"type": "image_url", "image_url": {"url": data_url}},
            ]
            reply = c.chat.completions.create(model=VLM, messages=[{"role": "user", "content": content}])
            assert reply.choices[0].message.content.startswith("I see 1 image.")
            content[1] = {"type": "image_url", "image_url": {"url": f"http://{host}/cat.png"}}
            reply = c.chat.completions.create(model=VLM, messages=[{"role": "user", "content": content}])
            assert reply.choices[0].message.content.startswith("I see 1 image.")
            # The same server under another name (not allowed) is a private address: refused.
            port = host.split(":")[1]
            content[1] = {"type": "image_url", "image_url": {"url": f"http://localhost:{port}/cat.png"}}
            with pytest.raises(openai.BadRequestError) as err:
                c.chat.completions.create(model=VLM, messages=[{"role": "user", "content": content}])
            assert "image_url" in (err.value.param or "")


def test_20_concurrent_requests_on_pool_size_2():
    settings = Settings(
        models={"small": ModelSettings(device_model=LLM, pool_size=2)},
        pool=PoolSettings(queue_limit=6, queue_timeout=2.0),
    )
    with Harness(settings=settings, timing=Timing(tokens_per_second=200)).start().serving() as h:
        c = h.sdk()

        def one(i: int) -> tuple[str, object]:
            try:
                r = c.chat.completions.create(model="small", messages=[{"role": "user", "content": f"n {i}"}])
                return "ok", r.choices[0].message.content
            except openai.APIStatusError as exc:
                return str(exc.status_code), exc.response.headers.get("retry-after")

        with ThreadPoolExecutor(20) as ex:
            results = list(ex.map(one, range(20), timeout=60))
        statuses = [s for s, _ in results]
        assert set(statuses) <= {"ok", "503"}, statuses
        assert statuses.count("ok") >= 2
        assert all(int(retry) >= 1 for s, retry in results if s == "503")
        assert len(h.live_instances()) <= 2


def test_client_disconnect_mid_stream_then_the_same_unit_serves_the_next_request():
    with Harness(timing=Timing(tokens_per_second=50)).start().serving() as h:
        body = {"model": LLM, "stream": True, "messages": [{"role": "user", "content": "w " * 40}]}
        with httpx.stream("POST", f"{h.base_url}/chat/completions", json=body, timeout=30) as r:
            lines = r.iter_lines()
            assert next(lines).startswith("data: ")  # the stream started, then the client goes away
        units = h.pool_work_ids()
        assert len(units) == 1
        reply = h.sdk().chat.completions.create(model=LLM, messages=[{"role": "user", "content": "x y"}])
        assert reply.choices[0].message.content == "You said 2 words: x y."
        assert h.pool_work_ids() == units


def test_orphans_are_exited_at_start_and_every_instance_at_shutdown():
    # orphan_cleanup: all (the default, "owned", spares units it did not set up: test_orphan_cleanup.py)
    from stackflow_openai.config import PoolSettings
    from stackflow_openai.stackflow.connection import Connection
    from stackflow_openai.stackflow.setups import llm_setup

    h = Harness(settings=Settings(pool=PoolSettings(orphan_cleanup="all")))
    h.thread.start()
    h.call(h.start_emulator)

    async def orphan() -> str:
        # An earlier run that died: it set a unit up and vanished without `exit`.
        conn = await Connection.open("127.0.0.1", h.emulator.port)
        setup = llm_setup(LLM, system_prompt="left over", max_token_len=1023)
        reply = await conn.request("llm", "setup", object="llm.setup", data=setup, timeout=10)
        await conn.close()
        return reply.work_id

    orphan_id = h.call(orphan)
    assert [i["work_id"] for i in h.live_instances()] == [orphan_id]
    h.call(h._start)
    try:
        assert h.live_instances() == []
        h.sdk().chat.completions.create(model=LLM, messages=[{"role": "user", "content": "hi"}])
        assert len(h.live_instances()) == 1
        h.stop_gateway()
        assert h.live_instances() == []  # the gateway exited what it set up
    finally:
        h.stop()


def test_openai_proxy_forwards_to_an_upstream_server():
    upstream = Harness().start()
    try:
        settings = Settings(
            models={"remote": ModelSettings(type="openai_proxy", base_url=upstream.base_url, model=LLM)}
        )
        h = Harness(settings=settings).start()
        try:
            c = h.sdk()
            assert "remote" in [m.id for m in c.models.list().data]
            reply = c.chat.completions.create(
                model="remote", messages=[{"role": "user", "content": "up stream"}]
            )
            assert reply.choices[0].message.content == "You said 2 words: up stream."
            chunks = list(
                c.chat.completions.create(
                    model="remote", messages=[{"role": "user", "content": "up"}], stream=True
                )
            )
            assert (
                "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices)
                == "You said 1 word: up."
            )
            r = httpx.post(
                f"{h.base_url}/chat/completions", json={"model": "remote", "messages": []}, timeout=10
            )
            assert r.status_code == 400 and "error" in r.json()  # the upstream's error, passed through
            assert h.live_instances() == []  # nothing ran on the gateway's own device
        finally:
            h.stop()
    finally:
        upstream.stop()


def test_models_list_and_get(harness):
    c = harness.sdk()
    ids = [m.id for m in c.models.list().data]
    assert LLM in ids and VLM in ids and "whisper-tiny" in ids
    model = c.models.retrieve(LLM)
    assert model.id == LLM and model.object == "model" and model.owned_by
    raw = httpx.get(f"{harness.base_url}/models", timeout=10).json()
    assert json.dumps(raw)  # plain JSON
    assert raw["object"] == "list"


def test_image_tokens_count_against_the_vlm_prefill_window(harness):
    data_url = "data:image/jpeg;base64," + base64.b64encode(_jpeg("green")).decode()
    text = " ".join(f"word{i}" for i in range(60))  # fits 256 alone, not with a 169-token image
    c = harness.sdk()
    reply = c.chat.completions.create(model=VLM, messages=[{"role": "user", "content": text}])
    assert reply.choices[0].finish_reason == "stop"
    content = [{"type": "text", "text": text}, {"type": "image_url", "image_url": {"url": data_url}}]
    with pytest.raises(openai.BadRequestError) as err:
        c.chat.completions.create(model=VLM, messages=[{"role": "user", "content": content}])
    assert err.value.code == "context_length_exceeded"


def test_vlm_text_arrives_verbatim_although_the_vlm_does_not_unescape(harness):
    # The VLM unit takes the raw JSON string without unescaping (protocol §5.3): sent as plain text,
    # "\n" and braces would reach the model as escape sequences. The backend sends base64 instead.
    text = 'Line one\nLine "two" {with braces} \\ and 日本語 😀'
    reply = harness.sdk().chat.completions.create(model=VLM, messages=[{"role": "user", "content": text}])
    assert reply.choices[0].finish_reason == "stop"
    assert harness.engine.prompts[-1][1] == text


def test_pool_evicts_the_idle_unit_for_a_new_setup_but_never_a_busy_one():
    settings = Settings(
        models={"one": ModelSettings(device_model=LLM, pool_size=1)},
        pool=PoolSettings(queue_limit=4, queue_timeout=1.0),
    )
    with Harness(settings=settings, timing=Timing(tokens_per_second=20)).start().serving() as h:
        c = h.sdk()

        def ask(system: str, words: int = 2) -> object:
            return c.chat.completions.create(
                model="one",
                messages=[{"role": "system", "content": system}, {"role": "user", "content": "w " * words}],
            )

        ask("Prompt A")
        first = h.pool_work_ids()
        ask("Prompt B")  # another setup signature: the idle A unit is exited to make room
        second = h.pool_work_ids()
        assert len(first) == len(second) == 1 and first != second
        assert [i["work_id"] for i in h.live_instances()] == second

        # While B's unit streams a long answer, a request needing setup A waits, then gets 503:
        # the busy unit is not taken away from its client.
        with ThreadPoolExecutor(2) as ex:
            long_one = ex.submit(ask, "Prompt B", 60)  # ~3 s at 20 tokens/s
            h.wait_generating()
            with pytest.raises(openai.APIStatusError) as err:
                ask("Prompt A")
            assert err.value.status_code == 503 and err.value.response.headers.get("retry-after")
            assert long_one.result(30).choices[0].finish_reason == "stop"


def test_not_enough_device_memory_is_a_clear_503():
    h = Harness(emulator_kwargs={"cmm_total_kib": 100_000}).start()
    try:
        with pytest.raises(openai.APIStatusError) as err:
            h.sdk().chat.completions.create(model=LLM, messages=[{"role": "user", "content": "hi"}])
        assert err.value.status_code == 503
        assert "memory" in err.value.message
        assert h.live_instances() == []
    finally:
        h.stop()


def test_a_configured_prefill_len_replaces_the_descriptors_window():
    # For chunked-prefill models the descriptor's `_pNNN_` is not the window; the config can say.
    # Shown here the other way round: a window smaller than the descriptor's refuses a prompt that
    # the discovered model (256 tokens) accepts.
    settings = Settings(models={"narrow": ModelSettings(device_model=LLM, prefill_len=64)})
    with Harness(settings=settings).start().serving() as h:
        prompt = "word " * 80
        reply = h.sdk().chat.completions.create(model=LLM, messages=[{"role": "user", "content": prompt}])
        assert reply.choices[0].message.content
        with pytest.raises(openai.BadRequestError) as err:
            h.sdk().chat.completions.create(model="narrow", messages=[{"role": "user", "content": prompt}])
        assert err.value.code == "context_length_exceeded"


def test_a_prefill_len_too_small_for_the_margin_is_a_config_error():
    with pytest.raises(ValueError, match="prefill_len"):
        ModelSettings(device_model=LLM, prefill_len=20)


def test_left_out_messages_are_counted_in_a_header(harness):
    messages = []
    for i in range(30):
        messages.append({"role": "user", "content": f"Question number {i} about the weather in town {i}?"})
        messages.append({"role": "assistant", "content": f"Answer number {i}: it is sunny in town {i}."})
    messages.append({"role": "user", "content": "And the last question?"})
    chat = harness.sdk().chat.completions
    response = chat.with_raw_response.create(model=LLM, messages=messages)
    dropped = int(response.headers["x-dropped-messages"])
    sent = harness.engine.prompts[-1][1]
    # The oldest messages went first: the first one kept is message number `dropped`.
    kept_first = messages[dropped]["content"]
    assert kept_first in sent and messages[dropped - 1]["content"] not in sent
    with chat.with_streaming_response.create(model=LLM, messages=messages, stream=True) as streamed:
        assert streamed.headers["x-dropped-messages"] == str(dropped)
    short = chat.with_raw_response.create(model=LLM, messages=[{"role": "user", "content": "hi"}])
    assert "x-dropped-messages" not in short.headers
