"""The SQLite response store: owners, chains, retention, the size cap, durability across reopening."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import stat
import threading
from pathlib import Path
from typing import Any

from stackflow_openai.store import SqliteResponseStore, StoredResponse, key_owner
from stackflow_openai.store.sqlite import DB_NAME

DAY = 86400


def record(rid: str, owner: str = "", *, created: int = 1_000_000, prev: str | None = None, size: int = 0):
    body: dict[str, Any] = {"id": rid, "output": [], "pad": "x" * size}
    return StoredResponse(rid, owner, created, prev, body, [{"id": f"msg_{rid}", "type": "message"}])


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_put_get_delete_and_owner_isolation(tmp_path: Path) -> None:
    store = SqliteResponseStore(tmp_path / DB_NAME, clock=Clock())
    alice, bob = key_owner("sk-alice"), key_owner("sk-bob")
    assert alice != bob and len(alice) == 64 and "sk-alice" not in alice
    await store.put(record("r1", alice))
    got = await store.get("r1", alice)
    assert got is not None and got.response["id"] == "r1" and got.input_items[0]["id"] == "msg_r1"
    assert await store.get("r1", bob) is None  # another key sees nothing
    assert await store.get("r1", "") is None
    assert not await store.delete("r1", bob)  # and cannot delete it
    assert await store.delete("r1", alice)
    assert await store.get("r1", alice) is None
    assert not await store.delete("r1", alice)
    await store.close()


async def test_chain_oldest_first_limited_and_owner_bound(tmp_path: Path) -> None:
    store = SqliteResponseStore(tmp_path / DB_NAME, clock=Clock())
    await store.put(record("a"))
    await store.put(record("b", prev="a"))
    await store.put(record("c", prev="b"))
    await store.put(record("x", "other", prev="c"))  # another owner cannot extend or read the chain
    assert [r.id for r in await store.chain("c", "", limit=10)] == ["a", "b", "c"]
    assert [r.id for r in await store.chain("c", "", limit=2)] == ["b", "c"]  # the newest ones
    assert await store.chain("c", "other", limit=10) == []
    assert [r.id for r in await store.chain("x", "other", limit=10)] == ["x"]
    await store.delete("a", "")
    assert [r.id for r in await store.chain("c", "", limit=10)] == ["b", "c"]
    await store.close()


async def test_retention_hides_and_prunes_old_rows(tmp_path: Path) -> None:
    clock = Clock()
    path = tmp_path / DB_NAME
    store = SqliteResponseStore(path, retention_days=30, clock=clock)
    await store.put(record("old", created=int(clock.now)))
    clock.now += 31 * DAY
    await store.put(record("new", created=int(clock.now)))
    assert await store.get("old", "") is None  # expired: never returned
    assert await store.get("new", "") is not None
    await store.close()
    with sqlite3.connect(path) as db:  # and gone from the file (pruned at the hourly pass)
        assert [row[0] for row in db.execute("SELECT id FROM responses")] == ["new"]


async def test_size_cap_deletes_the_oldest_first(tmp_path: Path) -> None:
    clock = Clock()
    store = SqliteResponseStore(tmp_path / DB_NAME, max_bytes=10_000, clock=clock)
    for i in range(10):
        clock.now += 1
        await store.put(record(f"r{i}", created=int(clock.now), size=1500))
    kept = [i for i in range(10) if await store.get(f"r{i}", "") is not None]
    assert kept and kept == list(range(10 - len(kept), 10))  # a suffix: the newest survive
    assert len(kept) * 1500 <= 10_000
    await store.close()


async def test_durable_across_reopen_and_no_file_until_used(tmp_path: Path) -> None:
    path = tmp_path / "sub" / DB_NAME
    store = SqliteResponseStore(path)
    await store.close()
    assert not path.exists()  # a gateway that never stored anything created nothing
    store = SqliteResponseStore(path)
    await store.put(record("kept", created=2_000_000_000))
    await store.close()
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # conversations are private
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reopened = SqliteResponseStore(path)
    got = await reopened.get("kept", "")
    assert got is not None and got.created_at == 2_000_000_000
    await reopened.close()


async def test_calls_run_off_the_event_loop(tmp_path: Path) -> None:
    store = SqliteResponseStore(tmp_path / DB_NAME)
    threads: set[str] = set()
    loop_thread = threading.current_thread().name

    def note(db: sqlite3.Connection) -> None:
        threads.add(threading.current_thread().name)

    await store.put(record("r"))
    await asyncio.gather(*(store._run(note) for _ in range(5)))
    assert threads and loop_thread not in threads and all(t.startswith("response-store") for t in threads)
    await store.close()
