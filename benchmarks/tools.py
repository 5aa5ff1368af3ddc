"""Tool calling and structured outputs: what the answer filter costs, and how often a real model needs
the re-ask.

    python benchmarks/tools.py [--requests N] [--skip-local]

1. Filter overhead, in-process: the CPU time per request of the answer filter (services/output.py:
   streamed deltas in, tool calls parsed and validated against the schema, or JSON extracted and
   validated, or <think> split off); printed as microseconds per request and as a ratio to a plain
   answer (compare with the gateway's ~1.3-1.6 ms of CPU per request, docs/performance.md).
2. Re-ask rate on the local engine (SmolLM2-135M behind the emulator, scripts/install-local-engines.sh):
   N requests per case through the real gateway, counting device generations. A request that needed
   a re-ask runs two; one that still failed ends with tool_call_invalid / structured_output_failed.
   Two tool formats on the same device model: Qwen's (what a Qwen device model gets) and SmolLM2's
   own (`tool_format: smollm2`, what the local model was tuned on).
3. Placement: prompt tokens with the tools in the system prompt or in the user turn (docs/tools.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from stackflow_openai.services.events import Job
from stackflow_openai.services.output import build_output_spec

LLM = "qwen2.5-0.5B-p256-ax630c"
# A test descriptor with a 1024-token window (tests/data/catalogue): SmolLM2's tool prompt alone is ~240
# tokens, more than a p256 window leaves.
BIG = "qwen2.5-0.5B-p1024-test"
CATALOGUE = Path(__file__).resolve().parent.parent / "tests" / "data" / "catalogue"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
PERSON = {
    "type": "json_schema",
    "json_schema": {
        "name": "person",
        "schema": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
            "required": ["name", "age"],
        },
    },
}
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
CASES: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (request fields, device model, answer text the device streams)
    "plain text": ({}, LLM, "The capital of France is Paris, a city on the Seine."),
    "tool call": ({"tools": [WEATHER]}, LLM, CALL),
    "json_schema": ({"response_format": PERSON}, LLM, '{"name": "Ann", "age": 31}'),
    "reasoning + text": ({}, "deepseek-r1-1.5B-ax630c", "The user asks.</think>\n\nParis is the capital."),
}


def _deltas(text: str) -> list[str]:
    """The answer as the device streams it: about three tokens (~12 characters) per delta."""
    return [text[i : i + 12] for i in range(0, len(text), 12)]


def _filter_run(body: dict[str, Any], model: str, deltas: list[str]) -> None:
    choice = build_output_spec(body, model, {}).factory(lambda _c: None)(0)
    for delta in deltas:
        choice.feed(delta)
    assert not isinstance(choice.finish("stop"), Job)


def _per_call(fn: Callable[[], None], rounds: int) -> float:
    fn()  # warm: imports, schema compilation caches
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    return (time.perf_counter() - start) / rounds


def filter_overhead(rounds: int = 2000) -> None:
    """µs per request, and the ratio to the same filter on a plain answer (no tools, no format)."""
    print("answer filter, CPU per request (in-process, request parsing included):")
    costs = {}
    for name, (body, model, answer) in CASES.items():
        deltas = _deltas(answer)
        costs[name] = _per_call(lambda b=body, m=model, d=deltas: _filter_run(b, m, d), rounds)  # type: ignore[misc]
    for name, cost in costs.items():
        print(f"  {name:18} {cost * 1e6:8.1f} us   ({cost / costs['plain text']:5.1f}x plain text)")


async def local_reask_rate(requests: int) -> None:
    import openai
    import uvicorn

    from stackflow_openai.app import create_app
    from stackflow_openai.backends.registry import GatewayRegistry
    from stackflow_openai.config import DeviceSettings, ModelSettings, Settings
    from stackflow_openai.emulator import Emulator
    from stackflow_openai.emulator.engines.local import LocalEngine
    from stackflow_openai.serve import http_settings

    engine = LocalEngine()
    generations = {"n": 0}
    open_llm = engine.open_llm

    async def counting_open_llm(model: Any, settings: Any) -> Any:
        session = await open_llm(model, settings)
        generate = session.generate

        def counted(prompt: str, **kwargs: Any) -> Any:
            generations["n"] += 1
            return generate(prompt, **kwargs)

        session.generate = counted  # type: ignore[method-assign]
        return session

    engine.open_llm = counting_open_llm  # type: ignore[method-assign]
    emulator = Emulator(engine=engine, catalogue_dirs=[CATALOGUE])
    await emulator.start("127.0.0.1", 0)
    settings = Settings(
        devices=[DeviceSettings(name="emu", host="127.0.0.1", port=emulator.port)],
        models={"smol-format": ModelSettings(device_model=BIG, tool_format="smollm2")},
    )
    app = create_app(GatewayRegistry(settings), http_settings(settings))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning"))
    task = asyncio.ensure_future(server.serve())
    for _ in range(600):  # the first request loads the model, not the start: seconds at most
        if server.started:
            break
        await asyncio.sleep(0.05)
    port = server.servers[0].sockets[0].getsockname()[1]
    client = openai.AsyncOpenAI(
        base_url=f"http://127.0.0.1:{port}/v1", api_key="x", max_retries=0, timeout=120
    )
    questions = ["What is the weather in Paris?", "Is it raining in Oslo?", "Weather for Tokyo, please."]
    cases = {
        "tools, Qwen format": (BIG, {"tools": [WEATHER]}),
        "tools, SmolLM2 format": ("smol-format", {"tools": [WEATHER]}),
        "tool_choice required, Qwen format": (BIG, {"tools": [WEATHER], "tool_choice": "required"}),
        "tool_choice required, SmolLM2 format": (
            "smol-format",
            {"tools": [WEATHER], "tool_choice": "required"},
        ),
        "json_schema": (BIG, {"response_format": PERSON}),
    }
    print(f"\nre-ask rate on the local engine (SmolLM2-135M), {requests} requests per case:")
    try:
        for name, (model, extra) in cases.items():
            counts = {"first": 0, "reask": 0, "failed after re-ask": 0, "failed, not re-asked": 0, "text": 0}
            for i in range(requests):
                before = generations["n"]
                question = questions[i % len(questions)]
                try:
                    reply = await client.chat.completions.create(
                        model=model, messages=[{"role": "user", "content": question}], max_tokens=200, **extra
                    )
                except openai.InternalServerError:
                    # not re-asked: the answer was cut at max_tokens, or a re-ask would not fit the window
                    asked = generations["n"] - before > 1
                    counts["failed after re-ask" if asked else "failed, not re-asked"] += 1
                    continue
                message = reply.choices[0].message
                if not message.tool_calls and "tools" in extra:
                    counts["text"] += 1  # (auto: the model answered in words)
                elif generations["n"] - before > 1:
                    counts["reask"] += 1
                else:
                    counts["first"] += 1
            print(f"  {name:40} {json.dumps(counts)}")
    finally:
        server.should_exit = True
        await task
        await emulator.stop()
        await engine.close()


def _ha_tools() -> list[dict[str, Any]]:
    """Twelve Home Assistant-like intents (names and shapes of HA's Assist API tools)."""
    names = {
        "HassTurnOn": {"name": "string"}, "HassTurnOff": {"name": "string"},
        "HassLightSet": {"name": "string", "brightness": "integer"},
        "HassClimateSetTemperature": {"temperature": "number"},
        "HassClimateGetTemperature": {"name": "string"},
        "HassOpenCover": {"name": "string"}, "HassCloseCover": {"name": "string"},
        "HassLockLock": {"name": "string"}, "HassLockUnlock": {"name": "string"},
        "HassMediaPause": {"name": "string"}, "HassTimerStart": {"minutes": "integer"}, "GetLiveContext": {},
    }  # fmt: skip
    return [
        {
            "type": "function",
            "function": {
                "name": name,
                "description": f"{name[4:] if name.startswith('Hass') else name} (Home Assistant intent)",
                "parameters": {
                    "type": "object",
                    "properties": {k: {"type": t} for k, t in props.items()},
                    "required": list(props),
                },
            },
        }
        for name, props in names.items()
    ]


def placement() -> None:
    """Prompt tokens with the tools in the system prompt (Qwen's template) or in the user turn."""
    from stackflow_openai.backends.base import ChatModelInfo
    from stackflow_openai.tokens import Tokenizers

    tokenizers = Tokenizers()
    info = ChatModelInfo(prefill_len=2048, max_token_len=4096, tokenizer="qwen", template="qwen")
    system, question = "You are a voice assistant for Home Assistant.", "Turn on the kitchen light"
    print("\nQwen prompt tokens, tools in the system prompt vs in the user turn:")
    for label, tools in (("1 tool", [WEATHER]), ("12 HA tools", _ha_tools())):
        block = build_output_spec({"tools": tools}, LLM, {}).tools_prompt()
        in_system = tokenizers.prompt_tokens(info, f"{system}\n\n{block}", question)
        in_user = tokenizers.prompt_tokens(info, system, f"{block}\n\n{question}")
        block_tokens = tokenizers.get("qwen").count(block)
        print(
            f"  {label:12} system {in_system:5}   user {in_user:5}   (the tool block alone: {block_tokens})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=12)
    parser.add_argument("--skip-local", action="store_true")
    args = parser.parse_args()
    filter_overhead()
    placement()
    if not args.skip_local:
        asyncio.run(local_reask_rate(args.requests))


if __name__ == "__main__":
    main()
