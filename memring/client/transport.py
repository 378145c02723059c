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
from functools import partial
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

    def __init__(self, transport: PymemcacheTransport, conn: Client | None,
                 read: Callable[[Client], Any], method: str,
                 args: tuple[Any, ...], error: Exception | None = None) -> None:
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
                assert conn.sock is not None
                if wait is not None and not select.select([conn.sock], [], [], max(wait, 0))[0]:
                    raise TimeoutError("no reply")
                value = self._read(conn)
            except Exception as error:
                exc = error
            else:
                t._pool.release(conn)
                return value
            t._pool.destroy(conn)
        assert exc is not None
        key = self._key()
        if retry and isinstance(exc, _STALE):
            return t._after_stale(
                key, lambda: t._send(self._method, self._args).result(retry=False))
        if isinstance(exc, _TRANSLATED):
            raise _translate(exc, t.node, key) from exc
        raise exc

    def _key(self) -> object:
        """The key (or keys) of the call, for the error's context."""
        first = self._args[0]
        if isinstance(first, Mapping):
            first = list(first)
        if isinstance(first, (list, tuple)) and len(first) == 1:
            return first[0]
        return first


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
    read here, on pymemcache's connections and with its line reader and
    error classes; the single-key calls of those commands take the same
    path. Every other command is pymemcache's own.
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
        request, read = _PIPELINED[method](*args)
        pool = self._pool
        try:
            conn = pool.get()  # RuntimeError past max_pool_size: raised by .result()
        except Exception as exc:
            return _Pending(self, None, read, method, args, exc)
        try:
            if conn.sock is None:
                conn._connect()
                assert conn.sock is not None
            conn.sock.sendall(request)
        except Exception as exc:
            pool.destroy(conn)
            return _Pending(self, None, read, method, args, exc)
        return _Pending(self, conn, read, method, args)

    def get(self, key: bytes) -> Item | None:
        result: Item | None = self._send("get", (key,)).result()
        return result

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, Item]:
        result: dict[bytes, Item] = self._send("get_many", (keys,)).result()
        return result

    def gets_many(self, keys: Sequence[bytes]) -> dict[bytes, tuple[Item, bytes]]:
        result: dict[bytes, tuple[Item, bytes]] = self._send("gets_many", (keys,)).result()
        return result

    def set(self, key: bytes, item: Item, expire: int) -> bool:
        return bool(self._send("set", (key, item, expire)).result())

    def set_many(self, items: Mapping[bytes, Item], expire: int) -> list[bytes]:
        return list(self._send("set_many", (items, expire)).result())

    def add(self, key: bytes, item: Item, expire: int) -> bool:
        return bool(self._send("add", (key, item, expire)).result())

    def replace(self, key: bytes, item: Item, expire: int) -> bool:
        return bool(self._send("replace", (key, item, expire)).result())

    def append(self, key: bytes, data: bytes) -> bool:
        return bool(self._call(key, "append", key, (data, 0), noreply=False))

    def prepend(self, key: bytes, data: bytes) -> bool:
        return bool(self._call(key, "prepend", key, (data, 0), noreply=False))

    def cas(self, key: bytes, item: Item, cas: bytes, expire: int) -> bool | None:
        result: bool | None = self._send("cas", (key, item, cas, expire)).result()
        return result

    def delete(self, key: bytes) -> bool:
        return bool(self._send("delete", (key,)).result())

    def delete_many(self, keys: Sequence[bytes]) -> None:
        self._send("delete_many", (keys,)).result()

    def incr(self, key: bytes, delta: int) -> int | None:
        result: int | None = self._call(key, "incr", key, delta, noreply=False)
        return result

    def decr(self, key: bytes, delta: int) -> int | None:
        result: int | None = self._call(key, "decr", key, delta, noreply=False)
        return result

    def touch(self, key: bytes, expire: int) -> bool:
        return bool(self._send("touch", (key, expire)).result())

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

Reader = Callable[[Client], Any]

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


def _values_reader(keys: Sequence[bytes], name: bytes) -> Reader:
    """Reads a ``get``/``gets`` reply (``VALUE`` blocks, then ``END``) whole.

    pymemcache's reader takes a reply a line at a time; this one parses a
    buffer that holds the whole reply, two to four times as fast for a batch
    of small values (:func:`_split_values`, else :func:`_scan_values`). A key
    that was not asked for, or bytes after ``END``, mean the connection is
    out of step: it raises, and the connection is dropped.
    """
    wanted = frozenset(keys)
    fields = 5 if name == b"gets" else 4

    def read(conn: Client) -> dict[bytes, Any]:
        return _read_values(conn, wanted, fields, name)

    return read


