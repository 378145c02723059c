"""The pipelined transport's request bytes and reply readers, on scripted sockets.

The live tests run the same code against real memcached; these feed it
replies cut at every possible place, values that hold CRLFs, and replies
that must be refused (out of step, or an error line).
"""

from __future__ import annotations

import socket
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pymemcache.exceptions import (
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownError,
)

from memring.client.transport import _PIPELINED, READ_SIZE, _KernelTimeoutSockets


class ScriptedSocket:
    """Hands out a reply in the given chunks, then b"" (the peer closed)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.sent = b""

    def recv(self, size: int) -> bytes:
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if len(chunk) > size:
            chunk, rest = chunk[:size], chunk[size:]
            self.chunks.insert(0, rest)
        return chunk


class Conn:
    """The part of pymemcache's Client the readers use."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.sock = ScriptedSocket(chunks)

    def _raise_errors(self, line: bytes, name: bytes) -> None:
        from pymemcache.client.base import Client

        Client._raise_errors(self, line, name)  # type: ignore[arg-type]


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


def value_reply(items: dict[bytes, tuple[bytes, int]], cas: bool = False) -> bytes:
    out = b""
    for n, (k, (data, flags)) in enumerate(items.items()):
        token = b" %d" % (n + 100) if cas else b""
        out += b"VALUE %s %d %d%s\r\n%s\r\n" % (k, flags, len(data), token, data)
    return out + b"END\r\n"


def run(method: str, args: tuple[Any, ...], chunks: list[bytes]) -> Any:
    build, read = _PIPELINED[method]
    conn = Conn(chunks)
    return build(*args), read(conn, conn.sock.recv(READ_SIZE), args)


keys = st.binary(min_size=1, max_size=12).map(lambda b: b"k" + b.hex().encode())
values = st.binary(max_size=300) | st.sampled_from([b"\r\n", b"a\r\nEND\r\n", b"\r", b"\n"])


@settings(max_examples=300, deadline=None)
@given(items=st.dictionaries(keys, st.tuples(values, st.integers(0, 2**32 - 1)), max_size=8),
       points=st.lists(st.integers(0, 10_000), max_size=6), cas=st.booleans())
def test_values_are_read_whatever_the_cuts_and_contents(
        items: dict[bytes, tuple[bytes, int]], points: list[int], cas: bool) -> None:
    asked = [*items, b"missing"]
    reply = value_reply(items, cas)
    request, got = run("gets_many" if cas else "get_many", (asked,), cut(reply, points))
    assert request == (b"gets " if cas else b"get ") + b" ".join(asked) + b"\r\n"
    if cas:
        assert got == {k: (item, b"%d" % (n + 100)) for n, (k, item) in enumerate(items.items())}
    else:
        assert got == items


@settings(max_examples=300, deadline=None)
@given(key=keys, data=values, flags=st.integers(0, 2**32 - 1), hit=st.booleans(),
       points=st.lists(st.integers(0, 10_000), max_size=6))
def test_one_key_get_is_read_whatever_the_cuts_and_contents(
        key: bytes, data: bytes, flags: int, hit: bool, points: list[int]) -> None:
    reply = value_reply({key: (data, flags)} if hit else {})
    request, got = run("get", (key,), cut(reply, points))
    assert request == b"get " + key + b"\r\n"
    assert got == ((data, flags) if hit else None)


def test_a_large_value_arrives_in_many_reads() -> None:
    data = bytes(range(256)) * 4096  # 1 MiB, CRLFs included
    reply = value_reply({b"big": (data, 7)})
    _, got = run("get_many", ([b"big"],), [reply[i:i + 1000] for i in range(0, len(reply), 1000)])
    assert got == {b"big": (data, 7)}


@pytest.mark.parametrize("reply, error", [
    (b"VALUE other 0 1\r\nx\r\nEND\r\n", MemcacheUnknownError),  # a key not asked for
    (b"END\r\nVALUE k 0 1\r\n", MemcacheUnknownError),  # bytes after END
    (b"VALUE k 0 3\r\nxyzEND\r\n", MemcacheUnknownError),  # a value longer than said
    (b"SERVER_ERROR out of memory\r\n", MemcacheServerError),
    (b"VALUE k 0 10\r\nshort", MemcacheUnexpectedCloseError),  # the peer closed mid-reply
])
def test_a_reply_out_of_step_is_refused(reply: bytes, error: type[Exception]) -> None:
    with pytest.raises(error):
        run("get_many", ([b"k"],), [reply])
    with pytest.raises(error):
        run("get", (b"k",), [reply])


