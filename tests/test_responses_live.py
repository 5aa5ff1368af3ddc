"""A response being generated is visible to GET /v1/responses/{id} as `in_progress`, with its output so far,
to its own API key only (it is stored when it ends: services/responses_live.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from fakes import FakeChatBackend, Pause, chat_entry, client_for, make_app, serve_in_thread
from responses_schema import validate_responses
from stackflow_openai.app import HttpSettings
from test_responses_background import started, wait_status


def _client(url: str, key: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=url, headers={"Authorization": f"Bearer {key}"}, timeout=10)


async def _until_first_delta(lines: Any) -> str:
    """The response id, once its first text delta has been streamed."""
    response_id = ""
    async for line in lines:
        if line.startswith("data: "):
            event = json.loads(line[6:])
            if event["type"] == "response.created":
                response_id = event["response"]["id"]
            if event["type"] == "response.output_text.delta":
                return response_id
    raise AssertionError("the stream ended before any text")


async def test_a_streaming_response_is_in_progress_for_its_key_until_it_is_stored(tmp_path: Path) -> None:
    backend = FakeChatBackend(script=["Hello", Pause(0.5), " world"])
    settings = HttpSettings(data_dir=str(tmp_path), api_keys=("key-a", "key-b"))
    with serve_in_thread(make_app([chat_entry("m", backend)], settings)) as url:
        async with _client(url, "key-a") as owner, _client(url, "key-b") as other:
            body = {"model": "m", "input": "Hi", "stream": True}
            async with owner.stream("POST", "/v1/responses", json=body) as stream:
                lines = stream.aiter_lines()
                response_id = await _until_first_delta(lines)
                running = await owner.get(f"/v1/responses/{response_id}")
                assert running.status_code == 200
                validate_responses("Response", running.json())
                assert running.json()["status"] == "in_progress"
                assert running.json()["output"][0]["content"][0]["text"] == "Hello"  # streamed so far
                assert (await other.get(f"/v1/responses/{response_id}")).status_code == 404
                async for _ in lines:
                    pass
            done = (await owner.get(f"/v1/responses/{response_id}")).json()
            assert done["status"] == "completed" and done["output"][0]["content"][0]["text"] == "Hello world"
            # Not stored (store: false): not shown while it runs either, as OpenAI.
            async with owner.stream("POST", "/v1/responses", json={**body, "store": False}) as stream:
                lines = stream.aiter_lines()
                response_id = await _until_first_delta(lines)
                assert (await owner.get(f"/v1/responses/{response_id}")).status_code == 404
                async for _ in lines:
                    pass


async def test_a_background_response_is_in_progress_while_the_device_generates_it(tmp_path: Path) -> None:
    backend = FakeChatBackend(script=["Hello", Pause(0.5), " later"])
    async with client_for(make_app([chat_entry("m", backend)], HttpSettings(data_dir=str(tmp_path)))) as http:
        created = (
            await http.post("/v1/responses", json={"model": "m", "input": "Hi", "background": True})
        ).json()
        assert created["status"] == "queued"
        await started(backend)
        running = (await http.get(f"/v1/responses/{created['id']}")).json()
        validate_responses("Response", running)
        assert running["status"] == "in_progress" and running["background"] is True
        done = await wait_status(http, created["id"], "completed")
        assert done["output"][0]["content"][0]["text"] == "Hello later"
