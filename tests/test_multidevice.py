"""Several devices behind one gateway, devices that die, come back and reset; /ready and /v1/models.

Each test runs real emulators on free ports and the gateway under uvicorn (tests/ops_harness.py); the
device monitor probes every 0.1 s.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from ops_harness import MultiHarness
from stackflow_openai.config import DeviceSettings, ModelSettings, Settings
from stackflow_openai.emulator import Timing

LLM = "qwen2.5-0.5B-p256-ax630c"


def ask(client: openai.OpenAI, text: str = "alpha beta", model: str = LLM) -> str:
    reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": text}])
    return reply.choices[0].message.content or ""


def device_of_the_unit(h: MultiHarness) -> str:
    return next(name for name in h.emulators if h.live(name))


@pytest.fixture
def two() -> MultiHarness:
    h = MultiHarness(["a", "b"], timing=Timing(tokens_per_second=40)).start()
    yield h
    h.stop()


def test_one_model_on_two_devices_is_one_model(two: MultiHarness) -> None:
    ids = [m.id for m in two.client().models.list().data]
    assert ids.count(LLM) == 1
    ready = two.get("/ready")
    assert ready.status_code == 200
    assert {d["name"]: d["state"] for d in ready.json()["devices"]} == {"a": "up", "b": "up"}
    # Two requests at once: the second goes to the device with more free capacity (the other one).
    with ThreadPoolExecutor(2) as pool:
        answers = list(pool.map(lambda t: ask(two.client(), t), ["one two", "three four five"]))
    assert answers == ["You said 2 words: one two.", "You said 3 words: three four five."]
    assert len(two.live("a")) == 1 and len(two.live("b")) == 1
    # A warm unit is preferred: sequential requests reuse it instead of loading the model elsewhere.
    for _ in range(3):
        ask(two.client())
    assert len(two.live("a")) == 1 and len(two.live("b")) == 1
    two.assert_no_leak()


def test_a_device_killed_mid_stream_then_restarted(two: MultiHarness) -> None:
    client = two.client()
    ask(client)
    victim = device_of_the_unit(two)
    survivor = "b" if victim == "a" else "a"
    # A slow stream is running on the victim when it dies: it must end (with an error), not hang.
    stream = client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": "w " * 60}], stream=True
    )
    next(iter(stream))
    two.stop_device(victim)
    with pytest.raises((openai.APIError, httpx.HTTPError)):
        for _ in stream:
            pass
    # New requests keep succeeding, on the other device, even before the monitor has noticed.
    for i in range(4):
        assert ask(client, f"after {i}") == f"You said 2 words: after {i}."
    assert len(two.live(survivor)) == 1
    two.wait_for_state(victim, "down")
    ready = two.get("/ready").json()
    assert ready["status"] == "ready"
    down = next(d for d in ready["devices"] if d["name"] == victim)
    assert down["error"]  # says why
    assert LLM in [m.id for m in client.models.list().data]  # still reachable on the survivor

    two.start_device(victim)  # a fresh device on the same address: its old work_ids mean nothing
    two.wait_for_state(victim, "up")
    # The pool on the victim is rebuilt: concurrent requests use both devices again.
    with ThreadPoolExecutor(2) as pool:
        list(pool.map(lambda t: ask(two.client(), t), ["x y", "z"]))
    assert len(two.live(victim)) == 1
    two.assert_no_leak()


def test_continuous_traffic_while_a_device_dies() -> None:
    h = MultiHarness(["a", "b"], timing=Timing(tokens_per_second=400)).start()
    try:
        results: list[str] = []
        stop = threading.Event()

        def traffic() -> None:
            client = h.client()
            while not stop.is_set():
                try:
                    ask(client)
                    results.append("ok")
                except openai.APIStatusError as exc:
                    results.append(str(exc.status_code))

        with ThreadPoolExecutor(3) as pool:
            workers = [pool.submit(traffic) for _ in range(3)]
            time.sleep(0.5)
            h.stop_device("a")
            killed_at = len(results)
            time.sleep(1.0)
            stop.set()
            for w in workers:
                w.result(30)
        after = results[killed_at + 3 :]  # the requests in flight at the kill may fail (503)
        assert set(results) <= {"ok", "503"}, results
        assert after and set(after) == {"ok"}, results
    finally:
        h.stop()


def test_models_list_follows_reachability() -> None:
    settings = Settings(
        devices=[DeviceSettings(name="a"), DeviceSettings(name="b")],  # ports filled in by the harness
        models={"only-a": ModelSettings(device_model=LLM, devices=["a"])},
    )
    h = MultiHarness(["a", "b"], settings=settings).start()
    try:
        client = h.client()
        assert "only-a" in [m.id for m in client.models.list().data]
        assert ask(client, "hi", model="only-a") == "You said 1 word: hi."
        assert h.live("b") == []  # the entry is pinned to device a
        h.stop_device("a")
        h.wait_for_state("a", "down")
        ids = [m.id for m in client.models.list().data]
        assert "only-a" not in ids and LLM in ids
        with pytest.raises(openai.APIStatusError) as err:
            ask(client, "hi", model="only-a")
        assert err.value.status_code == 503 and "no reachable device" in str(err.value.message)
        with pytest.raises(openai.APIStatusError) as err:
            client.models.retrieve("only-a")  # as the list says: not available now (but not unknown)
        assert err.value.status_code == 503 and "none of its devices" in str(err.value.message)
        assert client.models.retrieve(LLM).id == LLM  # still on device b
        h.start_device("a")
        h.wait_for_state("a", "up")
        assert "only-a" in [m.id for m in client.models.list().data]
        assert client.models.retrieve("only-a").id == "only-a"
        assert ask(client, "hi", model="only-a") == "You said 1 word: hi."
        h.assert_no_leak()
    finally:
        h.stop()


def test_no_device_reachable_is_503_on_ready_then_a_device_comes_up() -> None:
    settings = Settings(models={"assistant": ModelSettings(device_model=LLM)})
    h = MultiHarness(["a"], settings).start(down=("a",))
    try:
        ready = h.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["devices"][0]["state"] == "down"
        assert h.client().models.list().data == []
        # Down since start: its models were never read. A configured model, an alias and a model the device
        # would list are 503 "unreachable", never 404 model_not_found (issue 13, item 7).
        for model in ("assistant", "gpt-4o-mini", LLM):
            with pytest.raises(openai.APIStatusError) as err:
                ask(h.client(), model=model)
            assert err.value.status_code == 503, (model, err.value.message)
            assert "unreachable" in str(err.value.message) and "a (127.0.0.1:" in str(err.value.message)
            assert err.value.code == "device_unavailable"
        speech = {"model": "tts-1", "input": "hi", "voice": "alloy"}
        r = httpx.post(f"{h.base_url}/v1/audio/speech", json=speech)
        assert r.status_code == 503 and r.json()["error"]["code"] == "device_unavailable"
        assert h.get("/v1/models/assistant").status_code == 503
        h.start_device("a")
        h.wait_for_state("a", "up")
        assert h.get("/ready").status_code == 200
        assert ask(h.client()) == "You said 2 words: alpha beta."
        assert ask(h.client(), model="assistant") == "You said 2 words: alpha beta."
        # Every device's models are known now: an unknown name is a 404 again.
        with pytest.raises(openai.NotFoundError):
            ask(h.client(), model="no-such-model")
    finally:
        h.stop()


def test_device_reset_during_operation() -> None:
    h = MultiHarness(["a"], timing=Timing(tokens_per_second=40)).start()
    try:
        client = h.client()
        ask(client)
        # 1. A reset while the unit is idle: its work_id is invalid; the next request sets up anew.
        h.reset_device("a")
        assert ask(client, "x") == "You said 1 word: x."
        h.assert_no_leak()
        # 2. A reset in the middle of a stream: that stream fails cleanly, the next request works.
        stream = client.chat.completions.create(
            model=LLM, messages=[{"role": "user", "content": "w " * 60}], stream=True
        )
        next(iter(stream))
        h.reset_device("a")
        with pytest.raises((openai.APIError, httpx.HTTPError)):
            for _ in stream:
                pass
        assert ask(client, "y z") == "You said 2 words: y z."
        assert h.device_state("a") == "up"
        assert len(h.live("a")) == 1
        h.assert_no_leak()
    finally:
        h.stop()
