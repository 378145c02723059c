"""The network-fault test utilities: HostileServer, its behaviours, and FaultProxy.

Each behaviour is checked as a raw socket sees it (the exact bytes, and
how the connection ends) and as a plain pymemcache client sees it. The
proxy tests run a real memcached (``integration``). Timing bounds are
generous: they tell "waited" from "did not wait", nothing finer.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest
from pymemcache.client.base import Client as PymemcacheClient
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownCommandError,
    MemcacheUnknownError,
)

import memring
from memring.engine.serde import safe_serde
from memring.tools.local import LocalCluster
from tests.netfaults import (
    FaultProxy,
    HostileServer,
    HostileServerError,
    MiniMemcached,
    Request,
    RequestFramer,
    behaviours,
    proxied_node,
)
from tests.netfaults.behaviours import Send, Sleep

GET_K = b"get k\r\n"
VALUE_K = b"VALUE k 0 5\r\nhello\r\nEND\r\n"


@pytest.fixture(autouse=True)
def no_leftover_threads() -> Iterator[None]:
    """Every server and proxy a test starts is gone when it ends."""
    yield
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        left = [t.name for t in threading.enumerate()
                if t.name.startswith(("hostile-", "fault-proxy-"))]
        if not left:
            return
        time.sleep(0.01)
    pytest.fail(f"threads outlived the test: {left}")


@pytest.fixture
def server() -> Iterator[HostileServer]:
    """An honest server holding ``k`` = ``hello``; tests make it hostile."""
    with HostileServer() as s:
        s.store.put(b"k", b"hello")
        yield s


def pymc(server: HostileServer, **options: object) -> PymemcacheClient:
    """A plain pymemcache client of ``server`` with short timeouts (close it)."""
    kwargs: dict[str, object] = {"connect_timeout": 0.3, "timeout": 0.3,
                                 "default_noreply": False}
    kwargs.update(options)
    return PymemcacheClient(server.address, **kwargs)


def exchange(address: tuple[str, int], request: bytes, *, timeout: float = 0.5,
             until: bytes | None = None) -> tuple[bytes, str]:
    """Send ``request`` on a new raw connection; read until ``until`` ends the bytes, the
    server closes, resets, or ``timeout`` passes. Returns the bytes and how it ended:
    "complete", "eof", "reset" or "timeout"."""
    try:
        sock = socket.create_connection(address, timeout=timeout)
    except ConnectionResetError:  # reset before connect() returned
        return b"", "reset"
    with sock:
        if request:
            sock.sendall(request)
        return read_all(sock, timeout=timeout, until=until)


def read_all(sock: socket.socket, *, timeout: float, until: bytes | None = None
             ) -> tuple[bytes, str]:
    """Read ``sock`` as :func:`exchange` does; returns the bytes and how the reading ended."""
    got = b""
    deadline = time.monotonic() + timeout
    while True:
        if until is not None and got.endswith(until):
            return got, "complete"
        left = deadline - time.monotonic()
        if left <= 0:
            return got, "timeout"
        sock.settimeout(left)
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return got, "timeout"
        except ConnectionResetError:
            return got, "reset"
        if not chunk:
            return got, "eof"
        got += chunk


# -- the protocol: framing and honest replies -----------------------------------

PIPELINE = (b"set a 1 0 3\r\nabc\r\nget a b\r\nappend a 0 0 2 noreply\r\nde\r\n"
            b"gets a\r\ncas a 0 0 1 9\r\nx\r\nincr n 1\r\nms m 2 T0\r\nhi\r\nmg m v\r\n"
            b"delete a\r\nstats\r\nquit\r\n")


def test_framer_gives_the_same_requests_whatever_the_chunking() -> None:
    whole = RequestFramer().feed(PIPELINE)
    assert [r.command for r in whole] == ["set", "get", "append", "gets", "cas", "incr", "ms",
                                          "mg", "delete", "stats", "quit"]
    assert b"".join(r.raw for r in whole) == PIPELINE
    framer = RequestFramer()
    bytewise = [r for i in range(len(PIPELINE)) for r in framer.feed(PIPELINE[i:i + 1])]
    assert [(r.command, r.args, r.data) for r in bytewise] == [
        (r.command, r.args, r.data) for r in whole]
    assert whole[0].data == b"abc" and whole[0].keys == (b"a",)
    assert whole[1].keys == (b"a", b"b") and whole[2].noreply


def test_framer_reports_malformed_requests_as_memcached_does() -> None:
    reqs = RequestFramer(item_size_max=10).feed(
        b"set k 0 0 x\r\nset k 0 0 2\r\nabcd\r\nset k 0 0 20\r\n" + b"z" * 20 + b"\r\nmn\r\n")
    # After the bad chunk "ab" + "cd", its "\r\n" is an empty line (memcached: ERROR).
    assert [(r.command, r.error) for r in reqs] == [
        ("set", b"CLIENT_ERROR bad command line format"), ("set", b"CLIENT_ERROR bad data chunk"),
        ("", None), ("set", b"SERVER_ERROR object too large for cache"), ("mn", None)]
    assert MiniMemcached().execute(reqs[2]) == b"ERROR\r\n"


def test_framer_swallows_an_oversized_value_that_arrives_in_pieces() -> None:
    framer = RequestFramer(item_size_max=10)
    assert framer.feed(b"set k 0 0 20\r\n" + b"z" * 5) == []
    assert framer.feed(b"z" * 10) == []
    (too_big, mn) = framer.feed(b"z" * 5 + b"\r\nmn\r\n")
    assert too_big.error == b"SERVER_ERROR object too large for cache" and mn.command == "mn"


def honest(store: MiniMemcached, wire: bytes) -> list[bytes]:
    return [store.execute(r) for r in RequestFramer(store=store).feed(wire)]


def test_store_answers_like_memcached() -> None:
    store = MiniMemcached()
    assert honest(store, PIPELINE) == [
        b"STORED\r\n", b"VALUE a 1 3\r\nabc\r\nEND\r\n", b"", b"VALUE a 1 5 2\r\nabcde\r\nEND\r\n",
        b"EXISTS\r\n", b"NOT_FOUND\r\n", b"HD\r\n", b"VA 2\r\nhi\r\n", b"DELETED\r\n",
        store.execute(Request("stats", (), b"stats\r\n")), b""]
    assert honest(store, b"add n 0 0 1\r\n7\r\nadd n 0 0 1\r\n8\r\nincr n 5\r\ndecr n 100\r\n"
                         b"replace q 0 0 1\r\nx\r\nprepend n 0 0 1\r\n1\r\nget n\r\n"
                         b"incr nope 1\r\ntouch n 10\r\nbogus\r\nflush_all\r\nget n\r\n") == [
        b"STORED\r\n", b"NOT_STORED\r\n", b"12\r\n", b"0\r\n", b"NOT_STORED\r\n", b"STORED\r\n",
        b"VALUE n 0 2\r\n10\r\nEND\r\n", b"NOT_FOUND\r\n", b"TOUCHED\r\n", b"ERROR\r\n",
        b"OK\r\n", b"END\r\n"]
    store.put(b"t", b"text")
    assert honest(store, b"incr t 1\r\nmg t s v f t k\r\nmg zz v\r\nmn\r\n") == [
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n",
        b"VA 4 s4 f0 t-1 kt\r\ntext\r\n", b"EN\r\n", b"MN\r\n"]
    assert honest(store, b"ma c N0 J5 v\r\nma c D3 v\r\nma c MD D100\r\nmg c v\r\n"
                         b"ms c 1 ME\r\nx\r\nms c 1 MA q\r\nz\r\nmd c C1\r\nmd c q\r\n"
                         b"md c\r\nmg c q\r\nmn\r\n") == [
        b"VA 1\r\n5\r\n", b"VA 1\r\n8\r\n", b"HD\r\n", b"VA 1\r\n0\r\n", b"NS\r\n", b"",
        b"EX\r\n", b"", b"NF\r\n", b"", b"MN\r\n"]


def test_store_expires_items_by_its_clock() -> None:
    now = [1_000_000.0]
    store = MiniMemcached(clock=lambda: now[0])
    honest(store, b"set a 0 10 1\r\n1\r\nset b 0 -1 1\r\n1\r\nset c 0 0 1\r\n1\r\n")
    assert store.keys() == [b"a", b"c"]
    now[0] += 11
    assert store.keys() == [b"c"]
    assert honest(store, b"stats\r\n")[0].startswith(b"STAT pid ")


# -- the server, honest ------------------------------------------------------------

def test_honest_server_serves_pymemcache(server: HostileServer) -> None:
    client = pymc(server)
    try:
        assert client.set("a", b"1") is True
        assert client.get_many(["a", "k", "zz"]) == {"a": b"1", "k": b"hello"}
        assert client.incr("a", 4) == 5
        value, cas = client.gets("a")
        assert client.cas("a", b"9", cas) is True and client.cas("a", b"8", cas) is False
        assert client.touch("a", 100) is True and client.delete("a") is True
        assert client.get("a") is None
        assert client.version() == b"1.6.21" and b"pid" in client.stats()
    finally:
        client.close()
    assert server.accepted == 1
    assert [r.command for r in server.requests()][:3] == ["set", "get", "incr"]


def test_honest_server_serves_memring(server: HostileServer) -> None:
    client = memring.Client([server.server], timeouts=memring.Timeouts(connect=0.3, read=0.3))
    try:
        client.set("session", {"user": 7})
        assert client.get("session") == {"user": 7}
        assert client.get_many(["session", "nope"]) == {"session": {"user": 7}}
    finally:
        client.close()


def test_server_records_bytes_per_connection_and_proves_nothing_was_sent(
        server: HostileServer) -> None:
    client = memring.Client([server.server])
    try:
        with pytest.raises(memring.InvalidKey):
            client.get("two words")
    finally:
        client.close()
    assert server.received() == []  # not even a connection
    exchange(server.address, b"version\r\n", until=b"\r\n")
    exchange(server.address, GET_K, until=b"END\r\n")
    assert server.received() == [b"version\r\n", GET_K]
    conns = server.connections()
    assert conns[1].sent == VALUE_K and conns[1].bytes_sent == len(VALUE_K)
    assert server.wait_until(lambda: all(c.closed for c in server.connections()))
    assert {c.how for c in server.connections()} == {"peer closed"}


# -- the server, hostile: each canned behaviour --------------------------------------

def test_drip_sends_the_honest_reply_a_byte_at_a_time(server: HostileServer) -> None:
    server.behave(behaviours.drip(0.01), "get")
    start = time.monotonic()
    got, end = exchange(server.address, GET_K, until=b"END\r\n", timeout=3)
    assert (got, end) == (VALUE_K, "complete")
    assert time.monotonic() - start >= len(VALUE_K) * 0.01 * 0.5
    assert server.connections()[0].sent == VALUE_K
    client = pymc(server, timeout=0.1)  # each byte comes well within the read timeout
    try:
        assert client.get("k") == b"hello"
    finally:
        client.close()


def test_drip_binds_to_some_commands_and_switches_at_run_time(server: HostileServer) -> None:
    server.behave(behaviours.drip(0.2), "get")
    client = pymc(server, timeout=1.0)
    try:
        start = time.monotonic()
        assert client.set("x", b"1") is True  # set is honest: no drip
        assert time.monotonic() - start < 0.15
        server.behave(None, "get")
        start = time.monotonic()
        assert client.get("x") == b"1"
        assert time.monotonic() - start < 0.15
    finally:
        client.close()
    server.behave(behaviours.silent())
    client = pymc(server, timeout=0.15)
    try:
        with pytest.raises(TimeoutError):
            client.set("x", b"2")
        server.honest_again()
        assert client.get("x") == b"1"  # the silent set was never applied
    finally:
        client.close()


def test_split_reply_at_every_byte_boundary_reads_whole(server: HostileServer) -> None:
    client = pymc(server)
    try:
        for at in range(len(VALUE_K) + 1):
            server.behave(behaviours.split(at, gap=0.002), "get")
            assert client.get("k") == b"hello", at
    finally:
        client.close()
    got, _ = exchange(server.address, GET_K, until=b"END\r\n")
    assert got == VALUE_K


def test_garbage_then_close(server: HostileServer) -> None:
    server.behave(behaviours.garbage(32, seed=7))
    got, end = exchange(server.address, GET_K)
    assert end == "eof" and len(got) == 32 and b"\n" not in got and min(got) >= 0x80
    again, _ = exchange(server.address, GET_K)
    assert again != got  # each reply draws new bytes from the one seeded stream
    server.behave(behaviours.garbage(32, seed=7))
    assert exchange(server.address, GET_K)[0] == got  # same seed, same bytes
    client = pymc(server)
    try:
        with pytest.raises(MemcacheUnexpectedCloseError):
            client.get("k")
    finally:
        client.close()


def test_garbage_then_hold_keeps_the_connection_open(server: HostileServer) -> None:
    server.behave(behaviours.garbage(16, then="hold"))
    got, end = exchange(server.address, GET_K, timeout=0.2)
    assert end == "timeout" and len(got) == 16
    client = pymc(server, timeout=0.15)
    try:
        with pytest.raises(TimeoutError):  # no line end comes, and no close
            client.get("k")
        server.behave(behaviours.garbage(16, line=True, then="serve"))
        with pytest.raises(MemcacheUnknownError):  # one bad line
            client.get("k")
    finally:
        client.close()


@pytest.mark.parametrize("size", [2**31, 2**40])
def test_huge_value_header_then_nothing(server: HostileServer, size: int) -> None:
    server.behave(behaviours.huge_value_header(size))
    got, end = exchange(server.address, GET_K, timeout=0.2)
    assert (got, end) == (b"VALUE k 0 %d\r\n" % size, "timeout")
    client = pymc(server, timeout=0.15)
    try:
        with pytest.raises(TimeoutError):
            client.get("k")
        assert client.set("k", b"v") is True  # a value-only fault: set is honest
    finally:
        client.close()


def test_huge_value_header_then_bytes_at_a_rate(server: HostileServer) -> None:
    server.behave(behaviours.huge_value_header(2**31, rate=200_000, chunk=10_000))
    got, end = exchange(server.address, GET_K, timeout=0.3)
    header = b"VALUE k 0 2147483648\r\n"
    assert end == "timeout" and got.startswith(header)
    body = len(got) - len(header)
    assert 10_000 <= body <= 200_000  # about 60 kB in 0.3 s; never the whole value


def test_huge_value_header_streams_into_a_pymemcache_read_that_never_times_out(
        server: HostileServer) -> None:
    # Each recv() gets bytes within the 0.2 s read timeout, so the call goes
    # on as long as the server sends: only closing the server ends it.
    server.behave(behaviours.huge_value_header(2**31, rate=100_000, chunk=5_000))
    outcome: list[object] = []

    def get() -> None:
        client = pymc(server, timeout=0.15)
        try:
            outcome.append(client.get("k"))
        except Exception as exc:
            outcome.append(exc)
        finally:
            client.close()

    reader = threading.Thread(target=get)
    reader.start()
    reader.join(0.75)
    assert reader.is_alive() and not outcome  # still reading after 3 read timeouts
    server.close()
    reader.join(2.0)
    assert isinstance(outcome[0], (MemcacheUnexpectedCloseError, ConnectionResetError))


@pytest.mark.parametrize(("data", "flags", "error"), [
    (b"\xff\xfe", 16, UnicodeDecodeError),  # not UTF-8 under the text flag
    (b"{not json", 32, ValueError),  # not JSON under memring's JSON flag
    (b"12a", 2, ValueError),  # not digits under the integer flag
])
def test_undecodable_values(server: HostileServer, data: bytes, flags: int,
                            error: type[Exception]) -> None:
    server.behave(behaviours.undecodable(data, flags))
    got, _ = exchange(server.address, b"get k other\r\n", until=b"END\r\n")
    assert got == b"VALUE k %d %d\r\n%s\r\nVALUE other %d %d\r\n%s\r\nEND\r\n" % (
        flags, len(data), data, flags, len(data), data)
    raw = pymc(server)
    decoding = pymc(server, serde=safe_serde)
    try:
        assert raw.get("k") == data
        with pytest.raises(error):
            decoding.get("k")
    finally:
        raw.close()
        decoding.close()


def test_silent_reads_and_never_answers(server: HostileServer) -> None:
    server.behave(behaviours.silent())
    got, end = exchange(server.address, GET_K, timeout=0.2)
    assert (got, end) == (b"", "timeout")
    client = pymc(server, timeout=0.15)
    try:
        with pytest.raises(TimeoutError):
            client.set("k", b"new")
    finally:
        client.close()
    assert [r.command for r in server.requests()] == ["get", "set"]
    assert server.store.lookup(b"k") == (b"hello", 0)  # nothing applied


def test_close_on_accept(server: HostileServer) -> None:
    server.behave(behaviours.close_on_accept())
    assert exchange(server.address, b"") == (b"", "eof")
    client = pymc(server)
    try:
        with pytest.raises(MemcacheUnexpectedCloseError):
            client.get("k")
    finally:
        client.close()
    assert server.wait_until(lambda: {c.how for c in server.connections()} == {"closed"})


@pytest.mark.parametrize("on", ["request", "accept"])
def test_reset(server: HostileServer, on: str) -> None:
    server.behave(behaviours.reset(on))  # type: ignore[arg-type]
    got, end = exchange(server.address, GET_K)
    assert (got, end) == (b"", "reset")
    client = pymc(server)
    try:
        with pytest.raises(ConnectionResetError):
            client.get("k")
    finally:
        client.close()


def test_half_reply_then_close(server: HostileServer) -> None:
    server.behave(behaviours.half_reply_then_close())
    got, end = exchange(server.address, GET_K)
    assert (got, end) == (VALUE_K[:len(VALUE_K) // 2], "eof")
    client = pymc(server)
    try:
        with pytest.raises(MemcacheUnexpectedCloseError):
            client.get("k")
        server.behave(behaviours.half_reply_then_close(0.9, then="hold"))
        with pytest.raises(TimeoutError):
            client.get("k")
    finally:
        client.close()


def test_wrong_key(server: HostileServer) -> None:
    server.behave(behaviours.wrong_key(b"intruder"))
    got, _ = exchange(server.address, GET_K, until=b"END\r\n")
    assert got == b"VALUE intruder 0 5\r\nvalue\r\nEND\r\n"
    client = pymc(server)
    try:
        with pytest.raises(KeyError):  # pymemcache's reader trips over the key it did not ask
            client.get("k")
    finally:
        client.close()


def test_extra_reply_puts_a_client_out_of_step(server: HostileServer) -> None:
    server.behave(behaviours.extra_reply(b"END\r\n", gap=0.05), "get")
    got, end = exchange(server.address, GET_K, timeout=0.2)
    assert (got, end) == (VALUE_K + b"END\r\n", "timeout")
    client = pymc(server)
    try:
        assert client.get("k") == b"hello"
        time.sleep(0.1)
        server.honest_again()
        assert client.get("k") is None  # read the stray END: a wrong miss
    finally:
        client.close()
    server.behave(behaviours.extra_reply(None))
    assert exchange(server.address, GET_K, until=VALUE_K * 2)[0] == VALUE_K * 2


@pytest.mark.parametrize(("line", "error"), [
    (b"SERVER_ERROR out of memory storing object", MemcacheServerError),
    (b"CLIENT_ERROR bad command line format", MemcacheClientError),
    (b"ERROR", MemcacheUnknownCommandError),
])
def test_error_line(server: HostileServer, line: bytes, error: type[Exception]) -> None:
    server.behave(behaviours.error_line(line))
    assert exchange(server.address, GET_K, until=b"\r\n")[0] == line + b"\r\n"
    client = pymc(server)
    try:
        with pytest.raises(error):
            client.set("k", b"v")
    finally:
        client.close()
    assert server.store.lookup(b"k") == (b"hello", 0)


@pytest.mark.parametrize(("length", "flags", "error"), [
    (b"-5", b"0", MemcacheUnknownError),
    (b"x", b"0", ValueError),
    (b"5", b"x", ValueError),
])
def test_negative_or_bad_length(server: HostileServer, length: bytes, flags: bytes,
                                error: type[Exception]) -> None:
    server.behave(behaviours.negative_or_bad_length(length, flags))
    got, _ = exchange(server.address, GET_K, until=b"END\r\n")
    assert got == b"VALUE k %s %s\r\nhello\r\nEND\r\n" % (flags, length)
    client = pymc(server)
    try:
        with pytest.raises(error):
            client.get("k")
    finally:
        client.close()


@pytest.mark.parametrize("behaviour", [behaviours.missing_crlf(), behaviours.bare_lf()],
                         ids=["missing_crlf", "bare_lf"])
def test_a_reply_without_its_line_end_leaves_the_client_waiting(
        server: HostileServer, behaviour: behaviours.Behaviour) -> None:
    server.behave(behaviour)
    got, end = exchange(server.address, GET_K, timeout=0.2)
    assert end == "timeout" and got in (VALUE_K[:-2], VALUE_K.replace(b"\r\n", b"\n"))
    client = pymc(server, timeout=0.15)
    try:
        with pytest.raises(TimeoutError):
            client.get("k")
    finally:
        client.close()


def test_missing_crlf_at_any_index(server: HostileServer) -> None:
    server.behave(behaviours.missing_crlf(0, b"\n"))
    assert exchange(server.address, GET_K, until=b"END\r\n")[0] == (
        b"VALUE k 0 5\nhello\r\nEND\r\n")


def test_no_value_crlf(server: HostileServer) -> None:
    server.behave(behaviours.no_value_crlf())
    got, _ = exchange(server.address, GET_K, until=b"END\r\n")
    assert got == b"VALUE k 0 5\r\nhelloEND\r\n"
    client = pymc(server)
    try:
        with pytest.raises(MemcacheUnknownError):
            client.get("k")
    finally:
        client.close()


def test_endless_values_never_end(server: HostileServer) -> None:
    server.behave(behaviours.endless_values(interval=0.001))
    got, end = exchange(server.address, GET_K, timeout=0.2)
    block = b"VALUE k 0 1\r\nx\r\n"
    assert end == "timeout" and got.count(block) >= 10 and b"END" not in got


def test_close_after_reply_kills_the_next_call(server: HostileServer) -> None:
    server.behave(behaviours.close_after_reply())
    client = pymc(server)
    try:
        assert client.get("k") == b"hello"
        assert server.wait_until(lambda: server.connections()[0].closed)
        with pytest.raises((MemcacheUnexpectedCloseError, ConnectionResetError,
                            BrokenPipeError)):
            client.get("k")
    finally:
        client.close()


def test_stop_reading_blocks_a_large_write() -> None:
    big = 16 * 1024 * 1024  # more than the socket buffers on both ends hold
    with HostileServer(behaviours.stop_reading(), rcvbuf=4096) as server:
        with socket.create_connection(server.address, timeout=0.2) as sock, pytest.raises(
                TimeoutError):
            sock.sendall(b"x" * big)
        client = pymc(server, timeout=0.15)
        try:
            with pytest.raises(TimeoutError):
                client.set("k", b"v" * big)
        finally:
            client.close()
        assert [c.bytes_received for c in server.connections()] == [0, 0]


def test_out_of_step_answers_the_previous_request(server: HostileServer) -> None:
    server.behave(behaviours.out_of_step())
    with socket.create_connection(server.address, timeout=1) as sock:
        sock.sendall(b"version\r\n")
        assert read_all(sock, timeout=0.2) == (b"", "timeout")
        sock.sendall(GET_K)
        assert read_all(sock, timeout=1, until=b"\r\n") == (b"VERSION 1.6.21\r\n", "complete")
        sock.sendall(b"mn\r\n")
        assert read_all(sock, timeout=1, until=b"END\r\n") == (VALUE_K, "complete")


def test_delayed_reply_lands_after_the_client_gave_up(server: HostileServer) -> None:
    server.behave(behaviours.delayed(0.3))
    with socket.create_connection(server.address, timeout=1) as sock:
        sock.sendall(GET_K)
        assert read_all(sock, timeout=0.1) == (b"", "timeout")
        assert read_all(sock, timeout=1, until=b"END\r\n") == (VALUE_K, "complete")


def test_after_n_requests(server: HostileServer) -> None:
    server.behave(behaviours.after(2, behaviours.error_line(b"ERROR")))
    with socket.create_connection(server.address, timeout=1) as sock:
        replies = []
        for _ in range(3):
            sock.sendall(b"version\r\n")
            replies.append(read_all(sock, timeout=1, until=b"\r\n")[0])
    assert replies == [b"VERSION 1.6.21\r\n"] * 2 + [b"ERROR\r\n"]


def test_a_reply_function_of_the_test_own(server: HostileServer) -> None:
    def reply(req: Request) -> behaviours.Reply:
        if req.key == b"k":
            return [Send(b"VALUE k 0 2\r\n", chunk=3), Sleep(0.01), b"ok\r\nEND\r\n"]
        return req.honest()

    server.behave(reply, "get")
    client = pymc(server)
    try:
        assert client.get("k") == b"ok"
        assert client.get("other") is None
    finally:
        client.close()


def test_canned_reply(server: HostileServer) -> None:
    server.behave(behaviours.canned(b"STORED\r\n"), "get")
    assert exchange(server.address, GET_K, until=b"\r\n")[0] == b"STORED\r\n"


def test_meta_get_under_value_faults(server: HostileServer) -> None:
    server.behave(behaviours.undecodable(b"\xff", 16))
    assert exchange(server.address, b"mg k v\r\n", until=b"\xff\r\n")[0] == (
        b"VA 1 f16 kk\r\n\xff\r\n")
    server.behave(behaviours.huge_value_header(2**31))
    assert exchange(server.address, b"mg k v\r\n", timeout=0.2)[0] == b"VA 2147483648 f0 kk\r\n"


# -- the server: accepting, closing ------------------------------------------------

def test_hold_accepts_makes_connects_time_out(server: HostileServer) -> None:
    server.hold_accepts()
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        socket.create_connection(server.address, timeout=0.2).close()
    assert time.monotonic() - start < 1.0
    client = pymc(server, connect_timeout=0.2)
    try:
        with pytest.raises(TimeoutError):
            client.get("k")
        server.release_accepts()
        assert client.get("k") == b"hello"
    finally:
        client.close()
    assert server.accepted == 1  # the server's own filler connections are not recorded


def test_close_is_prompt_even_mid_drip_and_mid_stream() -> None:
    server = HostileServer(behaviours.drip(5.0))
    sock = socket.create_connection(server.address, timeout=1)
    other = socket.create_connection(server.address, timeout=1)
    try:
        sock.sendall(GET_K)
        server.behave(behaviours.endless_values(interval=0))
        other.sendall(GET_K)
        server.wait_requests(2)
        start = time.monotonic()
        server.close()
        assert time.monotonic() - start < 1.0
        server.close()  # idempotent
    finally:
        sock.close()
        other.close()


def test_a_behaviour_that_raises_fails_close() -> None:
    def broken(req: Request) -> behaviours.Reply:
        raise ZeroDivisionError("a bug in the test's behaviour")

    server = HostileServer(broken)
    try:
        got, end = exchange(server.address, GET_K)
        assert end == "eof"
    finally:
        with pytest.raises(HostileServerError) as info:
            server.close()
    assert isinstance(info.value.__cause__, ZeroDivisionError)


def test_wait_requests_is_bounded(server: HostileServer) -> None:
    start = time.monotonic()
    with pytest.raises(TimeoutError):
        server.wait_requests(1, timeout=0.1)
    assert time.monotonic() - start < 1.0


# -- the proxy -------------------------------------------------------------------------

@pytest.mark.parametrize("hash_", ["murmur3", "ketama"])
@pytest.mark.parametrize("real_port", [11211, 40002])
def test_proxied_node_routes_keys_as_the_real_node(hash_: str, real_port: int) -> None:
    real = [memring.Node("127.0.0.1", real_port, 2), memring.Node("127.0.0.1", 40003),
            memring.Node("127.0.0.1", 40004)]
    proxy_address = ("127.0.0.1", 40009)
    faulty = [proxied_node(real[0], proxy_address, hash=hash_), *real[1:]]
    assert faulty[0].address == proxy_address and faulty[0].weight == 2
    ring = memring.HashRing(real, hash=hash_)
    proxied = memring.HashRing(faulty, hash=hash_)
    keys = [f"session:{i}" for i in range(3000)]
    owners = [real.index(ring.node_for(k)) for k in keys]
    assert owners == [faulty.index(proxied.node_for(k)) for k in keys]
    assert set(owners) == {0, 1, 2}
    assert [[real.index(n) for n in ring.nodes_for(k, 2)] for k in keys[:300]] == [
        [faulty.index(n) for n in proxied.nodes_for(k, 2)] for k in keys[:300]]


@pytest.fixture(scope="module")
def memcached() -> Iterator[LocalCluster]:
    """Two real memcached processes for the proxy tests, stopped by PID."""
    with LocalCluster(2) as cluster:
        yield cluster


@pytest.fixture
def proxy(memcached: LocalCluster) -> Iterator[FaultProxy]:
    """A proxy to the first memcached."""
    with FaultProxy(memcached[0].address) as p:
        yield p


@pytest.fixture
def direct(memcached: LocalCluster) -> Iterator[PymemcacheClient]:
    """A plain client of the first memcached, not through the proxy."""
    client = PymemcacheClient(memcached[0].address, connect_timeout=0.5, timeout=0.5,
                              default_noreply=False)
    yield client
    client.close()


def through(proxy: FaultProxy, timeout: float = 0.5) -> PymemcacheClient:
    return PymemcacheClient(proxy.address, connect_timeout=timeout, timeout=timeout,
                            default_noreply=False)


def unique(name: str) -> str:
    return f"{name}:{time.monotonic_ns()}"


@pytest.mark.integration
def test_proxy_forwards_both_ways(proxy: FaultProxy, direct: PymemcacheClient) -> None:
    key = unique("fwd")
    client = through(proxy)
    try:
        assert client.set(key, b"via proxy") is True
        assert direct.get(key) == b"via proxy"
        direct.set(key, b"direct")
        assert client.get(key) == b"direct"
    finally:
        client.close()
    counters = proxy.counters()
    assert counters.accepted == 1 and counters.client_to_server > 0
    assert counters.server_to_client > 0 and counters.dropped == 0


@pytest.mark.integration
def test_a_memring_client_through_the_proxy_places_keys_as_a_direct_one(
        memcached: LocalCluster, proxy: FaultProxy) -> None:
    faulty = memring.Client([proxy.node(), memcached[1].node])
    plain = memring.Client(memcached.nodes)
    keys = [unique(f"ring{i}") for i in range(40)]
    try:
        for key in keys:
            faulty.set(key, key)
        assert plain.get_many(keys) == {k: k for k in keys}
    finally:
        faulty.close()
        plain.close()
    ring = memring.HashRing(memcached.nodes)
    via_proxy = [k for k in keys if ring.node_for(k) == memcached[0].node]
    assert via_proxy  # some keys live on the proxied node ...
    first = PymemcacheClient(memcached[0].address, timeout=0.5)  # ... and are there
    try:
        assert all(first.get(k) is not None for k in via_proxy)
    finally:
        first.close()
    assert proxy.counters().client_to_server > 0


@pytest.mark.integration
def test_pause_holds_requests_and_resume_delivers_them_in_order(
        proxy: FaultProxy, direct: PymemcacheClient) -> None:
    key, other = unique("paused"), unique("paused-other")
    with socket.create_connection(proxy.address, timeout=1) as sock:
        proxy.pause()
        sock.sendall(b"set %s 0 0 1 noreply\r\n1\r\nset %s 0 0 1 noreply\r\n2\r\nget %s\r\n" % (
            key.encode(), key.encode(), key.encode()))
        client = through(proxy, timeout=0.2)
        try:
            with pytest.raises(TimeoutError):
                client.set(other, b"late")  # times out, but is only held
        finally:
            client.close()
        assert read_all(sock, timeout=0.1) == (b"", "timeout")
        assert direct.get(key) is None and direct.get(other) is None  # the server has nothing
        proxy.resume()
        got = read_all(sock, timeout=2, until=b"END\r\n")
    assert got == (b"VALUE %s 0 1\r\n2\r\nEND\r\n" % key.encode(), "complete")
    assert direct.get(key) == b"2"
    assert direct.get(other) == b"late"  # the write that timed out was applied on resume


@pytest.mark.integration
def test_blackhole_times_out_a_client_and_heal_resets_what_it_broke(
        proxy: FaultProxy, direct: PymemcacheClient) -> None:
    key = unique("hole")
    direct.set(key, b"v")
    sock = socket.create_connection(proxy.address, timeout=1)
    try:
        proxy.blackhole()
        client = through(proxy, timeout=0.2)
        try:
            start = time.monotonic()
            with pytest.raises(TimeoutError):
                client.get(key)
            assert time.monotonic() - start < 1.5
        finally:
            client.close()
        sock.sendall(b"get %s\r\n" % key.encode())
        assert read_all(sock, timeout=0.2) == (b"", "timeout")
        assert direct.get(key) == b"v"  # the other clients see a healthy server
        assert proxy.counters().dropped > 0
        proxy.heal()
        assert read_all(sock, timeout=1) == (b"", "reset")  # its request was lost
    finally:
        sock.close()
    client = through(proxy)
    try:
        assert client.get(key) == b"v"
    finally:
        client.close()


@pytest.mark.integration
def test_refuse_then_accept_again_on_the_same_port(proxy: FaultProxy) -> None:
    port = proxy.port
    sock = socket.create_connection(proxy.address, timeout=1)
    try:
        sock.sendall(b"version\r\n")
        assert read_all(sock, timeout=1, until=b"\r\n")[1] == "complete"
        proxy.refuse()
        assert read_all(sock, timeout=1)[1] == "reset"
    finally:
        sock.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(proxy.address, timeout=1).close()
    client = through(proxy)
    try:
        with pytest.raises(ConnectionRefusedError):
            client.version()
        proxy.accept_again()
        assert proxy.port == port
        assert client.version().startswith(b"1.")
    finally:
        client.close()


@pytest.mark.integration
def test_cut_resets_every_current_connection(proxy: FaultProxy) -> None:
    socks = [socket.create_connection(proxy.address, timeout=1) for _ in range(2)]
    try:
        for sock in socks:
            sock.sendall(b"version\r\n")
            assert read_all(sock, timeout=1, until=b"\r\n")[1] == "complete"
        assert proxy.cut() == 2
        assert [read_all(sock, timeout=1)[1] for sock in socks] == ["reset", "reset"]
    finally:
        for sock in socks:
            sock.close()
    client = through(proxy)
    try:
        assert client.version().startswith(b"1.")
    finally:
        client.close()
    assert proxy.counters().accepted == 3


@pytest.mark.integration
def test_drip_and_delay_slow_one_client(proxy: FaultProxy, direct: PymemcacheClient) -> None:
    key = unique("slow")
    direct.set(key, b"v")
    reply = len(b"VALUE %s 0 1\r\nv\r\nEND\r\n" % key.encode())
    client = through(proxy, timeout=1.0)
    try:
        proxy.drip(0.005)
        start = time.monotonic()
        assert client.get(key) == b"v"
        assert time.monotonic() - start >= reply * 0.005 * 0.5
        proxy.drip(None)
        proxy.delay(0.1)
        start = time.monotonic()
        assert client.get(key) == b"v"
        assert time.monotonic() - start >= 0.15  # 0.1 s each way
        proxy.clear()
        start = time.monotonic()
        assert client.get(key) == b"v"
        assert time.monotonic() - start < 0.1
    finally:
        client.close()


@pytest.mark.integration
def test_proxy_close_is_idempotent_and_final(memcached: LocalCluster) -> None:
    proxy = FaultProxy(memcached[0].address)
    sock = socket.create_connection(proxy.address, timeout=1)
    try:
        proxy.close()
        proxy.close()
        assert read_all(sock, timeout=1)[1] in ("eof", "reset")
    finally:
        sock.close()
    with pytest.raises(RuntimeError):
        proxy.pause()
