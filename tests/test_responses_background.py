"""Background responses: answered at once as queued, finished by their own task, cancelled on request
(the unit paused), cancelled and stored when the gateway stops, reported failed after a restart."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path
from typing import Any

import httpx

from fakes import FakeChatBackend, Pause, assert_error, chat_entry, client_for, make_app
from responses_schema import validate_responses
from stackflow_openai.app import HttpSettings
from stackflow_openai.store import SqliteResponseStore, StoredResponse
from stackflow_openai.store.sqlite import DB_NAME


async def started(backend: FakeChatBackend) -> None:
    """Until the backend has a generation running (the fake records no event to wait on)."""
    for _ in range(500):
        if backend.generations:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("no generation started")


async def wait_status(http: httpx.AsyncClient, rid: str, *statuses: str) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while True:
        body: dict[str, Any] = (await http.get(f"/v1/responses/{rid}")).json()
        if body["status"] in statuses:
            return body
        assert time.monotonic() < deadline, body["status"]
        await asyncio.sleep(0.02)


async def test_a_background_response_is_queued_then_completed(tmp_path: Path) -> None:
    backend = FakeChatBackend(script=["Hello", Pause(0.2), " later"])
    async with client_for(make_app([chat_entry("m", backend)], HttpSettings(data_dir=str(tmp_path)))) as http:
        created = (
            await http.post("/v1/responses", json={"model": "m", "input": "Hi", "background": True})
        ).json()
        validate_responses("Response", created)
        assert created["status"] == "queued" and created["background"] is True and created["output"] == []
        done = await wait_status(http, created["id"], "completed")
        validate_responses("Response", done)
        assert done["output"][0]["content"][0]["text"] == "Hello later" and done["background"] is True
        again = (await http.post(f"/v1/responses/{created['id']}/cancel")).json()
        assert again == done  # an ended response is returned as it is


async def test_cancel_pauses_the_unit_and_stores_it_cancelled(tmp_path: Path) -> None:
    # The first generation never ends by itself (the device keeps generating); later ones do.
    backend = FakeChatBackend(script=lambda _prompt, n: ["Hello", Pause(None), "never"] if n == 0 else ["ok"])
    async with client_for(make_app([chat_entry("m", backend)], HttpSettings(data_dir=str(tmp_path)))) as http:
        created = (
            await http.post("/v1/responses", json={"model": "m", "input": "Hi", "background": True})
        ).json()
        await started(backend)
        cancelled = (await http.post(f"/v1/responses/{created['id']}/cancel")).json()
        validate_responses("Response", cancelled)
        assert cancelled["status"] == "cancelled"
        assert backend.generations[-1].exited_early and backend.generations[-1].cleanup_done
        assert backend.leases[-1].exited and backend.leases[-1].cleanup_done
        plain = (await http.post("/v1/responses", json={"model": "m", "input": "Hi", "store": True})).json()
        assert_error(await http.post(f"/v1/responses/{plain['id']}/cancel"), 400, param="response_id")
        assert_error(await http.post("/v1/responses/resp_nope/cancel"), 404)


async def test_stopping_the_gateway_cancels_and_a_restart_reports_leftovers_failed(tmp_path: Path) -> None:
    backend = FakeChatBackend(script=["Hello", Pause(None)])
    settings = HttpSettings(data_dir=str(tmp_path))
    async with client_for(make_app([chat_entry("m", backend)], settings)) as http:
        created = (
            await http.post("/v1/responses", json={"model": "m", "input": "Hi", "background": True})
        ).json()
        await started(backend)
    assert backend.leases[-1].exited  # the lifespan's shutdown cancelled it: the unit went back
    with sqlite3.connect(tmp_path / DB_NAME) as db:
        [(stored,)] = db.execute("SELECT response FROM responses WHERE id = ?", (created["id"],))
    assert '"status":"cancelled"' in stored
    # A response left queued by a gateway that died (no task will finish it) reads as failed.
    store = SqliteResponseStore(tmp_path / DB_NAME)
    left = {**created, "id": "resp_left", "status": "queued"}
    await store.put(StoredResponse("resp_left", "", created["created_at"], None, left, []))
    await store.close()
    async with client_for(make_app([chat_entry("m", backend)], settings)) as http:
        body = (await http.get("/v1/responses/resp_left")).json()
        validate_responses("Response", body)
        assert body["status"] == "failed" and "stopped" in body["error"]["message"]
