"""The sans-IO codec on raw bytes (protocol §1.2, §1.3, §1.5, §1.6)."""

from __future__ import annotations

import base64
import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fake_device import REACE_RESET_LINE, DaemonFramer
from stackflow_openai.stackflow.codec import Reply, ReplyDecoder, dump_reply, encode_request, encode_value

# A JSON string literal inside encoded bytes: a quote, then non-special chars or escapes.
_STRING_LITERAL = re.compile(rb'"(?:[^"\\]|\\.)*"')


def string_literals(encoded: bytes) -> list[bytes]:
    return [m.group(0)[1:-1] for m in _STRING_LITERAL.finditer(encoded)]


def assert_brace_safe(encoded: bytes) -> None:
    """No raw brace or escaped backslash inside any string, and exactly one daemon frame."""
    for literal in string_literals(encoded):
        assert b"{" not in literal and b"}" not in literal, literal
        assert b"\\\\" not in literal, literal
        assert not literal.endswith(b"\\"), literal
    framer = DaemonFramer()
    frames = framer.feed(encoded)
    assert frames == [encoded.rstrip(b"\n")]
    assert framer.depth == 0 and framer.resets == 0 and framer.pending == b""


def request(data: Any) -> dict[str, Any]:
    return {
        "request_id": "r1",
        "work_id": "llm.1002",
        "action": "inference",
        "object": "llm.utf-8",
        "data": data,
    }


# ---- encoding ---------------------------------------------------------------------------------

NASTY_PROMPTS = [
    "def f(x): { return x }",
    "Hello {name}, you are {{role}}",
    "}{}{ stray closers first }}}",
    "C:\\path\\to\\file\\",
    'quote \\" and escaped \\\\" mix',
    "backslash before brace \\{ and \\}",
    "\\u007b is not a brace here",
    "newline\nand\ttab\r",
    'json in json: {"a": {"b": [1, 2, {"c": "}"}]}}',
    "ends with a backslash \\",
]


@pytest.mark.parametrize("prompt", NASTY_PROMPTS)
def test_prompt_with_braces_and_backslashes_is_one_safe_frame(prompt: str) -> None:
    encoded = encode_request(request(prompt))
    assert encoded.endswith(b"}\n")
    assert_brace_safe(encoded)
    assert json.loads(encoded)["data"] == prompt


def test_braces_and_backslash_are_unicode_escapes() -> None:
    encoded = encode_request(request("{\\}"))
    assert b'"data":"\\u007b\\u005c\\u007d"}' in encoded


def test_setup_dict_with_braces_in_system_prompt() -> None:
    setup = {
        "model": "qwen",
        "prompt": 'Reply as JSON: {"answer": ...}',
        "enoutput": True,
        "max_token_len": 1023,
    }
    msg = {"request_id": "s1", "work_id": "llm", "action": "setup", "object": "llm.setup", "data": setup}
    encoded = encode_request(msg)
    assert_brace_safe(encoded)
    assert json.loads(encoded) == msg


def test_emoji_and_cjk_are_raw_utf8() -> None:
    text = "smile 😀 and 你好"
    encoded = encode_request(request(text))
    assert "😀".encode() in encoded and "你好".encode() in encoded
    assert b"\\ud83d" not in encoded.lower() and b"\\u" not in encoded
    assert json.loads(encoded.decode("utf-8"))["data"] == text


def test_key_order_is_envelope_order_with_data_last() -> None:
    scrambled = {
        "data": {"delta": "x", "index": 0, "finish": True},
        "object": "llm.utf-8.stream",
        "zmq_extra": 1,
        "action": "inference",
        "work_id": "llm.1002",
        "request_id": "r9",
    }
    pairs = json.loads(encode_request(scrambled), object_pairs_hook=lambda p: p)
    assert [k for k, _ in pairs] == ["request_id", "work_id", "action", "object", "zmq_extra", "data"]


def test_optional_object_and_data_may_be_absent() -> None:
    encoded = encode_request({"action": "ping", "work_id": "sys", "request_id": "7"})
    assert encoded == b'{"request_id":"7","work_id":"sys","action":"ping"}\n'


def test_compact_json_without_whitespace_after_separators() -> None:
    encoded = encode_request(request({"a": [1, 2.5, None, True]}))
    assert b": " not in encoded and b", " not in encoded
    assert b'"data":{"a":[1,2.5,null,true]}}' in encoded


