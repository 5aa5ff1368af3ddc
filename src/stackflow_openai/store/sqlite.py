"""`ResponseStore` in one SQLite file, for one gateway process.

Every database call runs in ONE worker thread that owns the connection: the event loop never waits on
the disk, and calls are serialised without locks. The file is opened on first use, so a gateway that
never serves the Responses API creates nothing.

Crash safety: WAL journal with `synchronous=FULL`, so a transaction that `put` returned from is on
disk, and a kill (or power loss) at any moment leaves the last committed state: SQLite's WAL recovery
discards a half-written transaction when the file is next opened. One fsync per stored response costs
milliseconds, next to generations that take seconds on a device.

Retention: rows older than `retention_days` are never returned and are deleted on open, then at most
hourly. Size cap: the stored JSON (responses and input items) is kept under `max_bytes` by deleting the
oldest rows (down to 90 % of the cap, so that pruning does not run on every write); freed pages go back
to the file system (incremental auto-vacuum). The file is a little larger than the cap (indexes, WAL).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from .base import StoredResponse, StoreError

__all__ = ["DB_NAME", "SqliteResponseStore"]

log = logging.getLogger(__name__)
T = TypeVar("T")
DB_NAME = "responses.sqlite3"
_PRUNE_EVERY = 3600.0  # seconds between retention passes
_DAY = 86400.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    previous_id TEXT,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    size INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS responses_by_age ON responses (created_at);
"""
_COLUMNS = "id, owner, created_at, previous_id, response, input_items"
# The response, then its predecessors by previous_response_id, newest first, same owner only.
_CHAIN = f"""
WITH RECURSIVE chain(id, previous_id, depth) AS (
    SELECT id, previous_id, 0 FROM responses WHERE id = ? AND owner = ? AND created_at >= ?
    UNION ALL
    SELECT r.id, r.previous_id, chain.depth + 1 FROM responses r JOIN chain ON r.id = chain.previous_id
    WHERE r.owner = ? AND r.created_at >= ? AND chain.depth + 1 < ?
)
SELECT {", ".join("r." + c.strip() for c in _COLUMNS.split(","))}
FROM chain JOIN responses r ON r.id = chain.id ORDER BY chain.depth DESC
"""


