"""Responses being generated right now, so that their owner can GET them meanwhile (`in_progress`).

A response is stored when it ends (one fsync per response: services/responses.py). Until then it lives
here, in memory, with a snapshot of its output so far; OpenAI's `GET /v1/responses/{id}` shows a running
response the same way. Only stored responses (`store` not false) are listed, and only to their owner.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

__all__ = ["Live", "LiveResponses"]

Snapshot = Callable[[], dict[str, Any]]  # the Response object as it stands now
Live = Callable[[str, Snapshot], AbstractContextManager[None]]  # (response id, snapshot): while generating


class LiveResponses:
    def __init__(self) -> None:
        self._running: dict[str, tuple[str, Snapshot]] = {}

    def tracker(self, owner: str) -> Live:
        """What a run calls to be visible to `owner` while it generates."""

        @contextmanager
        def track(response_id: str, snapshot: Snapshot) -> Iterator[None]:
            self._running[response_id] = (owner, snapshot)
            try:
                yield
            finally:
                self._running.pop(response_id, None)

        return track

    def get(self, response_id: str, owner: str) -> dict[str, Any] | None:
        running = self._running.get(response_id)
        if running is None or running[0] != owner:
            return None
        return running[1]()