def test_base64_is_sent_verbatim_without_escaped_slashes() -> None:
    b64 = base64.b64encode(bytes(range(256)) * 3).decode()
    assert "/" in b64 and "+" in b64
    encoded = encode_request(request(b64))
    assert b"\\/" not in encoded
    assert b64.encode() in encoded


def test_encode_value_rejects_unserialisable() -> None:
    with pytest.raises(TypeError):
        encode_value(object())


# ---- decoding ---------------------------------------------------------------------------------


def line(request_id: str, data: Any, work_id: str = "llm.1002") -> bytes:
    return dump_reply(
        {
            "created": 1,
            "data": data,
            "error": {"code": 0, "message": ""},
            "object": "llm.utf-8.stream",
            "request_id": request_id,
            "work_id": work_id,
        }
    )


def test_reply_fields_are_extracted() -> None:
    [reply] = ReplyDecoder().feed(line("i2", {"delta": "Hi", "finish": False, "index": 0}))
    assert (reply.request_id, reply.work_id, reply.object, reply.code, reply.message, reply.created) == (
        "i2",
        "llm.1002",
        "llm.utf-8.stream",
        0,
        "",
        1,
    )
    assert reply.data == {"delta": "Hi", "finish": False, "index": 0} and reply.ok


def test_lines_glued_in_one_read() -> None:
    data = line("a", "x") + line("b", "y") + line("c", "z")
    assert [r.request_id for r in ReplyDecoder().feed(data)] == ["a", "b", "c"]


def test_two_objects_glued_on_one_line() -> None:
    glued = line("a", "x").rstrip(b"\n") + line("b", "y")
    assert [r.request_id for r in ReplyDecoder().feed(glued)] == ["a", "b"]


def test_line_split_across_reads() -> None:
    data = line("a", {"delta": "}{ tricky } text", "finish": False, "index": 0})
    decoder = ReplyDecoder()
    cut = data.index(b"tricky")
    assert decoder.feed(data[:cut]) == []
    [reply] = decoder.feed(data[cut:])
    assert reply.data["delta"] == "}{ tricky } text"


def test_split_utf8_one_byte_at_a_time() -> None:
    text = "é€😀你好 — “quotes” ü"
    data = line("a", text) + line("b", "🙂}")
    decoder = ReplyDecoder()
    replies: list[Reply] = []
    for i in range(len(data)):
        replies.extend(decoder.feed(data[i : i + 1]))
    assert [r.data for r in replies] == [text, "🙂}"]
    assert decoder.discarded == []


def test_reace_reset_line_alone_without_newline() -> None:
    [reply] = ReplyDecoder().feed(REACE_RESET_LINE)
    assert (reply.code, reply.message, reply.request_id, reply.work_id) == (-1, "reace reset", "0", "sys")
    assert reply.object == "" and reply.data is None


def test_reace_reset_line_followed_by_other_lines_in_one_read() -> None:
    replies = ReplyDecoder().feed(REACE_RESET_LINE + line("a", "x") + line("b", "y"))
    assert [(r.code, r.request_id) for r in replies] == [(-1, "0"), (0, "a"), (0, "b")]


def test_reace_reset_line_then_more_in_a_later_read() -> None:
    decoder = ReplyDecoder()
    assert [r.code for r in decoder.feed(REACE_RESET_LINE)] == [-1]
    later = line("a", "x")
    assert [r.request_id for r in decoder.feed(later[:10])] == []
    assert [r.request_id for r in decoder.feed(later[10:])] == ["a"]


def test_reace_reset_line_split_byte_by_byte() -> None:
    decoder = ReplyDecoder()
    replies: list[Reply] = []
    for i in range(len(REACE_RESET_LINE)):
        replies.extend(decoder.feed(REACE_RESET_LINE[i : i + 1]))
    assert [r.code for r in replies] == [-1]


def test_garbage_line_is_discarded_and_decoding_continues() -> None:
    decoder = ReplyDecoder()
    replies = decoder.feed(b"not json at all\n" + line("a", "x"))
    assert [r.request_id for r in replies] == ["a"]
    assert decoder.discarded == [b"not json at all"]


