"""How the device's units read a request: substring extraction, not JSON parsing (protocol §1.2, §5.1).

Units never parse a request. They search the raw text for `"key"` and copy what follows
(`sample_json_str_get`), unescape strings themselves (`sample_unescapeString`), decode base64 with a
hand-written decoder and reassemble `.stream` chunks by index. Reproducing these helpers, instead of
using `json.loads`, is what makes the emulator's quirks the device's quirks: the first `"data"` in the
text wins, a string is returned *still escaped*, a value ending in `\\` runs past its quote, and the
VLM sees `\\n` literally because it skips the unescape step.
"""

from __future__ import annotations

import base64
import re
import string

__all__ = [
    "StreamIndexError",
    "c_stoi",
    "decode_base64",
    "decode_stream",
    "extract",
    "strip_wav_header",
    "unescape",
]

_BRACES = re.compile(r"[{}]")
_STOI = re.compile(r"[ \t\n\v\f\r]*([+-]?\d+)")
_B64_ALPHABET = frozenset(string.ascii_letters + string.digits + "+/")
_SIMPLE_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\", '"': '"', "r": "\r", "b": "\b"}
_HEX = frozenset(string.hexdigits)


class StreamIndexError(Exception):
    """A `.stream` chunk sequence the unit cannot reassemble (→ -25)."""


def c_stoi(text: str) -> int:
    """`std::stoi`: optional leading space and sign, then digits; anything else raises ValueError."""
    match = _STOI.match(text)
    if match is None:
        raise ValueError(f"stoi: {text!r}")
    value = int(match.group(1))
    if not -(2**31) <= value < 2**31:
        raise ValueError(f"stoi out of range: {text!r}")
    return value


def extract(text: str, key: str) -> str:
    """`sample_json_str_get`: the raw value after the first `"key"` in `text`, or "".

    Strings come back without their quotes but still escaped; objects come back whole (braces
    counted without regard to strings); scalars come back up to the next `,` or `}`. A value that
    is not terminated yields "".
    """
    start = text.find(f'"{key}"')
    if start < 0:
        return ""
    pos = start + len(key) + 2
    collected: list[str] = []
    open_value = False  # the C code's obj_flage in its first state: a ':' was seen
    while pos < len(text):
        char = text[pos]
        if char == '"':
            return _extract_string(text, pos + 1)
        if char == "{":
            return _extract_object(text, pos, prefix="".join(collected))
        if char == ":":
            open_value = True
        elif char in ",}":
            return "".join(collected)
        elif char != " " and open_value:
            collected.append(char)
        pos += 1
    return ""  # ran off the end with a value still open (or no value at all)


def _extract_string(text: str, content_start: int) -> str:
    # A quote ends the string unless the character before it is a backslash; for the first
    # character that "previous" character is the opening quote itself.
    pos = content_start
    while True:
        end = text.find('"', pos)
        if end < 0:
            return ""
        if end == content_start or text[end - 1] != "\\":
            return text[content_start:end]
        pos = end + 1


def _extract_object(text: str, brace: int, *, prefix: str) -> str:
    depth = 0
    for match in _BRACES.finditer(text, brace):
        depth += 1 if match.group() == "{" else -1
        if depth == 0:
            return prefix + text[brace : match.end()]
    return ""


def unescape(text: str) -> str:
    """`sample_unescapeString`: JSON escapes to characters, the device's way.

    `\\uXXXX` of the BMP decodes; a surrogate pair is mangled exactly like the device does it (the
    high half is written back as the literal text `\\u` plus its digits, the low half becomes a lone
    surrogate, which later makes the reply unencodable). Unknown escapes drop the backslash.
    """
    out: list[str] = []
    pos, length = 0, len(text)
    while pos < length:
        char = text[pos]
        if char != "\\" or pos + 1 >= length:
            out.append(char)
            pos += 1
            continue
        escape = text[pos + 1]
        if escape in _SIMPLE_ESCAPES:
            out.append(_SIMPLE_ESCAPES[escape])
            pos += 2
        elif escape == "u":
            decoded, pos = _unescape_u(text, pos + 2)
            out.append(decoded)
        else:
            out.append(escape)
            pos += 2
    return "".join(out)


def _unescape_u(text: str, pos: int) -> tuple[str, int]:
    """Decode the digits after `\\u` at `pos`; returns the text to emit and the next position."""
    codepoint = 0
    cursor = pos
    while True:
        digits = text[cursor : cursor + 4]
        if len(digits) < 4 or not set(digits) <= _HEX:
            return "\\u", pos  # the device writes `\u` and rescans the digits as plain text
        codepoint = (codepoint << 16) | int(digits, 16)
        cursor += 4
        if not 0xD800 <= codepoint <= 0xDBFF:
            break
    if codepoint > 0x10FFFF:
        return "\\u", pos
    return chr(codepoint), cursor


def decode_base64(text: str) -> bytes | None:
    """The units' base64 decoder: stops at the first `=`, None (→ -23) on any other bad character."""
    pad = text.find("=")
    body = text if pad < 0 else text[:pad]
    if not set(body) <= _B64_ALPHABET:
        return None
    usable = len(body) - (len(body) % 4 == 1)  # a lone trailing sextet yields no byte
    body = body[:usable]
    decoded = base64.b64decode(body + "=" * (-len(body) % 4)) if body else b""
    if not decoded:
        # The C decoder returns 0 bytes here and leaves its zero-filled output buffer untrimmed.
        return bytes(len(text) // 4 * 3)
    return decoded


def decode_stream(data: str, chunks: dict[int, str]) -> str | None:
    """`decode_stream`: store one `{"delta","index","finish"}` chunk; the whole text once finished.

    Returns None while more chunks are expected. `finish` counts as false only if its raw text
    contains an `f`, so a missing `finish` finishes the stream. Raises StreamIndexError for a missing
    or non-numeric index or a gap; the caller clears `chunks` then, as the device does.
    """
    try:
        index = c_stoi(extract(data, "index"))
    except ValueError as exc:
        raise StreamIndexError(str(exc)) from exc
    finish = extract(data, "finish")
    chunks[index] = extract(data, "delta")
    if "f" in finish:
        return None
    try:
        return "".join(chunks[i] for i in range(len(chunks)))
    except KeyError as exc:
        raise StreamIndexError(f"missing chunk {exc}") from exc
    finally:
        chunks.clear()


def strip_wav_header(payload: bytes) -> bytes | None:
    """Whisper/asr `decode_wav`: drop everything up to and including the first `data` chunk header.

    There is no RIFF parsing: the first four bytes `data` anywhere win. None when there is no such
    marker (or nothing after it); the unit then drops the request silently.
    """
    if len(payload) <= 10:
        return None
    marker = payload.find(b"data", 0, len(payload) - 1)
    if marker < 0 or marker + 8 >= len(payload):
        return None
    return payload[marker + 8 :]
