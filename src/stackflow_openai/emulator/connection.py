"""One accepted TCP client and its private return channel (protocol §1.1).

On the device every connection gets its own ZMQ PULL socket; whatever a unit pushes there is
written to the socket. Here that is an output queue drained by a writer task, so units never wait
on a slow client. Once the connection is closed, anything sent to it is discarded, which is what
happens to the output of instances whose client went away (§1.4).
"""

from __future__ import annotations

import asyncio
import contextlib

__all__ = ["ClientConnection"]


class ClientConnection:
    def __init__(self, number: int, writer: asyncio.StreamWriter) -> None:
        self.number = number  # llm-sys numbers return channels from 8000 upwards
        self.url = f"ipc:///tmp/llm/{number}.sock"
        self._writer = writer
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue()
        self._closing = False
        self._writer_task = asyncio.create_task(self._write_loop(), name=f"emulator-conn-{number}")

    @property
    def is_open(self) -> bool:
        return not self._closing

    def send(self, line: bytes) -> None:
        """Queue bytes for the client; silently dropped once the connection is closing."""
        if not self._closing:
            self._queue.put_nowait(line)

    def close(self, *, flush: bool = True) -> None:
        """Stop accepting output; with `flush`, what is already queued is written first."""
        if self._closing:
            return
        self._closing = True
        if flush:
            self._queue.put_nowait(None)
        else:
            self._writer_task.cancel()

    def abort(self) -> None:
        """Close now, even if a flush is under way (emulator shutdown)."""
        self._closing = True
        self._writer_task.cancel()

    async def wait_closed(self, grace: float = 2.0) -> None:
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._writer_task), grace)

    async def _write_loop(self) -> None:
        try:
            while True:
                pending: list[bytes | None] = [await self._queue.get()]
                while not self._queue.empty():  # coalesce: fewer drains for token streams
                    pending.append(self._queue.get_nowait())
                done = None in pending
                if done:
                    pending = pending[: pending.index(None)]
                data = b"".join(b for b in pending if b is not None)
                if data:
                    self._writer.write(data)
                    await self._writer.drain()
                if done:
                    break
        except (ConnectionError, OSError):
            pass
        finally:
            self._closing = True
            self._writer.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._writer.wait_closed(), 1.0)