def test_error_reply_fields() -> None:
    data = dump_reply(
        {
            "created": 5,
            "data": "None",
            "error": {"code": -5, "message": "Model loading failed."},
            "object": "None",
            "request_id": "s1",
            "work_id": "llm",
        }
    )
    [reply] = ReplyDecoder().feed(data)
    assert (reply.code, reply.message, reply.work_id, reply.ok) == (-5, "Model loading failed.", "llm", False)


def test_dump_reply_is_sorted_compact_raw_utf8() -> None:
    data = dump_reply({"work_id": "sys", "request_id": "1", "data": "ü", "created": 1})
    assert data == '{"created":1,"data":"ü","request_id":"1","work_id":"sys"}\n'.encode()


# ---- properties -------------------------------------------------------------------------------

# Text biased towards the characters that break naive framing and escaping (a fixed alphabet keeps
# generation fast; it covers ASCII, control characters, 2-, 3- and 4-byte UTF-8 and JSON specials).
_ALPHABET = list('{}[]\\"/:,\n\t\r\x00\x1f\x7f\u2028 aZ9=+éü€你好😀🙂\U0010fffd')
nasty_text = st.text(alphabet=st.sampled_from(_ALPHABET), max_size=30)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | nasty_text,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(nasty_text, children, max_size=4),
    max_leaves=10,
)
identifiers = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789.", min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(value=json_values, work_id=identifiers, obj=nasty_text)
def test_encode_request_round_trips_and_frames_as_one(value: Any, work_id: str, obj: str) -> None:
    msg = {"request_id": "r1", "work_id": work_id, "action": "inference", "object": obj, "data": value}
    encoded = encode_request(msg)
    assert json.loads(encoded) == msg
    assert_brace_safe(encoded)


@settings(max_examples=100, deadline=None)
@given(values=st.lists(json_values, min_size=1, max_size=4))
def test_pipelined_requests_frame_separately(values: list[Any]) -> None:
    stream = b"".join(encode_request(request(v)) for v in values)
    frames = DaemonFramer().feed(stream)
    assert [json.loads(f)["data"] for f in frames] == values


@settings(max_examples=150, deadline=None)
@given(
    payloads=st.lists(json_values, min_size=1, max_size=5),
    cuts=st.lists(st.integers(min_value=0, max_value=10_000), max_size=8),
)
def test_decoder_survives_arbitrary_split_points(payloads: list[Any], cuts: list[int]) -> None:
    replies = [
        {
            "created": i,
            "data": p,
            "error": {"code": 0, "message": ""},
            "object": "x",
            "request_id": f"r{i}",
            "work_id": "llm.1000",
        }
        for i, p in enumerate(payloads)
    ]
    stream = b"".join(dump_reply(r) for r in replies)
    points = sorted({c % (len(stream) + 1) for c in cuts} | {0, len(stream)})
    decoder = ReplyDecoder()
    got: list[Reply] = []
    for start, end in itertools.pairwise(points):
        got.extend(decoder.feed(stream[start:end]))
    assert [r.raw for r in got] == replies
    assert decoder.discarded == []


@settings(max_examples=150, deadline=None)
@given(
    kinds=st.lists(
        st.sampled_from(["reply", "garbage", "glued", "blank", "half_open", "half_close", "number"]),
        min_size=2,
        max_size=8,
    )
)
def test_many_lines_in_one_read_decode_as_line_by_line(kinds: list[str]) -> None:
    # A read of several lines is decoded in one parser call when every line is one object; any other
    # line sends the whole read to the line-by-line path. Either way: the same replies and discards.
    pieces = {
        "reply": line("r", {"delta": "a}b", "finish": False, "index": 0}),
        "garbage": b"not json\n",
        "glued": line("g1", "x").rstrip(b"\n") + line("g2", "y"),
        "blank": b"\n",
        "half_open": b'{"request_id":"h","data":[1\n',
        "half_close": b"2]}\n",
        "number": b"42\n",
    }
    data = b"".join(pieces[kind] for kind in kinds)
    together = ReplyDecoder()
    got = [(r.request_id, r.data) for r in together.feed(data)]
    one_by_one = ReplyDecoder()
    expected = [(r.request_id, r.data) for kind in kinds for r in one_by_one.feed(pieces[kind])]
    assert got == expected
    assert together.discarded == one_by_one.discarded
