"""Talking to one node: a pool of pymemcache connections, pipelined requests, the error seam.

Values cross this layer as raw ``(bytes, flags)`` items; serialization and
memring's markers live above it. :class:`NodeTransport` is the seam the
tests replace with fake nodes. ``send()`` starts a call and returns a
:class:`Reply` to read later, so one thread can have several nodes at work.

This module is the one place where pymemcache and socket errors become
memring errors (:func:`translate_errors`).
"""

from __future__ import annotations

import select
import socket
import ssl
import struct
import types
from collections.abc import Callable, Container, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from pymemcache.client.base import Client, _readline
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
    MemcacheUnknownError,
)
from pymemcache.pool import ObjectPool

from memring.client.policies import Timeouts
from memring.errors import MemringError, NodeTimeout, NodeUnavailable, ServerError
from memring.hashring.node import Node

__all__ = ["Item", "NodeTransport", "PymemcacheTransport", "RawSerde", "Ready", "Reply",
           "raw_serde", "translate_errors"]

#: A raw stored value: the bytes and the 32-bit flags.
Item = tuple[bytes, int]


class NodeTransport(Protocol):
    """Raw operations on one node. Every method raises only memring errors."""

    node: Node

    def get(self, key: bytes) -> Item | None: ...
    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, Item]: ...
    def gets_many(self, keys: Sequence[bytes]) -> dict[bytes, tuple[Item, bytes]]: ...
    def set(self, key: bytes, item: Item, expire: int) -> bool: ...
    def set_many(self, items: Mapping[bytes, Item], expire: int) -> list[bytes]: ...
    def add(self, key: bytes, item: Item, expire: int) -> bool: ...
    def replace(self, key: bytes, item: Item, expire: int) -> bool: ...
    def append(self, key: bytes, data: bytes) -> bool: ...
    def prepend(self, key: bytes, data: bytes) -> bool: ...
    def cas(self, key: bytes, item: Item, cas: bytes, expire: int) -> bool | None: ...
    def delete(self, key: bytes) -> bool: ...
    def delete_many(self, keys: Sequence[bytes]) -> None: ...
    def incr(self, key: bytes, delta: int) -> int | None: ...
    def decr(self, key: bytes, delta: int) -> int | None: ...
    def touch(self, key: bytes, expire: int) -> bool: ...
    def stats(self, *args: str) -> dict[bytes, Any]: ...
    def version(self) -> bytes: ...
    def flush_all(self, delay: int) -> bool: ...
    def dump_keys(self) -> list[bytes]: ...
    def close(self) -> None: ...

    def send(self, method: str, *args: Any) -> Reply:
        """Start ``method(*args)``; its ``.result()`` returns or raises what the call would.

        Several nodes can work at once for one thread: the client sends to
        each, then reads each reply. A transport that cannot pipeline may
        run the call here and return a :class:`Ready`.
        """
        ...


class Reply(Protocol):
    def result(self, wait: float | None = None) -> Any:
        """The call's result; ``wait``, if given, caps the seconds to wait for it."""
        ...


#: What :func:`translate_errors` translates; anything else passes through.
_TRANSLATED = (MemcacheError, OSError)


def _translate(exc: BaseException, node: Node, key: object) -> NodeUnavailable | ServerError:
    """memring's error for one of :data:`_TRANSLATED` (raise it ``from exc``)."""
    if isinstance(exc, (TimeoutError, BlockingIOError)):  # BlockingIOError: SO_RCVTIMEO
        return NodeTimeout("timed out", node=node, key=key)
    if isinstance(exc, MemcacheUnexpectedCloseError):
        return NodeUnavailable("connection closed by the server", node=node, key=key)
    if isinstance(exc, (MemcacheServerError, MemcacheClientError)):
        return ServerError(f"server error: {exc}", node=node, key=key)
    if isinstance(exc, MemcacheError):
        return ServerError(f"unexpected reply: {exc}", node=node, key=key)
    # refused, reset, unreachable, TLS errors
    return NodeUnavailable(f"connection failed: {exc}", node=node, key=key)


@contextmanager
def translate_errors(node: Node, key: object = None) -> Iterator[None]:
    """Map pymemcache/socket errors to memring's tree, keeping the cause."""
    try:
        yield
    except _TRANSLATED as exc:
        raise _translate(exc, node, key) from exc


