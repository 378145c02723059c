"""The wire format: request bytes and sans-I/O reply parsers, and the thread
transport's read loop over them, on scripted sockets.

The live tests run the same code against real memcached; these feed it
replies cut at every possible place, values that hold CRLFs, and replies
that must be refused (out of step, an error line, a size past the limit).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memring import Node, ProtocolError, Timeouts
from memring.client.transport import READ_SIZE, SocketTransport, _KernelTimeoutSockets, _timeval
from memring.errors import ServerReplyError
from memring.protocol import COMMANDS, INCOMPLETE, BadReply, ErrorLine, MetadumpReader
from memring.protocol.errors import Cut
from memring.protocol.replies import MAX_LINE

LIMIT = 1024 * 1024


class ScriptedSocket:
    """Hands out a reply in the given chunks, then b"" (the peer closed)."""

    def __init__(self, chunks: list[bytes]) -> None:
        self.chunks = list(chunks)
        self.options: list[tuple[int, int, bytes]] = []

    def recv(self, size: int) -> bytes:
        if not self.chunks:
            return b""
        chunk = self.chunks.pop(0)
        if len(chunk) > size:
            chunk, rest = chunk[:size], chunk[size:]
            self.chunks.insert(0, rest)
        return chunk

    def setsockopt(self, level: int, option: int, value: bytes) -> None:
        self.options.append((level, option, value))


def cut(data: bytes, points: list[int]) -> list[bytes]:
    points = sorted({p % (len(data) + 1) for p in points} | {0, len(data)})
    return [data[a:b] for a, b in zip(points, points[1:], strict=False) if b > a]


def value_reply(items: dict[bytes, tuple[bytes, int]], cas: bool = False) -> bytes:
    out = b""
    for n, (k, (data, flags)) in enumerate(items.items()):
        token = b" %d" % (n + 100) if cas else b""
        out += b"VALUE %s %d %d%s\r\n%s\r\n" % (k, flags, len(data), token, data)
    return out + b"END\r\n"


def transport() -> SocketTransport:
    return SocketTransport(Node("127.0.0.1", 1), timeouts=Timeouts(read=5.0), max_item_size=LIMIT)


def run(method: str, args: tuple[Any, ...], chunks: list[bytes]) -> tuple[bytes, Any]:
    """The request bytes, and what the transport reads from ``chunks``."""
    command = COMMANDS[method]
    sock = ScriptedSocket(chunks)
    reply = transport().read_reply(sock, command.parse, args,  # type: ignore[arg-type]
                                   sock.recv(READ_SIZE), time.monotonic() + 5)
    return command.build(*args), reply


def parse_growing(method: str, args: tuple[Any, ...], reply: bytes) -> Any:
    """Parse every prefix of ``reply``: incomplete until the whole reply is there."""
    parse = COMMANDS[method].parse
    for n in range(len(reply)):
        got, need = parse(reply[:n], 0, args, LIMIT)
        assert got is INCOMPLETE, (n, got)
        assert need > n
    got, end = parse(reply, 0, args, LIMIT)
    assert end == len(reply)
    return got


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


@settings(max_examples=100, deadline=None)
@given(items=st.dictionaries(keys, st.tuples(values, st.integers(0, 2**32 - 1)), max_size=4))
def test_a_value_reply_is_incomplete_until_its_last_byte(
        items: dict[bytes, tuple[bytes, int]]) -> None:
    assert parse_growing("get_many", ([*items, b"x"],), value_reply(items)) == items


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
    (b"VALUE other 0 1\r\nx\r\nEND\r\n", BadReply),  # a key not asked for
    (b"VALUE k 0 1\r\nx\r\nVALUE k 0 1\r\nx\r\nEND\r\n", BadReply),  # the same key twice
    (b"END\r\nVALUE k 0 1\r\n", BadReply),  # bytes after END
    (b"VALUE k 0 3\r\nxyzEND\r\n", BadReply),  # a value longer than said
    (b"SERVER_ERROR out of memory\r\n", ErrorLine),
    (b"ERROR\r\n", ErrorLine),
    (b"VALUE k 0 10\r\nshort", ConnectionError),  # the peer closed mid-reply
])
def test_a_reply_out_of_step_is_refused(reply: bytes, error: type[Exception]) -> None:
    for method, args in (("get_many", ([b"k"],)), ("get", (b"k",))):
        with pytest.raises(Exception) as caught:
            run(method, args, [reply])
        assert isinstance(caught.value, (error, Cut))


@pytest.mark.parametrize("reply", [
    b"VALUE k x 1\r\nv\r\nEND\r\n",  # flags not a number
    b"VALUE k 0 -1\r\nv\r\nEND\r\n",  # a length not a number
    b"VALUE k 0 1 2 3\r\nv\r\nEND\r\n",  # a field too many
    b"VALUE k 4294967296 1\r\nv\r\nEND\r\n",  # flags past 32 bits
])
def test_a_malformed_header_is_refused(reply: bytes) -> None:
    for method, args in (("get", (b"k",)), ("get_many", ([b"k"],))):
        with pytest.raises(BadReply):
            run(method, args, [reply])


@pytest.mark.parametrize("size", [LIMIT + 1, 2**31, 2**40])
def test_a_value_past_the_item_limit_is_refused_before_it_is_read(size: int) -> None:
    header = b"VALUE k 0 %d\r\n" % size
    for method, args in (("get", (b"k",)), ("get_many", ([b"k"],)), ("gets_many", ([b"k"],))):
        parse = COMMANDS[method].parse
        head = header if method != "gets_many" else header.replace(b"\r\n", b" 5\r\n")
        with pytest.raises(BadReply, match="limit"):
            parse(head, 0, args, LIMIT)


def test_a_line_without_an_end_is_refused_once_it_is_too_long() -> None:
    parse = COMMANDS["get_many"].parse
    assert parse(b"x" * MAX_LINE, 0, ([b"k"],), LIMIT)[0] is INCOMPLETE
    with pytest.raises(BadReply):
        parse(b"x" * (MAX_LINE + 1), 0, ([b"k"],), LIMIT)
    with pytest.raises(BadReply):
        COMMANDS["set"].parse(b"S" * (MAX_LINE + 1), 0, (), LIMIT)


@pytest.mark.parametrize("method, args, reply, expected", [
    ("set", (b"k", (b"v", 3), 10), b"STORED\r\n", True),
    ("add", (b"k", (b"v", 0), 0), b"NOT_STORED\r\n", False),
    ("replace", (b"k", (b"v", 0), 0), b"STORED\r\n", True),
    ("cas", (b"k", (b"v", 0), b"42", 0), b"EXISTS\r\n", False),
    ("cas", (b"k", (b"v", 0), b"42", 0), b"NOT_FOUND\r\n", None),
    ("delete", (b"k",), b"NOT_FOUND\r\n", False),
    ("touch", (b"k", 5), b"TOUCHED\r\n", True),
    ("touch_flags", (b"k", 5), b"HD f32\r\n", 32),
    ("touch_flags", (b"k", 5), b"EN\r\n", None),
    ("incr", (b"k", 5), b"12\r\n", 12),
    ("incr", (b"k", 5), b"NOT_FOUND\r\n", None),
    ("version", (), b"VERSION 1.6.18\r\n", b"1.6.18"),
    ("flush_all", (0,), b"OK\r\n", True),
    ("stats", (), b"STAT pid 12\r\nSTAT uptime 3\r\nEND\r\n", {b"pid": b"12", b"uptime": b"3"}),
    ("set_many", ({b"a": (b"1", 0), b"b": (b"2", 0)}, 0), b"STORED\r\nNOT_STORED\r\n", [b"b"]),
    ("meta_many", ([b"a", b"b", b"c"],),
     b"VA 2 ka f5 t-1 c9\r\nxy\r\nEN kb\r\nEN\r\n", {b"a": ((b"xy", 5), b"9", -1)}),
])
def test_replies(method: str, args: tuple[Any, ...], reply: bytes, expected: Any) -> None:
    for chunks in ([reply], [reply[:3], reply[3:]]):
        assert run(method, args, chunks)[1] == expected
    assert parse_growing(method, args, reply) == expected


@settings(max_examples=200, deadline=None)
@given(stored=st.lists(st.booleans(), min_size=1, max_size=30),
       points=st.lists(st.integers(0, 10_000), max_size=8))
def test_many_one_line_replies_whatever_the_cuts(stored: list[bool], points: list[int]) -> None:
    items = {b"k%d" % i: (b"v", 0) for i in range(len(stored))}
    reply = b"".join(b"STORED\r\n" if ok else b"NOT_STORED\r\n" for ok in stored)
    _, refused = run("set_many", (items, 0), cut(reply, points))
    assert refused == [k for k, ok in zip(items, stored, strict=True) if not ok]


def test_a_batch_reads_each_reply_and_keeps_an_error_line_as_that_commands_result() -> None:
    ops = [("get", (b"a",)), ("set", (b"a", (b"x", 0), 5)), ("add", (b"b", (b"y", 0), 0)),
           ("touch", (b"c", 1))]
    reply = b"VALUE a 0 1\r\nz\r\nEND\r\nSTORED\r\nSERVER_ERROR out of memory\r\nTOUCHED\r\n"
    request, got = run("batch", (ops,), [reply])
    assert request == (b"get a\r\nset a 0 5 1\r\nx\r\nadd b 0 0 1\r\ny\r\ntouch c 1\r\n")
    assert got[:2] == [(b"z", 0), True] and got[3] is True
    assert isinstance(got[2], ServerReplyError)


@pytest.mark.parametrize("reply", [
    b"VA 1 kother f0 t-1 c1\r\nx\r\n",  # another key's value
    b"EN kother\r\n",  # another key's miss
    b"VA 1 ka f0 t-1\r\nx\r\n",  # no CAS token
    b"VA 99999999 ka f0 t-1 c1\r\n",  # past the limit
])
def test_a_meta_reply_out_of_step_is_refused(reply: bytes) -> None:
    with pytest.raises(BadReply):
        COMMANDS["meta_many"].parse(reply, 0, ([b"a"],), LIMIT)


def test_storage_requests_are_memcached_commands() -> None:
    def request(method: str, *args: Any) -> bytes:
        return COMMANDS[method].build(*args)

    assert request("set", b"k", (b"v\r\n", 5), 30) == b"set k 5 30 3\r\nv\r\n\r\n"
    assert request("cas", b"k", (b"v", 0), b"9", 0) == b"cas k 0 0 1 9\r\nv\r\n"
    assert request("delete", b"k") == b"delete k\r\n"
    assert request("touch", b"k", 7) == b"touch k 7\r\n"
    assert request("touch_flags", b"k", 7) == b"mg k f T7\r\n"
    assert request("meta_many", [b"a", b"b"]) == b"mg a k v f t c\r\nmg b k v f t c\r\n"
    assert request("stats", "slabs") == b"stats slabs\r\n"


def test_an_unexpected_line_is_refused() -> None:
    with pytest.raises(BadReply):
        run("set", (b"k", (b"v", 0), 0), [b"DELETED\r\n"])
    with pytest.raises(BadReply):
        run("set", (b"k", (b"v", 0), 0), [b"STORED\r\nSTORED\r\n"])  # a reply too many


def test_a_reply_that_trickles_in_is_cut_off_at_the_calls_deadline() -> None:
    class Dripping(ScriptedSocket):
        def recv(self, size: int) -> bytes:
            time.sleep(0.02)
            return b"V"

    t = SocketTransport(Node("127.0.0.1", 1), timeouts=Timeouts(read=0.2), max_item_size=LIMIT)
    sock = Dripping([])
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        t.read_reply(sock, COMMANDS["get"].parse, (b"k",), b"V",  # type: ignore[arg-type]
                     start + 0.2)
    assert time.monotonic() - start < 0.5
    # every read after the first was bounded by the time left, and the full
    # timeout was put back for the connection's next call
    assert sock.options[-1][2] == _timeval(0.2)
    assert len(sock.options) > 2


def test_metadump_is_read_as_it_arrives() -> None:
    dump = b"".join(b"key=k%d exp=-1 la=1 cas=%d fetch=no cls=1 size=63\n" % (i, i)
                    for i in range(500)) + b"key=with%20space exp=-1\nEND\r\n"
    reader = MetadumpReader()
    chunks = cut(dump, list(range(7, len(dump), 97)))
    assert [reader.feed(c) for c in chunks][-1] is True
    assert reader.keys[:2] == [b"k0", b"k1"] and reader.keys[-1] == b"with space"
    assert len(reader.keys) == 501
    with pytest.raises(ErrorLine):
        MetadumpReader().feed(b"BUSY currently processing crawler request\r\n")


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


def test_a_protocol_error_is_a_node_failure() -> None:
    assert issubclass(ProtocolError, Exception)
    from memring import NodeUnavailable
    assert issubclass(ProtocolError, NodeUnavailable)


@pytest.mark.parametrize("reply", [
    b"VALUE k " + b"0" * 11 + b" 1\r\nx\r\nEND\r\n",            # flags of 11 digits
    b"VALUE k 0 " + b"0" * 20 + b"1\r\nx\r\nEND\r\n",           # a length of 21 digits
])
def test_overlong_numbers_are_refused(reply: bytes) -> None:
    from memring.protocol.replies import BadReply, parse_item, parse_values

    for parse, args in ((parse_item, (b"k",)), (parse_values(4), ([b"k"],))):
        with pytest.raises(BadReply):
            parse(reply, 0, args, 1 << 20)


def test_an_overlong_cas_token_is_refused() -> None:
    from memring.protocol.replies import BadReply, parse_meta, parse_values

    with pytest.raises(BadReply):
        parse_values(5)(b"VALUE k 0 1 " + b"9" * 21 + b"\r\nx\r\nEND\r\n", 0, ([b"k"],), 1 << 20)
    with pytest.raises(BadReply):
        parse_meta(b"VA 1 f0 t-1 c" + b"9" * 21 + b" kk\r\nx\r\n", 0, ([b"k"],), 1 << 20)
    got, _ = parse_meta(b"VA 1 f0 t-1 c" + b"9" * 20 + b" k" + b"k" * 200 + b"\r\nx\r\n", 0,
                        ([b"k" * 200],), 1 << 20)
    assert got[b"k" * 200][1] == b"9" * 20  # a long key is fine: only numbers are bounded


def test_stats_cachedump_item_lines_are_read_as_pymemcache_reads_them() -> None:
    reply = b"ITEM a [1 b; 0 s]\r\nITEM bb [13 b; 1796192840 s]\r\nEND\r\n"
    assert COMMANDS["stats"].parse(reply, 0, ("cachedump", "1", "1"), LIMIT) == (
        {b"a": b"[1 b; 0 s]", b"bb": b"[13 b; 1796192840 s]"}, len(reply))
    with pytest.raises(BadReply):
        COMMANDS["stats"].parse(b"VALUE a 0 1\r\nx\r\nEND\r\n", 0, (), LIMIT)


@pytest.mark.parametrize(("reply", "end", "expected"), [
    (b"VERSION 1.6.18\r\n", b"\r\n", b"VERSION 1.6.18"),
    (b"STAT a 1\r\nSTAT b 2\r\nEND\r\n", b"END\r\n", b"STAT a 1\r\nSTAT b 2\r\n"),
    (b"HD\r\nmore", b"\r\n", b"HD"),  # what follows is the caller's to drop
])
def test_a_raw_reply_is_read_up_to_its_end_tokens(reply: bytes, end: bytes,
                                                  expected: bytes) -> None:
    args = (b"cmd", end)
    assert COMMANDS["raw"].build(*args) == b"cmd\r\n"
    for cut in range(len(reply)):
        if reply.find(end) + len(end) > cut:
            assert COMMANDS["raw"].parse(reply[:cut], 0, args, LIMIT)[0] is INCOMPLETE
    assert COMMANDS["raw"].parse(reply, 0, args, LIMIT)[0] == expected


@pytest.mark.parametrize("line", [b"ERROR", b"CLIENT_ERROR bad", b"SERVER_ERROR no",
                                  b"ERROR: shutdown not enabled"])
def test_raw_and_shutdown_raise_an_error_line(line: bytes) -> None:
    for method, args in (("raw", (b"x", b"END\r\n")), ("shutdown", (False,))):
        with pytest.raises(ErrorLine) as info:
            COMMANDS[method].parse(line + b"\r\n", 0, args, LIMIT)
        assert info.value.line == line


def test_a_raw_reply_without_its_end_is_refused_past_the_limit() -> None:
    with pytest.raises(BadReply):
        COMMANDS["raw"].parse(b"x" * 101, 0, (b"cmd", b"never"), 100)
    assert COMMANDS["shutdown"].build(True) == b"shutdown graceful\r\n"
    with pytest.raises(BadReply):
        COMMANDS["shutdown"].parse(b"OK\r\n", 0, (False,), LIMIT)
