"""The thread face's transport: one node over a pool of blocking sockets.

pymemcache makes and configures the connections (address resolution, unix
sockets, TLS, keep-alive, connect timeout); :class:`ConnectionPool` keeps
the idle ones; requests and replies are :mod:`memring.protocol`'s, shared
with the asyncio transport. :class:`SocketTransport` is the seam the tests
replace with fake nodes; it raises memring errors only, translated in one
place (:func:`translate`).

Every call is bounded as a whole: its reply must be complete within the
read timeout, however the bytes trickle in. The first read of a reply is
bounded by the socket's own timeout (set in the kernel, ``SO_RCVTIMEO``:
no extra system call on the fast path); a reply that needs more reads gets
the time left, and a ``VALUE`` header that claims more than the item size
limit ends the call before its bytes are buffered. A connection that
errored, timed out or read anything unexpected is closed and dropped from
the pool, never reused: its stream could be out of step.
"""

from __future__ import annotations

import collections
import logging
import select
import socket
import ssl
import struct
import threading
import time
import types
from collections.abc import Callable
from typing import Any, NoReturn, Protocol

from pymemcache.client.base import Client
from pymemcache.exceptions import MemcacheError

from memring.engine.policies import Timeouts
from memring.errors import (
    MemringError,
    NodeUnavailable,
    PoolExhausted,
)
from memring.hashring.node import Node
from memring.protocol import COMMANDS, INCOMPLETE, BadReply, MetadumpReader
from memring.protocol.errors import Cut, Stale, batch_results, key_of
from memring.protocol.errors import translate as _translate
from memring.protocol.replies import FLAG_DIGITS as _FLAG_DIGITS
from memring.protocol.replies import NUMBER_DIGITS as _NUMBER_DIGITS

__all__ = ["Item", "NodeTransport", "RawSerde", "Ready", "Reply", "SocketTransport",
           "raw_serde", "translate"]

log = logging.getLogger("memring")

#: A raw stored value: the bytes and the 32-bit flags.
Item = tuple[bytes, int]

#: Bytes asked of each ``recv``: a reply of a few hundred small values is
#: read whole at once (a larger buffer costs nothing measurable).
READ_SIZE = 65536
#: Requests up to this size are handed to the kernel in one ``sendall``
#: (they fit its send buffer); larger ones are sent in parts, each bounded
#: by the time the call has left.
_SEND_AT_ONCE = 65536
_BATCH = COMMANDS["batch"].parse
#: A pipelined reply read this much after its request was written is waited
#: for with poll(), bounded by what the read timeout has left; sooner, the
#: socket's own timeout bounds it (as closely as the kernel's timer ticks).
_TICK = 0.01
#: The longest a metadump (a rebuild's list of keys) may take in all.
_METADUMP_SECONDS = 300.0
#: Methods the transport answers itself, each on a connection of its own or
#: none: a rebuild's key listing, a raw command (its reply's shape is the
#: caller's) and ``quit`` (closes the idle connections).
_LOCAL = ("dump_keys", "raw", "quit")


class Reply(Protocol):
    def result(self, deadline: float | None = None) -> Any:
        """The call's result or its memring error raised; ``deadline`` (monotonic
        seconds), if given, bounds the wait."""
        ...


class NodeTransport(Protocol):
    """Raw commands on one node (:data:`memring.protocol.COMMANDS`; ``dump_keys``,
    ``raw`` and ``quit`` are answered on a connection of their own, or none).

    Every method raises memring errors only.
    """

    node: Node
    on_reconnect: Callable[[Node], None] | None

    def call(self, method: str, *args: Any) -> Any: ...
    def send(self, method: str, *args: Any) -> Reply: ...
    def get(self, key: bytes) -> Item | None: ...
    def set(self, key: bytes, item: Item, expire: int) -> bool: ...
    def close(self) -> None: ...
    def after_fork(self) -> None: ...


_Stale = Stale
_Cut = Cut


def translate(exc: BaseException, node: Node, key: object, seconds: float) -> MemringError:
    """memring's error for a failure of a call on ``node`` (raise it ``from exc``):
    :func:`memring.protocol.errors.translate`, and pymemcache's own errors."""
    if isinstance(exc, MemcacheError) and not isinstance(exc, MemringError):
        return NodeUnavailable(f"connection failed: {exc}", node=node, key=key)
    return _translate(exc, node, key, seconds)


