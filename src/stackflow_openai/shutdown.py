"""The shutdown deadline: running requests get a grace period after SIGTERM, then they are ended cleanly.

`serve` calls `begin(grace)` when the server starts shutting down (it has stopped accepting connections).
When the grace period is over, `expire()`:
- cancels every request that has not started its response (the operations middleware answers it with a
  503 `server_shutting_down`);
- cancels every event stream (the stream sends an SSE error event and `data: [DONE]`, and its source is
  closed, which pauses or exits its unit).
Then uvicorn's own shutdown goes on: the lifespan exits every unit of every pool (app.py).

Requests register their task here (a dict insert per request: nothing a request would notice).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

__all__ = ["SCOPE_KEY", "ShutdownDeadline"]

log = logging.getLogger(__name__)
SCOPE_KEY = "stackflow_openai.shutdown"  # where the operations middleware puts the deadline in the scope


class ShutdownDeadline:
    def __init__(self) -> None:
        self.begun = False
        self.expired = False
        self._requests: dict[asyncio.Task[object], Callable[[], bool]] = {}
        self._streams: set[asyncio.Task[object]] = set()
        self._timer: asyncio.TimerHandle | None = None

    # ---- requests and streams register themselves ------------------------------------------------
    def track(self, task: asyncio.Task[object], started: Callable[[], bool]) -> None:
        """A request task; `started()` says whether its response has begun."""
        self._requests[task] = started

    def untrack(self, task: asyncio.Task[object]) -> None:
        self._requests.pop(task, None)

    def add_stream(self, task: asyncio.Task[object]) -> None:
        self._streams.add(task)

    def discard_stream(self, task: asyncio.Task[object]) -> None:
        self._streams.discard(task)

    # ---- the server drives these -----------------------------------------------------------------
    def begin(self, grace: float) -> None:
        if self.begun:
            return
        self.begun = True
        running = len(self._requests)
        log.info("shutting down: %d request(s) running get %g s to finish", running, grace)
        if not self._requests:
            self.expire()  # nothing to wait for
            return
        self._timer = asyncio.get_running_loop().call_later(grace, self.expire)

    def expire(self) -> None:
        if self.expired:
            return
        self.expired = True
        if self._timer is not None:
            self._timer.cancel()
        ended = {t for t, started in self._requests.items() if not started()} | self._streams
        if ended:
            log.warning("shutdown grace period over: ending %d request(s)", len(ended))
        for task in ended:
            task.cancel()
