"""llm-sys's input framer, byte for byte (`zmq_bus_com::select_json_str`, protocol §1.2).

The daemon does not parse JSON to find message boundaries. For every byte of a TCP read it
appends the byte to a buffer and moves a depth counter on `{` / `}` (unless the byte before it *in
the same read* is a backslash), without knowing about strings. Each time the depth is back at 0 the
buffer is handed to the dispatcher if it starts with `{` and ends with `}`, and cleared either way;
so stray bytes between objects vanish. A depth below 0 throws: the buffer is cleared, the rest of
that read is lost and the connection gets the hand-built `reace reset` line (no trailing newline).

One more device detail is reproduced on purpose: on ARM the loop copies 16 brace-free bytes at a
time without the depth-0 check. A run of brace-free bytes at depth 0 whose length is a multiple of
16 therefore survives in the buffer, and the object that follows is then dropped silently because
the buffer no longer starts with `{`. Pass `neon=False` to get the x86 behaviour.

The RAW/BON binary mode is not emulated (the spec allows leaving it out).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field

__all__ = ["DeviceFramer", "FramerResult", "reace_reset_line"]

_BRACES = re.compile(rb"[{}]")
_NEON_BLOCK = 16
_BACKSLASH = ord("\\")
_OPEN, _CLOSE = ord("{"), ord("}")


def reace_reset_line(now: float | None = None) -> bytes:
    """The exact `-1` line llm-sys writes by hand: odd spacing, no object/data, and no newline."""
    created = int(time.time() if now is None else now)
    return (
        '{"request_id": "0","work_id": "sys","created": '
        + str(created)
        + ',"error":{"code":-1, "message":"reace reset"}}'
    ).encode()


@dataclass(slots=True)
class FramerResult:
    frames: list[bytes] = field(default_factory=list)  # complete `{...}` frames, in order
    reset: bool = False  # a stray `}` was met: answer `reace reset`; the rest of the read is gone


class DeviceFramer:
    """One per connection; feed it each read exactly as it came off the socket."""

    def __init__(self, *, neon: bool = True) -> None:
        self._buf = bytearray()
        self._depth = 0
        self._neon = neon

    @property
    def pending(self) -> int:
        """Bytes held for an unfinished object (an unclosed `{` keeps swallowing input)."""
        return len(self._buf)

    def feed(self, chunk: bytes) -> FramerResult:
        result = FramerResult()
        pos = 0
        while pos < len(chunk):
            match = _BRACES.search(chunk, pos)
            brace = match.start() if match else len(chunk)
            if brace > pos:
                self._take_plain_run(chunk, pos, brace)
            if match is None:
                break
            if self._take_brace(chunk, brace, result):
                result.reset = True
                break  # the exception in the device aborts the loop over this read
            pos = brace + 1
        return result

    def _take_plain_run(self, chunk: bytes, start: int, end: int) -> None:
        """Bytes without braces: kept inside an object; at depth 0 they are (normally) dropped."""
        if self._depth > 0:
            self._buf += chunk[start:end]
        elif self._neon and (end - start) % _NEON_BLOCK == 0:
            # Only whole 16-byte blocks: none of them passes the per-byte depth-0 check.
            self._buf += chunk[start:end]
        else:
            # The last byte of the run goes through the per-byte path, which clears the buffer.
            self._buf.clear()

    def _take_brace(self, chunk: bytes, pos: int, result: FramerResult) -> bool:
        """One brace through the per-byte path; True when the depth went negative."""
        byte = chunk[pos]
        previous = chunk[pos - 1] if pos > 0 else chunk[0]  # `last_index` is 0 for the first byte
        self._buf.append(byte)
        if previous != _BACKSLASH:
            self._depth += 1 if byte == _OPEN else -1
        if self._depth == 0:
            if self._buf[0] == _OPEN and self._buf[-1] == _CLOSE:
                result.frames.append(bytes(self._buf))
            self._buf.clear()
        if self._depth < 0:
            self._depth = 0
            self._buf.clear()
            return True
        return False
