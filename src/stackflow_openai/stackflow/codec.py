"""Sans-IO codec for the StackFlow wire protocol (protocol §1.2, §1.3).

Client → device: compact JSON with the keys in the order the units' substring extractor needs
(`data` last), and every `{`, `}` and `\\` inside a string written as a `\\u` escape, because the
daemon frames requests by counting braces without knowing about strings.

Device → client: newline-terminated JSON ("NDJSON, almost"): two objects may be glued on one line,
and the `-1 reace reset` line comes with no newline at all. The decoder buffers bytes, so a read may
end anywhere, even inside a multi-byte UTF-8 character.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from json.encoder import encode_basestring
from typing import Any

__all__ = ["Reply", "ReplyDecoder", "dump_reply", "encode_request", "encode_value"]

# Key order of a request envelope; units take the first `"data"` they find, so `data` goes last.
_ENVELOPE_ORDER = ("request_id", "work_id", "action", "object", "data")

# In json.dumps output every backslash starts an escape, so a leftmost match of `\\` is always a
# whole escaped backslash, never the tail of another escape.
_UNSAFE_IN_STRING = re.compile(r"\\\\|[{}]")
_SAFE_ESCAPES = {"\\\\": "\\u005c", "{": "\\u007b", "}": "\\u007d"}
_DECODER = json.JSONDecoder()


def _encode_string(text: str) -> str:
    # encode_basestring is what json.dumps(text, ensure_ascii=False) runs, without building an encoder.
    dumped: str = encode_basestring(text)
    if "{" not in dumped and "}" not in dumped and "\\" not in dumped:
        return dumped  # the common case: nothing the daemon's brace counting could trip on
    return _UNSAFE_IN_STRING.sub(_safe_escape, dumped)


def _safe_escape(match: re.Match[str]) -> str:
    return _SAFE_ESCAPES[match.group(0)]


def encode_value(value: Any) -> str:
    """Serialise one JSON value compactly with brace-safe strings and raw UTF-8."""
    if isinstance(value, str):
        return _encode_string(value)
    if isinstance(value, bool) or value is None or isinstance(value, int | float):
        return json.dumps(value)
    if isinstance(value, Mapping):
        items = (f"{_encode_string(str(k))}:{encode_value(v)}" for k, v in value.items())
        return "{" + ",".join(items) + "}"
    if isinstance(value, list | tuple):
        return "[" + ",".join(encode_value(v) for v in value) + "]"
    raise TypeError(f"cannot encode {type(value).__name__} for StackFlow")


def encode_request(message: Mapping[str, Any]) -> bytes:
    """Encode one request envelope as bytes ready for the socket, newline-terminated.

    Envelope keys come first in protocol order; any other key follows them but precedes `data`.
    """
    known = [k for k in _ENVELOPE_ORDER[:-1] if k in message]
    extra = [k for k in message if k not in _ENVELOPE_ORDER]
    keys = known + extra + (["data"] if "data" in message else [])
    body = ",".join(f"{_encode_string(k)}:{encode_value(message[k])}" for k in keys)
    # A lone surrogate (JSON allows "\ud800") cannot be UTF-8; the device would refuse the line (-2).
    return ("{" + body + "}\n").encode("utf-8", "replace")


def dump_reply(message: Mapping[str, Any]) -> bytes:
    """Serialise a reply the way the device does: nlohmann `dump()`, sorted keys, raw UTF-8, `\\n`."""
    text = json.dumps(message, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return (text + "\n").encode("utf-8")


@dataclass(frozen=True, slots=True)
class Reply:
    """One message from the device, with the envelope fields pulled out."""

    request_id: str
    work_id: str
    object: str
    data: Any
    code: int
    message: str
    created: int
    raw: dict[str, Any] = field(repr=False, compare=False)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Reply:
        error = obj.get("error")
        code, text = 0, ""
        if isinstance(error, dict):
            raw_code = error.get("code", 0)
            code = raw_code if isinstance(raw_code, int) else 0
            text = str(error.get("message", ""))
        created = obj.get("created", 0)
        # The decoder builds one Reply per device message: set the slots directly rather than through
        # the frozen dataclass __init__ (a generic object.__setattr__ per field), half the cost.
        reply = _new_object(cls)
        _set_request_id(reply, str(obj.get("request_id", "")))
        _set_work_id(reply, str(obj.get("work_id", "")))
        _set_object(reply, str(obj.get("object", "")))
        _set_data(reply, obj.get("data"))
        _set_code(reply, code)
        _set_message(reply, text)
        _set_created(reply, created if isinstance(created, int) else 0)
        _set_raw(reply, obj)
        return reply

    @property
    def ok(self) -> bool:
        return self.code == 0


def _slot_setter(name: str) -> Callable[[Reply, Any], None]:
    """The `__set__` of one of Reply's slots: writes the field, past the frozen dataclass' guard."""
    setter: Callable[[Reply, Any], None] = Reply.__dict__[name].__set__
    return setter


_new_object = object.__new__
_set_request_id = _slot_setter("request_id")
_set_work_id = _slot_setter("work_id")
_set_object = _slot_setter("object")
_set_data = _slot_setter("data")
_set_code = _slot_setter("code")
_set_message = _slot_setter("message")
_set_created = _slot_setter("created")
_set_raw = _slot_setter("raw")


class ReplyDecoder:
    """Turns the device's byte stream into replies. Feed it whatever each read returned."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self.discarded: list[bytes] = []  # undecodable pieces, kept for diagnostics

    def feed(self, data: bytes) -> list[Reply]:
        self._buf += data
        replies: list[Reply] = []
        if b"\n" in data:  # one split per read, not one search and copy per line (hot path)
            *lines, rest = self._buf.split(b"\n")
            self._buf = bytearray(rest)
            if len(lines) == 1 or not self._decode_all(lines, replies):
                for line in lines:
                    replies.extend(self._decode_line(line, final=True))
        # An unterminated tail is normally a line still in transit, but the `reace reset` line is
        # never terminated: take whole objects from the tail as soon as they are complete. (The
        # brace count only skips hopeless attempts: that line has no braces inside strings.)
        tail = self._buf
        if tail.rstrip().endswith(b"}") and tail.count(b"{") == tail.count(b"}"):
            replies.extend(self._decode_line(bytes(tail), final=False))
        return replies

    @staticmethod
    def _decode_all(lines: list[bytearray], replies: list[Reply]) -> bool:
        """The common case of a read with several lines, one object each, in ONE parser call (as an array:
        half the cost per line, as the parser's per-call work and its key strings are shared).
        False, and nothing added, if any line is anything else: then each is decoded on its own."""
        try:
            text = (b"[" + b",".join(lines) + b"]").decode("utf-8")
            objs, end = _DECODER.raw_decode(text)
        except ValueError:  # JSONDecodeError and UnicodeDecodeError
            return False
        # One dict per line (an object cut over two lines would change the count).
        if end != len(text) or len(objs) != len(lines) or not all(type(obj) is dict for obj in objs):
            return False
        replies.extend(map(Reply.from_json, objs))
        return True

    def _decode_line(self, line: bytes | bytearray, *, final: bool) -> list[Reply]:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            if final:
                self.discarded.append(bytes(line))
            return []  # not final: a character may still be in transit
        if final:
            try:  # the common case, one object per line, in one C call
                obj = json.loads(text)
            except ValueError:
                pass  # glued objects, garbage, or an empty line: the careful loop below
            else:
                if isinstance(obj, dict):
                    return [Reply.from_json(obj)]
        replies: list[Reply] = []
        pos = 0
        while True:
            while pos < len(text) and text[pos] in " \t\r":
                pos += 1
            if pos >= len(text):
                break
            try:
                obj, end = _DECODER.raw_decode(text, pos)
            except json.JSONDecodeError:
                if final:
                    self.discarded.append(text[pos:].encode("utf-8"))
                    pos = len(text)
                break
            if isinstance(obj, dict):
                replies.append(Reply.from_json(obj))
            else:
                self.discarded.append(text[pos:end].encode("utf-8"))
            pos = end
        if not final:
            # Keep what was not decoded (a partial object) for the next feed.
            self._buf = bytearray(text[pos:].encode("utf-8"))
        return replies
