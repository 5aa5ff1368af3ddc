"""A ctx model on two devices: each conversation is routed back to the device whose unit holds it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import openai

from ops_harness import MultiHarness
from stackflow_openai.config import ModelSettings, Settings
from stackflow_openai.emulator import Timing

CTX = "qwen2.5-HA-0.5B-ctx-ax630c"


def say(client: openai.OpenAI, messages: list[dict[str, str]], text: str) -> str:
    messages.append({"role": "user", "content": text})
    reply = client.chat.completions.create(model="chat", messages=messages)  # type: ignore[arg-type]
    answer = reply.choices[0].message.content or ""
    messages.append({"role": "assistant", "content": answer})
    return answer


def test_each_conversation_goes_back_to_the_device_that_holds_it() -> None:
    settings = Settings(models={"chat": ModelSettings(device_model=CTX, pool_size=1)})
    h = MultiHarness(["a", "b"], settings=settings, timing=Timing(tokens_per_second=40)).start()
    try:
        client = h.client()
        ann: list[dict[str, str]] = []
        bob: list[dict[str, str]] = []
        with ThreadPoolExecutor(2) as pool:  # at once: one unit on each device
            list(
                pool.map(lambda pair: say(client, *pair), [(ann, "my name is Ann"), (bob, "my name is Bob")])
            )
        assert len(h.live("a")) == 1 and len(h.live("b")) == 1
        for n in range(3):  # one after the other: the router must pick the device holding each one
            a = say(client, ann, f"question {n} from Ann")
            b = say(client, bob, f"question {n} from Bob")
            # Continued (the bare new message, the rest from the cache), never the other's words.
            assert a.startswith(f"You said 4 words: question {n} from Ann.") and "Bob" not in a
            assert b.startswith(f"You said 4 words: question {n} from Bob.") and "Ann" not in b
        h.assert_no_leak()
    finally:
        h.stop()