class SqliteResponseStore:
    def __init__(
        self,
        path: str | Path | None,
        *,
        retention_days: float = 30.0,
        max_bytes: int = 256 * 1024 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """`path`: the database file, or None for a private in-memory database (tests, `store`-less)."""
        self.path = str(path) if path is not None else ":memory:"
        self.retention = retention_days * _DAY
        self.max_bytes = max_bytes
        self._clock = clock
        self._executor: ThreadPoolExecutor | None = None  # made on first use, again after close()
        self._db: sqlite3.Connection | None = None
        self._total = 0  # bytes of stored JSON, kept in step with the table
        self._last_prune = 0.0

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        # A cancelled caller does not stop the call: a write that started completes (or rolls back).
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="response-store")
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, partial(self._call, fn, *args))

    def _call(self, fn: Callable[..., T], *args: Any) -> T:
        try:
            if self._db is None:
                self._db = self._open()
            return fn(self._db, *args)
        except (sqlite3.Error, OSError) as exc:  # permissions, a full disk, a file that is no database
            raise StoreError(f"{self.path}: {exc}") from exc

    # ---- the interface --------------------------------------------------------------------------------
    async def put(self, record: StoredResponse) -> None:
        await self._run(self._put, record)

    async def get(self, response_id: str, owner: str) -> StoredResponse | None:
        return await self._run(self._get, response_id, owner)

    async def delete(self, response_id: str, owner: str) -> bool:
        return await self._run(self._delete, response_id, owner)

    async def chain(self, response_id: str, owner: str, *, limit: int) -> list[StoredResponse]:
        return await self._run(self._chain, response_id, owner, limit)

    async def close(self) -> None:
        if self._executor is None:
            return
        if self._db is not None:
            await self._run(_close)
            self._db = None
        self._executor.shutdown(wait=False)
        self._executor = None

    # ---- in the worker thread -------------------------------------------------------------------------
    def _open(self) -> sqlite3.Connection:
        new = self.path == ":memory:" or not os.path.exists(self.path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Autocommit mode: every transaction below is an explicit BEGIN ... COMMIT.
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        if new and self.path != ":memory:":
            os.chmod(self.path, 0o600)  # conversations are private; WAL files inherit this mode
        db.execute("PRAGMA auto_vacuum = INCREMENTAL")  # takes effect on a new database only
        db.execute("PRAGMA journal_mode = WAL")
        db.execute("PRAGMA synchronous = FULL")
        db.execute("PRAGMA busy_timeout = 5000")
        db.executescript(_SCHEMA)
        self._total = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0])
        self._prune(db)
        log.info("stored responses: %s (%d bytes)", self.path, self._total)
        return db

    def _cutoff(self) -> int:
        return int(self._clock() - self.retention)

    def _put(self, db: sqlite3.Connection, record: StoredResponse) -> None:
        response = json.dumps(record.response, ensure_ascii=False, separators=(",", ":"))
        items = json.dumps(record.input_items, ensure_ascii=False, separators=(",", ":"))
        size = len(response.encode()) + len(items.encode())
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute("SELECT size FROM responses WHERE id = ?", (record.id,)).fetchone()
            db.execute(
                f"INSERT OR REPLACE INTO responses ({_COLUMNS}, size) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    record.id,
                    record.owner,
                    record.created_at,
                    record.previous_response_id,
                    response,
                    items,
                    size,
                ),
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        self._total += size - (row[0] if row else 0)
        if self._total > self.max_bytes or self._clock() - self._last_prune > _PRUNE_EVERY:
            self._prune(db)

    def _get(self, db: sqlite3.Connection, response_id: str, owner: str) -> StoredResponse | None:
        row = db.execute(
            f"SELECT {_COLUMNS} FROM responses WHERE id = ? AND owner = ? AND created_at >= ?",
            (response_id, owner, self._cutoff()),
        ).fetchone()
        return _record(row) if row else None

    def _delete(self, db: sqlite3.Connection, response_id: str, owner: str) -> bool:
        rows = db.execute(
            "DELETE FROM responses WHERE id = ? AND owner = ? AND created_at >= ? RETURNING size",
            (response_id, owner, self._cutoff()),
        ).fetchall()  # read to the end: an unfinished statement would hold its transaction open
        self._total -= sum(size for (size,) in rows)
        return bool(rows)

    def _chain(
        self, db: sqlite3.Connection, response_id: str, owner: str, limit: int
    ) -> list[StoredResponse]:
        cutoff = self._cutoff()
        rows = db.execute(_CHAIN, (response_id, owner, cutoff, owner, cutoff, limit)).fetchall()
        return [_record(row) for row in rows]

    def _prune(self, db: sqlite3.Connection) -> None:
        """Delete expired rows, then the oldest ones while the stored bytes exceed the cap."""
        self._last_prune = self._clock()
        expired = db.execute("DELETE FROM responses WHERE created_at < ?", (self._cutoff(),)).rowcount
        if expired:
            self._total = int(db.execute("SELECT COALESCE(SUM(size), 0) FROM responses").fetchone()[0])
        evicted = 0
        while self._total > self.max_bytes * 0.9:
            rows = db.execute(
                "DELETE FROM responses WHERE id IN "
                "(SELECT id FROM responses ORDER BY created_at, rowid LIMIT 64) RETURNING size"
            ).fetchall()
            if not rows:
                break
            evicted += len(rows)
            self._total -= sum(size for (size,) in rows)
        if expired or evicted:
            db.execute("PRAGMA incremental_vacuum").fetchall()  # frees pages as it is stepped
            log.info("stored responses: %d expired and %d over the size cap deleted", expired, evicted)


def _close(db: sqlite3.Connection) -> None:
    db.close()  # the last connection to close also checkpoints the WAL into the main file


def _record(row: tuple[Any, ...]) -> StoredResponse:
    response_id, owner, created_at, previous_id, response, items = row
    return StoredResponse(
        response_id, owner, created_at, previous_id, json.loads(response), json.loads(items)
    )