def _read_values(conn: Client, wanted: Container[bytes], fields: int,
                 name: bytes) -> dict[bytes, Any]:
    sock = conn.sock
    assert sock is not None
    buf = sock.recv(READ_SIZE)
    if not buf:
        raise MemcacheUnexpectedCloseError()
    if buf.endswith(b"END\r\n"):
        out = _split_values(buf, wanted, fields)
        if out is not None:
            return out
    return _scan_values(conn, buf, wanted, fields, name)


def _read_item(wanted: tuple[bytes], conn: Client) -> Item | None:
    """Reads the reply to a ``get`` of one key: its item, or None."""
    item: Item | None = _read_values(conn, wanted, 4, b"get").get(wanted[0])
    return item


def _get_request(key: bytes) -> tuple[bytes, Reader]:
    return b"get %s\r\n" % key, partial(_read_item, (key,))


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
            if len(header) != fields:
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


def _read_lines(conn: Client, count: int) -> list[bytes]:
    """The next ``count`` reply lines, without their CRLFs: the whole reply, or raise.

    Reads until ``count`` line ends have arrived; more than that means the
    connection is out of step.
    """
    sock = conn.sock
    assert sock is not None
    buf = sock.recv(READ_SIZE)
    seen = buf.count(b"\r\n")
    if seen < count:
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


def _lines_reader(name: bytes, count: int, replies: Mapping[bytes, Any]) -> Reader:
    """Reads ``count`` one-line replies, each mapped through ``replies``."""

    def read(conn: Client) -> list[Any]:
        return [_reply(conn, name, replies, line) for line in _read_lines(conn, count)]

    return read


def _line_reader(name: bytes, replies: Mapping[bytes, Any]) -> Reader:
    """Reads one one-line reply, mapped through ``replies``."""

    def read(conn: Client) -> Any:
        (line,) = _read_lines(conn, 1)
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


def _store_request(name: bytes) -> Callable[[bytes, Item, int], tuple[bytes, Reader]]:
    reader = _line_reader(name, _STORED)

    def request(key: bytes, item: Item, expire: int) -> tuple[bytes, Reader]:
        data, flags = item  # _storage(), inlined: this is every set's path
        return b"%s %s %d %d %d\r\n%s\r\n" % (name, key, flags, expire, len(data), data), reader
    return request


def _cas_request(key: bytes, item: Item, cas: bytes, expire: int) -> tuple[bytes, Reader]:
    return _storage(b"cas", key, item, expire, cas), _CAS_READER


def _fetch_request(name: bytes) -> Callable[[Sequence[bytes]], tuple[bytes, Reader]]:
    def request(keys: Sequence[bytes]) -> tuple[bytes, Reader]:
        return b"%s %s\r\n" % (name, b" ".join(keys)), _values_reader(keys, name)
    return request


def _set_many_request(items: Mapping[bytes, Item], expire: int) -> tuple[bytes, Reader]:
    keys = list(items)
    read_lines = _lines_reader(b"set", len(keys), _STORED)

    def read(conn: Client) -> list[bytes]:
        return [k for k, ok in zip(keys, read_lines(conn), strict=True) if not ok]
    return b"".join(_storage(b"set", k, items[k], expire) for k in keys), read


def _delete_request(key: bytes) -> tuple[bytes, Reader]:
    return b"delete %s\r\n" % key, _DELETE_READER


def _delete_many_request(keys: Sequence[bytes]) -> tuple[bytes, Reader]:
    read_lines = _lines_reader(b"delete", len(keys), _DELETED)

    def read(conn: Client) -> None:
        read_lines(conn)
    return b"".join(b"delete %s\r\n" % k for k in keys), read


def _touch_request(key: bytes, expire: int) -> tuple[bytes, Reader]:
    return b"touch %s %d\r\n" % (key, expire), _TOUCH_READER


_CAS_READER = _line_reader(b"cas", _CAS)
_DELETE_READER = _line_reader(b"delete", _DELETED)
_TOUCH_READER = _line_reader(b"touch", _TOUCHED)

#: Transport method -> ``(request bytes, reply reader)`` for its arguments.
_PIPELINED: dict[str, Callable[..., tuple[bytes, Reader]]] = {
    "get": _get_request,
    "get_many": _fetch_request(b"get"),
    "gets_many": _fetch_request(b"gets"),
    "set": _store_request(b"set"),
    "add": _store_request(b"add"),
    "replace": _store_request(b"replace"),
    "cas": _cas_request,
    "set_many": _set_many_request,
    "delete": _delete_request,
    "delete_many": _delete_many_request,
    "touch": _touch_request,
}