def _memring_error(exc: BaseException, node: Node, key: object, seconds: float) -> NoReturn:
    """Raise memring's error for ``exc`` (itself if it is one), keeping the cause."""
    if isinstance(exc, MemringError):
        raise exc
    raise translate(exc, node, key, seconds) from exc


class RawSerde:
    """A pymemcache serde that hands ``(bytes, flags)`` items through untouched.

    A plain pymemcache client given it shows what a node really holds
    (tests and tools use it so).
    """

    @staticmethod
    def serialize(key: bytes, value: Item) -> Item:
        return value

    @staticmethod
    def deserialize(key: bytes, value: bytes, flags: int) -> Item:
        return (value, flags)


raw_serde = RawSerde()


def _timeval(seconds: float) -> bytes:
    # At least 1 us: a zero timeval would mean "no timeout at all".
    whole, micros = divmod(max(1, round(seconds * 1e6)), 1_000_000)
    return struct.pack("ll", whole, micros)


class _KernelTimeoutSockets(types.ModuleType):
    """The ``socket`` module, but new sockets carry kernel send/receive timeouts.

    Given to pymemcache as its ``socket_module`` with ``timeout=None``: the
    sockets stay in blocking mode after connecting, and ``SO_RCVTIMEO`` /
    ``SO_SNDTIMEO`` bound every read and write. Python's own socket timeouts
    would do the same with a ``poll()`` before each ``recv``/``send``, about
    6% of a loopback round trip. A read that times out raises
    ``BlockingIOError`` (``EAGAIN``), which :func:`translate` maps to
    :class:`~memring.errors.NodeTimeout`. Kernel timers fire up to two
    scheduler ticks late (10-20 ms on a 100 Hz kernel).
    """

    def __init__(self, seconds: float, base: types.ModuleType = socket) -> None:
        super().__init__("memring_sockets")
        self._base = base
        self._timeval = _timeval(seconds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    def socket(self, *args: Any) -> socket.socket:
        sock: socket.socket = self._base.socket(*args)
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

    def result(self, deadline: float | None = None) -> Any:
        if self._error is not None:
            raise self._error
        return self._value


class _Pending:
    """A request written to a pooled connection whose reply is not read yet."""

    __slots__ = ("_transport", "_conn", "_method", "_args", "_start", "_fresh")

    def __init__(self, transport: SocketTransport, conn: Client, method: str,
                 args: tuple[Any, ...], start: float, fresh: bool) -> None:
        self._transport = transport
        self._conn = conn
        self._method = method
        self._args = args
        self._start = start
        self._fresh = fresh

    def result(self, deadline: float | None = None) -> Any:
        t = self._transport
        conn = self._conn
        own = self._start + t.read_timeout
        deadline = own if deadline is None else min(deadline, own)
        try:
            sock = conn.sock
            assert sock is not None
            if deadline - time.monotonic() < t.read_timeout - _TICK:
                _wait_readable(sock, deadline)  # a slow node before this one used time up
            first = sock.recv(READ_SIZE)
            if not first and not self._fresh:
                raise _Stale()
            value = t.read_reply(sock, COMMANDS[self._method].parse, self._args, first,
                                 deadline)
        except Exception as exc:
            t.discard(conn)
            if isinstance(exc, _Stale):
                return t.after_stale(self._method, self._args)
            _memring_error(exc, t.node, key_of(self._args), t.read_timeout)
        t.release(conn)
        return value


def _wait_readable(sock: socket.socket, deadline: float) -> None:
    """Wait until ``sock`` has bytes to read, at most until ``deadline``."""
    if isinstance(sock, ssl.SSLSocket) and sock.pending():
        return
    poller = select.poll()  # not select(): a descriptor past 1023 is fine here
    poller.register(sock, select.POLLIN)
    left = max(deadline - time.monotonic(), 0.0)  # 0: a reply already there is read
    if not poller.poll(left * 1000):
        raise TimeoutError("no reply")


#: Seconds a pooled connection may sit idle before it is checked for unasked bytes.
STRAY_CHECK_AFTER = 0.001
_PEEK = socket.MSG_PEEK | socket.MSG_DONTWAIT


def _unasked_bytes(sock: socket.socket | None) -> bool:
    """Has the server sent bytes on this idle connection? (Not a close: a connection
    the server closed is found on use, and tells the client it may have restarted.)"""
    if sock is None or isinstance(sock, ssl.SSLSocket):
        return False
    try:
        return bool(sock.recv(1, _PEEK))
    except (BlockingIOError, InterruptedError):
        return False
    except OSError:  # reset: the call finds it so
        return False


class ConnectionPool:
    """One node's connections: the idle ones on a stack, taken and given back without a lock.

    ``deque.append`` and ``deque.pop`` are atomic in CPython, so the two calls
    a request makes (:meth:`get`, :meth:`release`) take no lock; one is
    taken only to make or drop a connection, which counts against
    ``max_size`` (every connection, idle or in use). The most recently used
    connection is reused first, so idle ones age out under
    ``idle_timeout`` (seconds; 0: never).

    A connection idle for more than :data:`STRAY_CHECK_AFTER` is looked at
    (one non-blocking peek) before it is reused: bytes its server sent
    while nobody asked would be read as the next call's reply, so such a
    connection is closed instead. Calls back to back, on a busy
    connection, skip the look; a stray reply that arrives with the reply
    before it is refused by the parser ("bytes after the reply").
    """

    __slots__ = ("_all", "_idle_timeout", "_lock", "_make", "closed", "free", "max_size")

    def __init__(self, make: Callable[[], Client], *, max_size: int | None = None,
                 idle_timeout: float = 0.0, lock: Any = None) -> None:
        self._make = make
        self.max_size = max_size or 2**31
        self._idle_timeout = idle_timeout
        self._lock = lock if lock is not None else threading.Lock()
        self.free: collections.deque[Client] = collections.deque()
        #: Every connection alive, idle or in use.
        self._all: set[Client] = set()
        self.closed = False

    def get(self) -> Client:
        """An idle connection, or a new one (not connected yet: its ``sock`` is None).

        Raises ``RuntimeError`` past ``max_size``.
        """
        while True:
            try:
                conn = self.free.pop()
            except IndexError:
                break
            idle = time.monotonic() - conn._memring_idle
            if self._idle_timeout and idle >= self._idle_timeout:
                self.destroy(conn)
            elif idle > STRAY_CHECK_AFTER and _unasked_bytes(conn.sock):
                log.warning("a node sent bytes nobody asked for on an idle connection: "
                            "it is closed")
                self.destroy(conn)
            else:
                return conn
        with self._lock:
            if len(self._all) >= self.max_size:
                raise RuntimeError(f"Too many connections, {len(self._all)} >= {self.max_size}")
            conn = self._make()
            self._all.add(conn)
        return conn

    def release(self, conn: Client) -> None:
        """Give back a connection whose last call ended cleanly."""
        if self.closed:
            self.destroy(conn)
            return
        conn._memring_idle = time.monotonic()
        self.free.append(conn)

    def destroy(self, conn: Client) -> None:
        """Close and forget a connection (it errored, timed out, or went stale)."""
        with self._lock:
            self._all.discard(conn)
        conn.close()

    def drop_idle(self) -> None:
        """Close every idle connection; the pool makes new ones when asked."""
        while self.free:
            try:
                conn = self.free.pop()
            except IndexError:  # another thread took the last one
                return
            self.destroy(conn)

    def clear(self) -> None:
        """Close every idle connection; one in use is closed when it is given back."""
        self.closed = True
        self.drop_idle()

    def forget(self) -> None:
        """In a child process: close this process's descriptors of every connection,
        idle or in use by a thread of the parent, without a byte written."""
        for conn in list(self._all):
            sock, conn.sock = conn.sock, None
            if sock is not None:
                sock.close()
        self._all.clear()
        self.free.clear()

    def __len__(self) -> int:
        return len(self._all)


class SocketTransport:
    """One node over a thread-safe pool of blocking sockets (see the module docstring).

    :meth:`send` writes a request and returns a reply to read later, so one
    thread can keep several nodes at work (multi-key calls, backup writes).
    A pooled connection the server closed (it restarted) is retried on
    fresh connections; a timeout is never retried here.
    """

    def __init__(
        self,
        node: Node,
        *,
        timeouts: Timeouts,
        max_item_size: int,
        max_pool_size: int | None = None,
        pool_idle_timeout: float = 0.0,
        tls_context: ssl.SSLContext | None = None,
        socket_module: types.ModuleType = socket,
        socket_keepalive: Any = None,
        lock_generator: Callable[[], Any] | None = None,
    ) -> None:
        self.node = node
        self.read_timeout = timeouts.read
        self._timeouts = timeouts
        self._limit = max_item_size
        self._tls_context = tls_context
        self._max_pool_size = max_pool_size
        self._idle_timeout = pool_idle_timeout
        #: Called (with the node) after a call had to reconnect because the
        #: server had closed its pooled connections: it may have restarted.
        self.on_reconnect: Callable[[Node], None] | None = None
        self._lock_generator = lock_generator
        # Kernel timeouts bound blocking sockets only: TLS reports them as SSL
        # errors, and a cooperative socket module (gevent's) never blocks in
        # the kernel, so both get Python's socket timeouts instead.
        self._kernel_timeouts = tls_context is None and socket_module is socket
        if self._kernel_timeouts:
            sockets: types.ModuleType = _KernelTimeoutSockets(timeouts.read, socket_module)
            read_timeout: float | None = None
            self._full_timeval = _timeval(timeouts.read)
        else:
            sockets, read_timeout = socket_module, timeouts.read
            self._full_timeval = b""

        def connection() -> Client:
            return Client(node.address, serde=raw_serde, connect_timeout=timeouts.connect,
                          timeout=read_timeout, no_delay=True, default_noreply=False,
                          tls_context=tls_context, socket_module=sockets,
                          socket_keepalive=socket_keepalive)

        self._connection = connection
        self._pool = self._new_pool()

    def _new_pool(self) -> ConnectionPool:
        return ConnectionPool(self._connection, max_size=self._max_pool_size,
                              idle_timeout=self._idle_timeout,
                              lock=self._lock_generator() if self._lock_generator else None)

    # -- the pool ----------------------------------------------------------
    def release(self, conn: Client) -> None:
        self._pool.release(conn)

    def discard(self, conn: Client) -> None:
        self._pool.destroy(conn)

    def _checkout(self, key: object) -> tuple[Client, socket.socket, bool]:
        """A pooled connection (connected now if it is new), its socket, and whether it is new.

        Raises memring errors (a refused connect, or the pool's size limit).
        """
        pool = self._pool
        try:
            conn = pool.get()
        except RuntimeError as exc:  # past max_pool_size
            raise PoolExhausted(f"connection pool exhausted: {exc}", node=self.node,
                                key=key) from exc
        sock = conn.sock
        if sock is not None:
            return conn, sock, False
        try:
            conn._connect()
        except Exception as exc:
            pool.destroy(conn)
            _memring_error(exc, self.node, key, self._timeouts.connect)
        sock = conn.sock
        assert sock is not None
        return conn, sock, True

    # -- calls ---------------------------------------------------------------
    def send(self, method: str, *args: Any) -> Reply:
        """Write the request of ``method(*args)`` now; read its reply with ``.result()``."""
        if method in _LOCAL:
            return Ready.of(self.call, method, *args)
        try:
            request = COMMANDS[method].build(*args)
            conn, sock, fresh = self._checkout(key_of(args))
        except MemringError as exc:
            return Ready(error=exc)
        start = time.monotonic()
        try:
            self._send(sock, request, start + self.read_timeout)
        except Exception as exc:
            self.discard(conn)
            if not fresh and _is_stale(exc):
                return Ready.of(self.after_stale, method, args)
            error = translate(exc, self.node, key_of(args), self.read_timeout)
            if error is not exc:
                error.__cause__ = exc
            return Ready(error=error)
        return _Pending(self, conn, method, args, start, fresh)

    def call(self, method: str, *args: Any) -> Any:
        """``method(*args)``, written and read now."""
        if method == "dump_keys":
            return self.dump_keys()
        if method == "quit":
            self._pool.drop_idle()
            return None
        if method == "raw":
            return self.raw(*args)
        return self._call(method, args, retry=True)

    def _call(self, method: str, args: tuple[Any, ...], retry: bool) -> Any:
        command = COMMANDS[method]
        request = command.build(*args)
        conn, sock, fresh = self._checkout(key_of(args))
        deadline = time.monotonic() + self.read_timeout
        try:
            self._send(sock, request, deadline)
            if len(request) > _SEND_AT_ONCE:  # sending took time: the reply gets what is left
                _wait_readable(sock, deadline)
            first = sock.recv(READ_SIZE)
            if not first and not fresh:
                raise _Stale()
            result = self.read_reply(sock, command.parse, args, first, deadline)
        except Exception as exc:
            self.discard(conn)
            if retry and not fresh and _is_stale(exc):
                return self.after_stale(method, args)
            _memring_error(exc, self.node, key_of(args), self.read_timeout)
        self._pool.release(conn)
        return result

    # get and set are _call() unrolled, with the usual whole reply read in
    # place: they are a session store's calls, and this saves 10-14% of
    # their CPU time in this layer.
    def get(self, key: bytes) -> Item | None:
        pool = self._pool
        try:
            conn = pool.get()
        except RuntimeError:
            full: Item | None = self._call("get", (key,), True)  # raises PoolExhausted
            return full
        sock = conn.sock
        if sock is None:
            pool.release(conn)
            fresh: Item | None = self._call("get", (key,), True)  # connects it
            return fresh
        start = time.monotonic()  # vDSO: no system call
        try:
            sock.sendall(b"get %s\r\n" % key)
            buf = sock.recv(READ_SIZE)
            if buf == b"END\r\n":
                pool.release(conn)
                return None
            eol = buf.find(b"\r\n")
            header = buf[:eol].split(b" ")
            if (len(header) == 4 and header[0] == b"VALUE" and header[1] == key
                    and header[3].isdigit() and header[2].isdigit()
                    and len(buf) == eol + 9 + int(header[3]) and buf.endswith(b"\r\nEND\r\n")
                    and int(header[3]) <= self._limit and int(header[2]) < 1 << 32
                    and len(header[2]) <= _FLAG_DIGITS and len(header[3]) <= _NUMBER_DIGITS):
                pool.release(conn)
                return (buf[eol + 2:-7], int(header[2]))
            if not buf:
                raise _Stale()
            item: Item | None = self.read_reply(sock, COMMANDS["get"].parse, (key,), buf,
                                                 start + self.read_timeout)
        except Exception as exc:
            pool.destroy(conn)
            if _is_stale(exc):
                result: Item | None = self.after_stale("get", (key,))
                return result
            _memring_error(exc, self.node, key, self.read_timeout)
        pool.release(conn)
        return item

    def set(self, key: bytes, item: Item, expire: int) -> bool:
        data, flags = item
        pool = self._pool
        try:
            conn = pool.get()
        except RuntimeError:
            return bool(self._call("set", (key, item, expire), True))  # raises PoolExhausted
        sock = conn.sock
        if sock is None or len(data) > _SEND_AT_ONCE:
            pool.release(conn)
            return bool(self._call("set", (key, item, expire), True))
        start = time.monotonic()
        try:
            request = b"set %s %d %d %d\r\n%s\r\n" % (key, flags, expire, len(data), data)
            sent = sock.send(request)  # _send() inlined: one call saved on the common path
            if sent != len(request):
                self._send_rest(sock, memoryview(request)[sent:], start + self.read_timeout)
            buf = sock.recv(READ_SIZE)
            if buf == b"STORED\r\n":
                pool.release(conn)
                return True
            if not buf:
                raise _Stale()
            ok = self.read_reply(sock, COMMANDS["set"].parse, (key, item, expire), buf,
                                 start + self.read_timeout)
        except Exception as exc:
            pool.destroy(conn)
            if _is_stale(exc):
                return bool(self.after_stale("set", (key, item, expire)))
            _memring_error(exc, self.node, key, self.read_timeout)
        pool.release(conn)
        return bool(ok)

    def after_stale(self, method: str, args: tuple[Any, ...]) -> Any:
        """Retry a call after the server closed a pooled connection.

        It restarted (or dropped its connections): the other idle pooled
        sockets to the old process are dead too. Retry past them, each
        dropped as it fails (at once: the peer is gone). Never close the
        pool here: that would close sockets other threads are using.
        """
        for _ in range(len(self._pool.free) + 1):
            try:
                result = self._call(method, args, retry=False)
                break
            except NodeUnavailable as again:
                if not isinstance(again.__cause__, _Stale) and not _is_stale(again.__cause__):
                    raise
        else:
            result = self._call(method, args, retry=False)
        if self.on_reconnect is not None:
            self.on_reconnect(self.node)
        return result

    # -- bytes on the wire ---------------------------------------------------
    def _send(self, sock: socket.socket, request: bytes, deadline: float) -> None:
        """Write ``request`` by ``deadline``: one ``send`` if it fits the kernel's buffer
        (the usual case), else in parts, each bounded by the time left."""
        if len(request) <= _SEND_AT_ONCE:
            sent = sock.send(request)
            if sent == len(request):
                return
            # a peer that reads slowly: the rest as a large request
            self._send_rest(sock, memoryview(request)[sent:], deadline)
        else:
            self._send_rest(sock, memoryview(request), deadline)

    def _send_rest(self, sock: socket.socket, view: memoryview, deadline: float) -> None:
        """Write ``view`` in parts, each bounded by the time left to ``deadline``."""
        try:
            while view:
                self._limit_wait(sock, deadline, socket.SO_SNDTIMEO)
                sent = sock.send(view)
                view = view[sent:]
        finally:
            self._restore(sock, socket.SO_SNDTIMEO)

    def read_reply(self, sock: socket.socket, parse: Any, args: tuple[Any, ...], buf: bytes,
                   deadline: float) -> Any:
        """Parse a reply that starts with ``buf``, reading the rest until ``deadline``."""
        limit = self._limit
        extended = False
        try:
            while True:
                if not buf:
                    raise _Stale()
                result, end = parse(buf, 0, args, limit)
                if result is not INCOMPLETE:
                    if end != len(buf):
                        raise BadReply(f"{len(buf) - end} bytes after the reply")
                    if parse is _BATCH:  # an error line answered one of its commands
                        return batch_results(result, self.node)
                    return result
                chunks = [buf]
                have = len(buf)
                while have < end:
                    extended = True
                    self._limit_wait(sock, deadline, socket.SO_RCVTIMEO)
                    chunk = sock.recv(max(READ_SIZE, end - have))
                    if not chunk:
                        raise _Cut()
                    chunks.append(chunk)
                    have += len(chunk)
                buf = b"".join(chunks)
        finally:
            if extended:
                self._restore(sock, socket.SO_RCVTIMEO)

    def _limit_wait(self, sock: socket.socket, deadline: float, option: int) -> None:
        """Bound the next read or write of ``sock`` by the time the call has left."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the call's time is up")
        if self._kernel_timeouts:
            sock.setsockopt(socket.SOL_SOCKET, option, _timeval(left))
        else:
            sock.settimeout(left)

    def _restore(self, sock: socket.socket, option: int) -> None:
        try:
            if self._kernel_timeouts:
                sock.setsockopt(socket.SOL_SOCKET, option, self._full_timeval)
            else:
                sock.settimeout(self.read_timeout)
        except OSError:
            pass  # a closed socket: it is dropped anyway

    def raw(self, command: bytes, end_tokens: bytes) -> bytes:
        """``command``'s reply up to ``end_tokens``, on a connection of its own.

        The reply's shape is the caller's guess: whatever follows the end
        tokens must never reach a pooled call, so the connection is closed
        after it, and the call is bounded by the read timeout in all.
        """
        conn = self._connection()
        args = (command, end_tokens)
        parse = COMMANDS["raw"].parse
        deadline = time.monotonic() + self.read_timeout
        buf = b""
        try:
            conn._connect()
            sock = conn.sock
            assert sock is not None
            sock.sendall(COMMANDS["raw"].build(*args))
            while True:
                self._limit_wait(sock, deadline, socket.SO_RCVTIMEO)
                chunk = sock.recv(READ_SIZE)
                if not chunk:
                    raise _Cut()
                buf += chunk
                result, _ = parse(buf, 0, args, self._limit)
                if result is not INCOMPLETE:
                    reply: bytes = result
                    return reply
        except Exception as exc:
            _memring_error(exc, self.node, None, self.read_timeout)
        finally:
            conn.close()

    def dump_keys(self) -> list[bytes]:
        """Every key the node holds (``lru_crawler metadump all``), for rebuilding a copy.

        Read on a connection of its own (memcached answers a metadump on a
        connection with nothing else pipelined), parsed as it arrives.
        """
        conn = self._connection()
        reader = MetadumpReader()
        deadline = time.monotonic() + max(_METADUMP_SECONDS, self.read_timeout)
        try:
            conn._connect()
            sock = conn.sock
            assert sock is not None
            sock.sendall(b"lru_crawler metadump all\r\n")
            while True:
                if time.monotonic() > deadline:
                    raise TimeoutError("metadump took too long")
                chunk = sock.recv(READ_SIZE)
                if not chunk:
                    raise _Cut()
                if reader.feed(chunk):
                    return reader.keys
        except Exception as exc:
            _memring_error(exc, self.node, None, self.read_timeout)
        finally:
            conn.close()

    def close(self) -> None:
        """Close every idle connection; one in use is closed when its call ends."""
        self._pool.clear()

    def after_fork(self) -> None:
        """In a child process: forget the parent's connections without touching them.

        Their sockets are the parent's too; a write or a ``shutdown()`` here
        would disturb the parent's calls. Dropping them closes only this
        process's descriptors.
        """
        old, self._pool = self._pool, self._new_pool()
        old.forget()


def _is_stale(exc: BaseException | None) -> bool:
    """Did the server close this pooled connection before answering (it restarted)?"""
    return isinstance(exc, (_Stale, BrokenPipeError, ConnectionResetError))
