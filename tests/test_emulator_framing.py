"""llm-sys framing (protocol §1.2): the framer alone, then the same rules over a real socket."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator

import pytest

from emulator_helpers import RawClient, client_for, request, started_emulator
from stackflow_openai.emulator.framing import DeviceFramer, reace_reset_line

REACE = re.compile(
    rb'\{"request_id": "0","work_id": "sys","created": \d+,"error":\{"code":-1, "message":"reace reset"\}\}'
)
PING = request("p", "sys", "ping")


def feed_all(framer: DeviceFramer, *chunks: bytes) -> tuple[list[bytes], list[bool]]:
    frames: list[bytes] = []
    resets = []
    for chunk in chunks:
        result = framer.feed(chunk)
        frames += result.frames
        resets.append(result.reset)
    return frames, resets


def test_back_to_back_objects_without_newline_are_two_frames() -> None:
    frames, _ = feed_all(DeviceFramer(), b'{"a":1}{"b":2}')
    assert frames == [b'{"a":1}', b'{"b":2}']


def test_object_split_over_many_reads_is_reassembled() -> None:
    data = b'{"a":{"b":"c"}}'
    frames, _ = feed_all(DeviceFramer(), *(data[i : i + 1] for i in range(len(data))))
    assert frames == [data]


def test_bytes_between_objects_are_dropped() -> None:
    frames, resets = feed_all(DeviceFramer(), b'  junk\n{"a":1}\r\nmore junk {"b":2} tail')
    assert frames == [b'{"a":1}', b'{"b":2}']
    assert resets == [False]


def test_braces_inside_strings_count() -> None:
    # The `}` in the string closes the object early; the real closing brace is then stray.
    result = DeviceFramer().feed(b'{"a":"}"}{"b":2}')
    assert result.frames == [b'{"a":"}']
    assert result.reset  # and {"b":2}, later in the same read, is gone


def test_backslash_before_a_brace_does_not_count() -> None:
    frames, _ = feed_all(DeviceFramer(), b'{"a":"x\\\\{"}{"b":2}')
    assert frames == [b'{"a":"x\\\\{"}', b'{"b":2}']


def test_backslash_exception_only_looks_inside_the_same_read() -> None:
    framer = DeviceFramer()
    frames, _ = feed_all(framer, b'{"a":"x\\', b'{"}')  # the `{` is first in its read: it counts
    assert frames == []
    assert framer.pending > 0


def test_unclosed_brace_swallows_everything_after_it() -> None:
    framer = DeviceFramer()
    frames, _ = feed_all(framer, b'{"a":1', b'{"b":2}\n', b'{"c":3}')
    assert frames == []
    frames, _ = feed_all(framer, b"}")
    assert frames == [b'{"a":1{"b":2}\n{"c":3}}']


def test_stray_close_brace_resets_and_drops_rest_of_read() -> None:
    framer = DeviceFramer()
    result = framer.feed(b'{"a":1}}{"b":2}')
    assert result.frames == [b'{"a":1}'] and result.reset
    assert framer.feed(b'{"c":3}').frames == [b'{"c":3}']  # the next read is fine again


def test_neon_quirk_sixteen_byte_runs_before_an_object_drop_it() -> None:
    assert DeviceFramer().feed(b" " * 16 + b'{"a":1}').frames == []
    assert DeviceFramer().feed(b" " * 17 + b'{"a":1}').frames == [b'{"a":1}']
    assert DeviceFramer(neon=False).feed(b" " * 16 + b'{"a":1}').frames == [b'{"a":1}']


def test_reace_reset_line_is_exact() -> None:
    line = reace_reset_line(1736400000)
    assert line == (
        b'{"request_id": "0","work_id": "sys","created": 1736400000,'
        b'"error":{"code":-1, "message":"reace reset"}}'
    )
    assert not line.endswith(b"\n")


@pytest.fixture
async def client() -> AsyncIterator[RawClient]:
    async with started_emulator() as emu, client_for(emu) as raw:
        yield raw


async def test_socket_stray_brace_gets_reace_line_without_newline(client: RawClient) -> None:
    await client.send_raw(b"}" + PING)
    data = await client.recv_raw()
    assert REACE.fullmatch(data), data  # nothing else: the ping in the same read was dropped
    await client.send_raw(PING)  # the connection itself is still usable
    assert (await client.recv())["request_id"] == "p"


async def test_socket_braces_in_strings_break_the_frame(client: RawClient) -> None:
    await client.send_raw(request("a", "sys", "ping", data="}") + PING)
    first = await client.recv()
    assert first["error"]["code"] == -2 and first["request_id"] == "0" and first["work_id"] == "sys"
    assert REACE.fullmatch(await client.recv_raw())


async def test_socket_balanced_or_escaped_braces_pass(client: RawClient) -> None:
    await client.send_raw(request("a", "sys", "ping", data="{x}"))
    assert (await client.recv())["request_id"] == "a"
    await client.send_raw(b'{"request_id":"b","work_id":"sys","action":"ping","data":"a\\\\{"}' + PING)
    assert (await client.recv())["request_id"] == "b"
    assert (await client.recv())["request_id"] == "p"


async def test_socket_garbage_between_requests_is_ignored(client: RawClient) -> None:
    await client.send_raw(
        b"hello\r\n" + request("a", "sys", "ping") + b"  \n\n xyz" + request("b", "sys", "ping")
    )
    assert [(await client.recv())["request_id"] for _ in range(2)] == ["a", "b"]
    await client.expect_silence()


async def test_socket_unclosed_brace_swallows_later_requests(client: RawClient) -> None:
    await client.send_raw(b'{"request_id":"x"\n')
    await client.send_raw(PING)
    await client.expect_silence()
    await client.send_raw(b"}")  # closes the swallowed mess: one invalid frame
    reply = await client.recv()
    assert reply["error"] == {"code": -2, "message": "json format error"}


async def test_socket_pipelined_requests_in_one_write(client: RawClient) -> None:
    await client.send_raw(b"".join(request(f"r{i}", "sys", "ping") for i in range(20)))
    assert [(await client.recv())["request_id"] for _ in range(20)] == [f"r{i}" for i in range(20)]