#: Errors of a pooled socket whose server went away (closed by the peer).
_STALE = (MemcacheUnexpectedCloseError, BrokenPipeError, ConnectionResetError)


class RawSerde:
    """A pymemcache serde that hands ``(bytes, flags)`` items through untouched.

    The transport stores items this way; a plain pymemcache client given it
    shows what a node really holds (tests and tools use it so).
    """

    @staticmethod
    def serialize(key: bytes, value: Item) -> Item:
        return value

    @staticmethod
    def deserialize(key: bytes, value: bytes, flags: int) -> Item:
        return (value, flags)


raw_serde = RawSerde()


class _KernelTimeoutSockets(types.ModuleType):
    """The ``socket`` module, but new sockets carry kernel send/receive timeouts.

    Given to pymemcache as its ``socket_module`` with ``timeout=None``: the
    sockets stay in blocking mode after connecting, and ``SO_RCVTIMEO`` /
    ``SO_SNDTIMEO`` bound every read and write. Python's own socket timeouts
    would do the same with a ``poll()`` before each ``recv``/``send``, about
    6% of a loopback round trip. A read that times out raises
    ``BlockingIOError`` (``EAGAIN``), which :func:`_translate` maps to
    :class:`~memring.errors.NodeTimeout`. Kernel timers fire up to two
    scheduler ticks late (10-20 ms on a 100 Hz kernel).
    """

    def __init__(self, seconds: float) -> None:
        super().__init__("memring_sockets")
        # At least 1 us: a zero timeval would mean "no timeout at all".
        whole, micros = divmod(max(1, round(seconds * 1e6)), 1_000_000)
        self._timeval = struct.pack("ll", whole, micros)

    def __getattr__(self, name: str) -> Any:
        return getattr(socket, name)

    def socket(self, *args: Any) -> socket.socket:
        sock = socket.socket(*args)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, self._timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, self._timeval)
        return sock


