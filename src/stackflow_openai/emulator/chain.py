"""Data flowing between linked units: the device's ZMQ publish/subscribe between channels.

On the device every instance's channel owns a PUB socket bound to its `out_port` URL, which llm-sys
hands out at `register_unit` and forgets at `release_unit`. Every output the channel produces is
published there, whether or not `enoutput` also sends it to the client (`StackFlow.h` 143-186).
A unit that names another instance's work_id (in its setup `input`, or through `link`) connects a SUB
socket to that URL (`StackFlow.cpp` `subscriber_work_id` 54-80); each such socket has its own receive
thread that hands every message, in order, to the handler the unit chose for it. The handler sees only
the message's `object` and `data`: a published output carries no `"action"`, so the subscriber's output
route and request_id stay as they were (`subscriber_event_call` 33-52).

The subscription is to the URL, not to the instance: when the upstream instance exits, the socket stays
connected and ZMQ keeps reconnecting, so a later instance of the same unit that is handed the same ports
(llm-sys gives out the lowest free ones) feeds the old subscriber again. The emulator reproduces that by
keying deliveries on the URL (`PortTable`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from stackflow_openai.emulator.rawjson import extract

if TYPE_CHECKING:
    from stackflow_openai.emulator.units.instance import Instance

__all__ = ["ChainBus", "ChainHandler", "PortTable", "Subscription"]

ChainHandler = Callable[[str, str], Awaitable[None]]  # (object, data), as `subscriber_event_call` passes them

# llm-sys `config_zmq_min_port`/`config_zmq_max_port` and the output URL format with a `.sock` format
# (`main_sys/src/main.cpp` 52-62, `remote_server.cpp` `sys_allocate_unit` 43-117).
PORT_MIN = 5010
PORT_MAX = 5555
PORTS_PER_UNIT = 3  # output, input and inference URL, each the lowest free port at the time
_log = logging.getLogger(__name__)


class PortTable:
    """llm-sys's `port_list`: which ports registered instances hold."""

    def __init__(self) -> None:
        self._taken: set[int] = set()

    def allocate(self) -> list[int]:
        ports: list[int] = []
        for port in range(PORT_MIN, PORT_MAX):
            if len(ports) == PORTS_PER_UNIT:
                break
            if port not in self._taken:
                ports.append(port)
        self._taken.update(ports)
        return ports

    def free(self, ports: list[int]) -> None:
        self._taken.difference_update(ports)

    def clear(self) -> None:
        self._taken.clear()


def output_url(unit: str, port: int) -> str:
    return f"ipc:///tmp/llm/{port}.sock.{unit}.output_url"


class Subscription:
    """One SUB socket of a subscriber instance, with its receive loop (one thread on the device)."""

    def __init__(self, subscriber: Instance, key: int, url: str, handler: ChainHandler) -> None:
        self.subscriber = subscriber
        self.key = key  # the channel's `zmq_` slot: the number of the work_id subscribed to
        self.url = url
        self.handler = handler
        self._inbox: asyncio.Queue[str | None] = asyncio.Queue()
        self.task = subscriber.spawn(self._receive_loop())

    def push(self, line: str) -> None:
        self._inbox.put_nowait(line)

    async def close(self) -> None:
        """Destroying the socket joins its thread: a message being handled finishes, queued ones are lost."""
        while not self._inbox.empty():
            self._inbox.get_nowait()
        self._inbox.put_nowait(None)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(self.task)

    async def _receive_loop(self) -> None:
        while (line := await self._inbox.get()) is not None:
            try:
                await self.handler(extract(line, "object"), extract(line, "data"))
            except Exception:  # the device's handler thread logs and takes the next message
                _log.exception("%s: chained input failed", self.subscriber.work_id)


class ChainBus:
    """Every live subscription of the device, and the publishing side of every channel."""

    def __init__(self) -> None:
        self._subscriptions: list[Subscription] = []

    def publish(self, url: str, line: bytes) -> None:
        """`send_raw_to_pub`: every subscriber connected to `url` gets the line, in order."""
        text: str | None = None
        for sub in self._subscriptions:
            if sub.url == url and sub.subscriber.state in ("ready", "busy"):
                text = line.decode("utf-8") if text is None else text
                sub.push(text)

    async def subscribe(self, subscriber: Instance, key: int, url: str, handler: ChainHandler) -> None:
        """`zmq_[key] = new SUB`: a subscription already in that slot is replaced (and joined)."""
        await self.unsubscribe(subscriber, key)
        self._subscriptions.append(Subscription(subscriber, key, url, handler))

    async def unsubscribe(self, subscriber: Instance, key: int) -> None:
        """`stop_subscriber_work_id`: erase the slot, if anything is in it."""
        for sub in [s for s in self._subscriptions if s.subscriber is subscriber and s.key == key]:
            self._subscriptions.remove(sub)
            await sub.close()

    def drop_subscriber(self, subscriber: Instance) -> None:
        """The subscriber's channel is gone (exit, reset): its sockets close with it."""
        self._subscriptions = [s for s in self._subscriptions if s.subscriber is not subscriber]

    def clear(self) -> None:
        self._subscriptions.clear()