@pytest.mark.parametrize("reply", [
    b"VALUE k x 1\r\nv\r\nEND\r\n",  # flags not a number
    b"VALUE k 0 -1\r\nv\r\nEND\r\n",  # a length not a number
    b"VALUE k 0 1 2 3\r\nv\r\nEND\r\n",  # a field too many
])
def test_a_malformed_header_is_refused(reply: bytes) -> None:
    for method, args in (("get", (b"k",)), ("get_many", ([b"k"],))):
        with pytest.raises(MemcacheUnknownError):
            run(method, args, [reply])


@pytest.mark.parametrize("method, args, reply, expected", [
    ("set", (b"k", (b"v", 3), 10), b"STORED\r\n", True),
    ("add", (b"k", (b"v", 0), 0), b"NOT_STORED\r\n", False),
    ("replace", (b"k", (b"v", 0), 0), b"STORED\r\n", True),
    ("cas", (b"k", (b"v", 0), b"42", 0), b"EXISTS\r\n", False),
    ("cas", (b"k", (b"v", 0), b"42", 0), b"NOT_FOUND\r\n", None),
    ("delete", (b"k",), b"NOT_FOUND\r\n", False),
    ("touch", (b"k", 5), b"TOUCHED\r\n", True),
    ("set_many", ({b"a": (b"1", 0), b"b": (b"2", 0)}, 0), b"STORED\r\nNOT_STORED\r\n", [b"b"]),
    ("delete_many", ([b"a", b"b"],), b"DELETED\r\nNOT_FOUND\r\n", None),
])
def test_one_line_replies(method: str, args: tuple[Any, ...], reply: bytes,
                          expected: Any) -> None:
    for chunks in ([reply], [reply[:3], reply[3:]]):
        assert run(method, args, chunks)[1] == expected


@settings(max_examples=200, deadline=None)
@given(stored=st.lists(st.booleans(), min_size=1, max_size=30),
       points=st.lists(st.integers(0, 10_000), max_size=8))
def test_many_one_line_replies_whatever_the_cuts(stored: list[bool], points: list[int]) -> None:
    items = {b"k%d" % i: (b"v", 0) for i in range(len(stored))}
    reply = b"".join(b"STORED\r\n" if ok else b"NOT_STORED\r\n" for ok in stored)
    _, refused = run("set_many", (items, 0), cut(reply, points))
    assert refused == [k for k, ok in zip(items, stored, strict=True) if not ok]


def test_storage_requests_are_memcached_commands() -> None:
    def request(method: str, *args: Any) -> bytes:
        return _PIPELINED[method][0](*args)

    assert request("set", b"k", (b"v\r\n", 5), 30) == b"set k 5 30 3\r\nv\r\n\r\n"
    assert request("cas", b"k", (b"v", 0), b"9", 0) == b"cas k 0 0 1 9\r\nv\r\n"
    assert request("delete", b"k") == b"delete k\r\n"
    assert request("delete_many", [b"a", b"b"]) == b"delete a\r\ndelete b\r\n"
    assert request("touch", b"k", 7) == b"touch k 7\r\n"


def test_an_unexpected_line_is_refused() -> None:
    with pytest.raises(MemcacheUnknownError):
        run("set", (b"k", (b"v", 0), 0), [b"DELETED\r\n"])
    with pytest.raises(MemcacheUnknownError):
        run("set", (b"k", (b"v", 0), 0), [b"STORED\r\nSTORED\r\n"])  # a reply too many


@pytest.mark.parametrize("seconds, timeval", [(0.3, (0, 300_000)), (2.5, (2, 500_000)),
                                              (0.9999999, (1, 0)), (1e-9, (0, 1))])
def test_kernel_timeouts_are_never_zero(seconds: float, timeval: tuple[int, int]) -> None:
    sockets = _KernelTimeoutSockets(seconds)
    assert struct.unpack("ll", sockets._timeval) == timeval  # (0, 0) would block forever
    sock = sockets.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        set_to = struct.unpack("ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, 16))
        assert set_to != (0, 0)  # the kernel rounds it up to whole scheduler ticks
        assert sock.gettimeout() is None  # blocking: no poll() before each read
    finally:
        sock.close()