class Ready:
    """A reply already in hand: a value, or the memring error a call raised."""

    __slots__ = ("_value", "_error")

    def __init__(self, value: Any = None, error: MemringError | None = None) -> None:
        self._value = value
        self._error = error

    @classmethod
    def of(cls, fn: Callable[..., Any], *args: Any) -> Ready:
        """Call ``fn(*args)`` now and keep its result or its memring error."""
        try:
            return cls(fn(*args))
        except MemringError as exc:
            return cls(error=exc)

    def result(self, wait: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class _Pending:
    """A request written to a pooled connection whose reply is not read yet."""

    __slots__ = ("_transport", "_conn", "_read", "_method", "_args", "_error")

    def __init__(self, transport: PymemcacheTransport, conn: Client | None, read: Reader,
                 method: str, args: tuple[Any, ...], error: Exception | None = None) -> None:
        self._transport = transport
        self._conn = conn
        self._read = read
        self._method = method
        self._args = args
        self._error = error

    def result(self, wait: float | None = None, *, retry: bool = True) -> Any:
        """Read the reply; ``wait`` caps the seconds to wait for its first byte.

        ``retry``: after a stale pooled connection, try again on fresh ones.
        """
        t = self._transport
        conn, exc = self._conn, self._error
        if conn is not None:
            try:
                sock = conn.sock
                assert sock is not None
                if wait is not None and not select.select([sock], [], [], max(wait, 0))[0]:
                    raise TimeoutError("no reply")
                value = self._read(conn, sock.recv(READ_SIZE), self._args)
            except Exception as error:
                exc = error
            else:
                t._pool.release(conn)
                return value
            t._pool.destroy(conn)
        assert exc is not None
        return t._recover(exc, self._method, self._args, retry)


def _key_of(args: tuple[Any, ...]) -> object:
    """The key (or keys) of a call, for the error's context."""
    first = args[0]
    if isinstance(first, Mapping):
        first = list(first)
    if isinstance(first, (list, tuple)) and len(first) == 1:
        return first[0]
    return first


def _connect(conn: Client) -> socket.socket:
    """Connect a new pooled connection; returns its socket."""
    conn._connect()
    sock: socket.socket | None = conn.sock
    assert sock is not None
    return sock


def _write(conn: Client, request: bytes) -> socket.socket:
    """Send ``request`` on ``conn`` (connecting it first if it is new); returns its socket."""
    sock: socket.socket = conn.sock or _connect(conn)
    sock.sendall(request)
    return sock


class PymemcacheTransport:
    """One node over a thread-safe pool of pymemcache connections.

    A connection that errored or timed out is closed and dropped from the
    pool, never reused. A pooled connection that the server closed (it
    restarted) is retried once on a fresh connection; a timeout is never
    retried here (the caller already waited once).

    :meth:`send` writes a request and returns a reply to read later, so a
    caller can have several nodes working at once from one thread (the
    cluster's multi-key calls and the backup client's two writes).
    pymemcache always reads a reply right after writing its request, so the
    commands that can be pipelined (:data:`_PIPELINED`) are written and
    read here, on pymemcache's connections and with its error classes; a
    direct call of one of them writes and reads at once (:meth:`_now`),
    with the same request bytes and reply readers. Every other command is
    pymemcache's own.
    """

    def __init__(
        self,
        node: Node,
        *,
        timeouts: Timeouts,
        max_pool_size: int | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.node = node
        self._timeouts = timeouts
        self._tls_context = tls_context
        #: Called (with the node) after a call had to reconnect because the
        #: server had closed its pooled connections: it may have restarted.
        self.on_reconnect: Callable[[Node], None] | None = None
        if tls_context is None:
            sockets: types.ModuleType = _KernelTimeoutSockets(timeouts.read)
            read_timeout: float | None = None
        else:  # the TLS layer reports a kernel timeout as an SSL error: use Python's
            sockets, read_timeout = socket, timeouts.read

        def connection() -> Client:
            return Client(node.address, serde=raw_serde, connect_timeout=timeouts.connect,
                          timeout=read_timeout, no_delay=True, default_noreply=False,
                          tls_context=tls_context, socket_module=sockets)

        self._pool: ObjectPool[Client] = ObjectPool(
            connection, after_remove=Client.close, max_size=max_pool_size)

    def _once(self, key: object, method: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
        """One pymemcache call on a pooled connection (one that raised is
        closed and dropped), with errors translated as :func:`translate_errors`
        does, minus its per-call generator."""
        pool = self._pool
        client = pool.get()
        try:
            result = getattr(client, method)(*args, **kwargs)
        except Exception as exc:
            pool.destroy(client)
            if isinstance(exc, _TRANSLATED):
                raise _translate(exc, self.node, key) from exc
            raise
        pool.release(client)
        return result

    def _call(self, key: object, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._once(key, method, args, kwargs)
        except NodeUnavailable as exc:
            if not isinstance(exc.__cause__, _STALE):
                raise
        return self._after_stale(key, lambda: self._once(key, method, args, kwargs))

    def _after_stale(self, key: object, attempt: Callable[[], Any]) -> Any:
        """Retry ``attempt`` after the server closed a pooled connection.

        It restarted (or dropped its connections): the other idle pooled
        sockets to the old process are dead too. Retry past them, each
        dropped as it fails (at once: the peer is gone). Never close the
        pool here: that would close sockets other threads are using, and
        their calls would fail with AttributeError or EBADF instead of a
        memring error.
        """
        for _ in range(len(self._pool.free)):
            try:
                result = attempt()
                break
            except NodeUnavailable as again:
                if not isinstance(again.__cause__, _STALE):
                    raise
        else:
            result = attempt()
        if self.on_reconnect is not None:
            self.on_reconnect(self.node)
        return result

    # -- pipelining ------------------------------------------------------
    def send(self, method: str, *args: Any) -> Ready | _Pending:
        """Write the request of ``method(*args)`` now; read its reply with ``.result()``.

        ``.result()`` returns what ``method`` returns and raises what it
        raises. Commands outside :data:`_PIPELINED` run at once.
        """
        if method not in _PIPELINED:
            return Ready.of(getattr(self, method), *args)
        return self._send(method, args)

    def _send(self, method: str, args: tuple[Any, ...]) -> _Pending:
        build, read = _PIPELINED[method]
        request = build(*args)
        pool = self._pool
        try:
            conn = pool.get()  # RuntimeError past max_pool_size: raised by .result()
        except Exception as exc:
            return _Pending(self, None, read, method, args, exc)
        try:
            _write(conn, request)
        except Exception as exc:
            pool.destroy(conn)
            return _Pending(self, None, read, method, args, exc)
        return _Pending(self, conn, read, method, args)

    def _now(self, method: str, args: tuple[Any, ...], retry: bool = True) -> Any:
        """``_send(method, args).result()`` without the pending reply object.

        The single-key calls other than get and set (which unroll it) take
        this path: without that object and its calls, a call spends 15-20%
        less CPU time in this layer.
        """
        build, read = _PIPELINED[method]
        request = build(*args)
        pool = self._pool
        conn = pool.get()
        try:
            result = read(conn, _write(conn, request).recv(READ_SIZE), args)
        except Exception as exc:
            pool.destroy(conn)
            return self._recover(exc, method, args, retry)
        pool.release(conn)
        return result

    def _recover(self, exc: Exception, method: str, args: tuple[Any, ...], retry: bool) -> Any:
        """After ``exc`` broke a call of a :data:`_PIPELINED` command (its
        connection already dropped), sent with :meth:`send` or made directly.

        A stale pooled connection is retried on fresh ones (``retry``);
        anything else raises, as memring's error if :func:`translate_errors`
        would translate it.
        """
        key = _key_of(args)
        if retry and isinstance(exc, _STALE):
            return self._after_stale(key, lambda: self._now(method, args, retry=False))
        if isinstance(exc, _TRANSLATED):
            raise _translate(exc, self.node, key) from exc
        raise exc

    # get and set are _now() unrolled, with their request made in place:
    # they are a session store's calls, and this saves 10-14% of their
    # CPU time in this layer.
    def get(self, key: bytes) -> Item | None:
        pool = self._pool
        conn = pool.get()
        try:
            sock = conn.sock or _connect(conn)
            sock.sendall(b"get %s\r\n" % key)
            item = _read_item(conn, sock.recv(READ_SIZE), (key,))
        except Exception as exc:
            pool.destroy(conn)
            result: Item | None = self._recover(exc, "get", (key,), True)
            return result
        pool.release(conn)
        return item

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, Item]:
        result: dict[bytes, Item] = self._now("get_many", (keys,))
        return result

    def gets_many(self, keys: Sequence[bytes]) -> dict[bytes, tuple[Item, bytes]]:
        result: dict[bytes, tuple[Item, bytes]] = self._now("gets_many", (keys,))
        return result

    def set(self, key: bytes, item: Item, expire: int) -> bool:
        data, flags = item
        pool = self._pool
        conn = pool.get()
        try:
            sock = conn.sock or _connect(conn)
            sock.sendall(b"set %s %d %d %d\r\n%s\r\n" % (key, flags, expire, len(data), data))
            buf = sock.recv(READ_SIZE)
            ok = buf == b"STORED\r\n" or _read_stored(conn, buf, (key, item, expire))
        except Exception as exc:
            pool.destroy(conn)
            return bool(self._recover(exc, "set", (key, item, expire), True))
        pool.release(conn)
        return bool(ok)

    def set_many(self, items: Mapping[bytes, Item], expire: int) -> list[bytes]:
        return list(self._now("set_many", (items, expire)))

    def add(self, key: bytes, item: Item, expire: int) -> bool:
        return bool(self._now("add", (key, item, expire)))

    def replace(self, key: bytes, item: Item, expire: int) -> bool:
        return bool(self._now("replace", (key, item, expire)))

    def append(self, key: bytes, data: bytes) -> bool:
        return bool(self._call(key, "append", key, (data, 0), noreply=False))

    def prepend(self, key: bytes, data: bytes) -> bool:
        return bool(self._call(key, "prepend", key, (data, 0), noreply=False))

    def cas(self, key: bytes, item: Item, cas: bytes, expire: int) -> bool | None:
        result: bool | None = self._now("cas", (key, item, cas, expire))
        return result

    def delete(self, key: bytes) -> bool:
        return bool(self._now("delete", (key,)))

    def delete_many(self, keys: Sequence[bytes]) -> None:
        self._now("delete_many", (keys,))

    def incr(self, key: bytes, delta: int) -> int | None:
        result: int | None = self._call(key, "incr", key, delta, noreply=False)
        return result

    def decr(self, key: bytes, delta: int) -> int | None:
        result: int | None = self._call(key, "decr", key, delta, noreply=False)
        return result

    def touch(self, key: bytes, expire: int) -> bool:
        return bool(self._now("touch", (key, expire)))

    def stats(self, *args: str) -> dict[bytes, Any]:
        return dict(self._call(None, "stats", *args))

    def version(self) -> bytes:
        return bytes(self._call(None, "version"))

    def flush_all(self, delay: int) -> bool:
        return bool(self._call(None, "flush_all", delay, noreply=False))

    def dump_keys(self) -> list[bytes]:
        """Every key the node holds (``lru_crawler metadump all``), for rebuilding a copy.

        Read on a connection of its own: the reply can be megabytes, and
        pymemcache's ``raw_command`` keeps only the last chunk of a long
        reply, so the lines are read with pymemcache's line reader instead.
        """
        conn = Client(self.node.address, connect_timeout=self._timeouts.connect,
                      timeout=self._timeouts.read, tls_context=self._tls_context)
        keys: list[bytes] = []
        with translate_errors(self.node):
            try:
                conn._connect()
                assert conn.sock is not None
                conn.sock.sendall(b"lru_crawler metadump all\r\n")
                _, reply = _readline(conn.sock, b"")  # entries end in "\n", the reply in "\r\n"
            finally:
                conn.close()
        for line in reply.split(b"\n"):
            if line.startswith(b"key="):
                keys.append(unquote_to_bytes(line[4:].split(b" ", 1)[0]))
            elif line and line != b"END":
                raise ServerError(f"metadump refused: {line[:80].decode(errors='replace')}",
                                  node=self.node)
        return keys

    def close(self) -> None:
        self._pool.clear()


# -- the pipelined commands: request bytes, and a reader of the reply ----------
#
# Keys reach the transport already checked by :func:`memring.client.keys.encode_key`
# (no whitespace or control characters, at most 250 bytes).

#: Reads a reply: ``(connection, its first chunk, the call's arguments)``.
#: The first chunk is the result of one ``recv``; a reader receives more
#: from the connection's socket while the reply is not complete.
Reader = Callable[[Client, bytes, tuple[Any, ...]], Any]

#: Bytes asked of each ``recv``: a reply of a few hundred small values is
#: read whole at once (a larger buffer costs nothing measurable).
READ_SIZE = 65536


def _recv_more(sock: socket.socket, buf: bytes, need: int) -> bytes:
    """``buf`` extended from ``sock`` to at least ``need`` bytes (one join, however many reads)."""
    chunks = [buf]
    have = len(buf)
    while have < need:
        chunk = sock.recv(max(READ_SIZE, need - have))  # Python retries EINTR itself
        if not chunk:
            raise MemcacheUnexpectedCloseError()
        chunks.append(chunk)
        have += len(chunk)
    return b"".join(chunks)


def _values_reader(name: bytes) -> Reader:
    """Reads a ``get``/``gets`` reply (``VALUE`` blocks, then ``END``) to many keys.

    pymemcache's reader takes a reply a line at a time; this one parses a
    buffer that holds the whole reply, two to four times as fast for a batch
    of small values (:func:`_split_values`, else :func:`_scan_values`). A key
    that was not asked for, or bytes after ``END``, mean the connection is
    out of step: it raises, and the connection is dropped.
    """
    fields = 5 if name == b"gets" else 4

    def read(conn: Client, buf: bytes, args: tuple[Any, ...]) -> dict[bytes, Any]:
        return _read_values(conn, buf, frozenset(args[0]), fields, name)

    return read


def _read_values(conn: Client, buf: bytes, wanted: Container[bytes], fields: int,
                 name: bytes) -> dict[bytes, Any]:
    if not buf:
        raise MemcacheUnexpectedCloseError()
    if buf.endswith(b"END\r\n"):
        out = _split_values(buf, wanted, fields)
        if out is not None:
            return out
    return _scan_values(conn, buf, wanted, fields, name)


def _read_item(conn: Client, buf: bytes, args: tuple[Any, ...]) -> Item | None:
    """Reads the reply to a ``get`` of one key: its item, or None.

    The common whole reply, ``VALUE <key> <flags> <length>`` + value +
    ``END``, is taken apart here, checked as :func:`_split_values` checks it;
    anything else is left to :func:`_read_values`.
    """
    key = args[0]
    if buf == b"END\r\n":
        return None
    eol = buf.find(b"\r\n")
    header = buf[:eol].split(b" ")
    if (len(header) == 4 and header[0] == b"VALUE" and header[1] == key
            and header[3].isdigit() and header[2].isdigit()
            and len(buf) == eol + 9 + int(header[3]) and buf.endswith(b"\r\nEND\r\n")):
        return (buf[eol + 2:-7], int(header[2]))
    item: Item | None = _read_values(conn, buf, (key,), 4, b"get").get(key)
    return item


def _split_values(buf: bytes, wanted: Container[bytes], fields: int) -> dict[bytes, Any] | None:
    """The values of a complete reply split at every CRLF; None if it does not parse so.

    Exact, not a guess: each value must be exactly as long as its header
    says, and a value that holds a CRLF itself (or a reply that is cut
    short, or has an error line) fails that check and returns None.
    """
    parts = buf.split(b"\r\n")
    last = len(parts) - 2  # parts[-1] is the empty tail after the final CRLF
    out: dict[bytes, Any] = {}
    i = 0
    try:
        while i < last:
            header = parts[i].split()
            data = parts[i + 1]
            if (len(header) != fields or header[0] != b"VALUE" or len(data) != int(header[3])
                    or header[1] not in wanted):
                return None
            flags = header[2]
            item = (data, 0 if flags == b"0" else int(flags))
            out[header[1]] = item if fields == 4 else (item, header[4])
            i += 2
    except ValueError:
        return None
    return out if i == last and parts[last] == b"END" else None


def _scan_values(conn: Client, buf: bytes, wanted: Container[bytes], fields: int,
                 name: bytes) -> dict[bytes, Any]:
    """The values of a reply that starts with ``buf``, reading the rest as needed."""
    sock = conn.sock
    assert sock is not None
    pos = 0
    out: dict[bytes, Any] = {}
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            buf = _recv_more(sock, buf[pos:], len(buf) - pos + 1)
            pos = 0
            continue
        if buf.startswith(b"VALUE ", pos):
            header = buf[pos:eol].split()
            if len(header) != fields or not header[3].isdigit() or not header[2].isdigit():
                raise MemcacheUnknownError(buf[pos:eol][:64])
            start = eol + 2
            end = start + int(header[3])
            if len(buf) < end + 2:
                buf = _recv_more(sock, buf[pos:], end + 2 - pos)
                pos = 0
                continue
            key = header[1]
            if buf[end:end + 2] != b"\r\n" or key not in wanted:
                raise MemcacheUnknownError(buf[pos:eol][:64])
            item = (buf[start:end], int(header[2]))
            out[key] = item if fields == 4 else (item, header[4])
            pos = end + 2
        elif eol == pos + 3 and buf.startswith(b"END", pos):
            if eol + 2 != len(buf):
                raise MemcacheUnknownError(b"data after END")
            return out
        else:
            line = buf[pos:eol]
            conn._raise_errors(line, name)
            raise MemcacheUnknownError(line[:64])


def _read_lines(conn: Client, buf: bytes, count: int) -> list[bytes]:
    """The next ``count`` reply lines, without their CRLFs: the whole reply, or raise.

    ``buf`` is what was read so far; reads until ``count`` line ends have
    arrived. More than that means the connection is out of step.
    """
    seen = buf.count(b"\r\n")
    if seen < count:
        sock = conn.sock
        assert sock is not None
        chunks = [buf]
        while seen < count:
            if not chunks[-1]:
                raise MemcacheUnexpectedCloseError()
            more = sock.recv(READ_SIZE)
            seen += more.count(b"\r\n") + (chunks[-1][-1:] == b"\r" and more[:1] == b"\n")
            chunks.append(more)
        buf = b"".join(chunks)
    lines: list[bytes] = buf.split(b"\r\n")
    if len(lines) != count + 1 or lines[-1]:
        raise MemcacheUnknownError(b"data after the last reply")
    del lines[-1]
    return lines


def _reply(conn: Client, name: bytes, replies: Mapping[bytes, Any], line: bytes) -> Any:
    """What ``line`` means, by ``replies``; an error line raises pymemcache's error."""
    if line in replies:
        return replies[line]
    conn._raise_errors(line, name)
    raise MemcacheUnknownError(line[:64])


def _lines_reader(name: bytes, replies: Mapping[bytes, Any]) -> Reader:
    """Reads one one-line reply per key of the call's first argument, mapped through ``replies``."""

    def read(conn: Client, buf: bytes, args: tuple[Any, ...]) -> list[Any]:
        return [_reply(conn, name, replies, line)
                for line in _read_lines(conn, buf, len(args[0]))]

    return read


def _line_reader(name: bytes, replies: Mapping[bytes, Any]) -> Reader:
    """Reads one one-line reply, mapped through ``replies``."""
    whole = {line + b"\r\n": meaning for line, meaning in replies.items()}

    def read(conn: Client, buf: bytes, args: tuple[Any, ...]) -> Any:
        if buf in whole:  # the usual case: the whole reply in one chunk
            return whole[buf]
        (line,) = _read_lines(conn, buf, 1)
        return _reply(conn, name, replies, line)

    return read


_STORED = {b"STORED": True, b"NOT_STORED": False}
_CAS = {b"STORED": True, b"EXISTS": False, b"NOT_FOUND": None}
_DELETED = {b"DELETED": True, b"NOT_FOUND": False}
_TOUCHED = {b"TOUCHED": True, b"NOT_FOUND": False}


def _storage(name: bytes, key: bytes, item: Item, expire: int, cas: bytes = b"") -> bytes:
    data, flags = item
    return b"%s %s %d %d %d%s\r\n%s\r\n" % (name, key, flags, expire, len(data),
                                             b" " + cas if cas else b"", data)


def _store_request(name: bytes) -> Callable[[bytes, Item, int], bytes]:
    def request(key: bytes, item: Item, expire: int) -> bytes:
        data, flags = item  # _storage(), inlined: this is every set's path
        return b"%s %s %d %d %d\r\n%s\r\n" % (name, key, flags, expire, len(data), data)
    return request


def _cas_request(key: bytes, item: Item, cas: bytes, expire: int) -> bytes:
    return _storage(b"cas", key, item, expire, cas)


def _key_request(name: bytes) -> Callable[[bytes], bytes]:
    def request(key: bytes) -> bytes:
        return b"%s %s\r\n" % (name, key)
    return request


def _fetch_request(name: bytes) -> Callable[[Sequence[bytes]], bytes]:
    def request(keys: Sequence[bytes]) -> bytes:
        return b"%s %s\r\n" % (name, b" ".join(keys))
    return request


def _set_many_request(items: Mapping[bytes, Item], expire: int) -> bytes:
    return b"".join(_storage(b"set", k, item, expire) for k, item in items.items())


_read_stored_lines = _lines_reader(b"set", _STORED)


def _read_set_many(conn: Client, buf: bytes, args: tuple[Any, ...]) -> list[bytes]:
    """The keys of a ``set_many`` that were not stored."""
    keys = list(args[0])
    stored = _read_stored_lines(conn, buf, args)
    return [k for k, ok in zip(keys, stored, strict=True) if not ok]


_read_deleted_lines = _lines_reader(b"delete", _DELETED)


def _delete_many_request(keys: Sequence[bytes]) -> bytes:
    return b"".join(b"delete %s\r\n" % k for k in keys)


def _read_delete_many(conn: Client, buf: bytes, args: tuple[Any, ...]) -> None:
    _read_deleted_lines(conn, buf, args)


def _touch_request(key: bytes, expire: int) -> bytes:
    return b"touch %s %d\r\n" % (key, expire)


_read_stored = _line_reader(b"set", _STORED)


def _store(name: bytes) -> tuple[Callable[..., bytes], Reader]:
    return _store_request(name), _line_reader(name, _STORED)


#: Transport method -> ``(request builder, reply reader)``: the builder
#: makes the request bytes from the method's arguments.
_PIPELINED: dict[str, tuple[Callable[..., bytes], Reader]] = {
    "get": (_key_request(b"get"), _read_item),
    "get_many": (_fetch_request(b"get"), _values_reader(b"get")),
    "gets_many": (_fetch_request(b"gets"), _values_reader(b"gets")),
    "set": (_store_request(b"set"), _read_stored),
    "add": _store(b"add"),
    "replace": _store(b"replace"),
    "cas": (_cas_request, _line_reader(b"cas", _CAS)),
    "set_many": (_set_many_request, _read_set_many),
    "delete": (_key_request(b"delete"), _line_reader(b"delete", _DELETED)),
    "delete_many": (_delete_many_request, _read_delete_many),
    "touch": (_touch_request, _line_reader(b"touch", _TOUCHED)),
}
