"""The asyncio face's transport: one node over a bounded pool of connections.

Each connection is an :class:`asyncio.Protocol` that writes requests built
by :mod:`memring.protocol` and hands the bytes it receives to that module's
parsers, so the wire format exists once for both faces. Failures are
translated by :func:`memring.protocol.errors.translate`, the seam the
thread transport uses too.

* **Bounded.** A node has at most ``max_size`` connections; a call past
  that waits for one to be free, at most the connect timeout, then raises
  :class:`~memring.PoolExhausted`. Connecting is bounded by the connect
  timeout; a reply must be complete within the read timeout of its
  request (checked by one timer per node, :class:`Deadlines`: no task or
  timer per call).
* **Pipelined.** :meth:`AsyncTransport.send` writes a request at once and
  returns its reply to await later, so one task keeps several nodes at
  work (multi-key calls, backup writes) and waits one read timeout in all.
* **Cancellation-safe.** A connection is checked out by one call at a
  time. If that call ends in any other way than with its whole reply read
  (an error, a timeout, a reply out of step, or the task cancelled while
  it waits, by a client disconnect or an ``asyncio.timeout`` around the
  caller), the connection is closed at once and never goes back to the
  pool: its stream could be out of step. Bytes arriving when no call is
  waiting close it too.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
import time
from collections.abc import Callable
from typing import Any

from memring.engine.policies import Timeouts
from memring.errors import MemringError, PoolExhausted
from memring.hashring.node import Node
from memring.protocol import COMMANDS, INCOMPLETE, BadReply, MetadumpReader
from memring.protocol.errors import Cut, Stale, batch_results, key_of, translate

__all__ = ["AsyncTransport", "Connection"]

Item = tuple[bytes, int]
_GET = COMMANDS["get"].parse
_SET = COMMANDS["set"].parse
#: Methods the transport answers itself: a rebuild's key listing and a raw command,
#: each on a connection of its own, and ``quit`` (closes the idle connections).
_LOCAL = ("dump_keys", "raw", "quit")
#: The longest a metadump (a rebuild's list of keys) may take in all.
_METADUMP_SECONDS = 300.0


class Deadlines:
    """When each call in flight on a node's connections must end.

    One timer of the loop checks them all every ``period`` seconds while any
    call is in flight, instead of a timer per call (a timer's heap push and
    cancel cost a tenth of a loopback ``get``). A call that overruns its
    deadline fails at the next check: at most ``period`` late.
    """

    def __init__(self, period: float) -> None:
        self.period = period
        self.busy: dict[Connection, float] = {}
        self._handle: asyncio.TimerHandle | None = None

    def add(self, conn: Connection, loop: asyncio.AbstractEventLoop, timeout: float) -> None:
        self.busy[conn] = loop.time() + timeout
        if self._handle is None:
            self._handle = loop.call_later(self.period, self._check, loop)

    def _check(self, loop: asyncio.AbstractEventLoop) -> None:
        self._handle = None
        now = loop.time()
        for conn in [c for c, at in self.busy.items() if at <= now]:
            conn.timed_out()
        if self.busy:
            self._handle = loop.call_later(self.period, self._check, loop)

    def clear(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.busy.clear()


class Connection(asyncio.Protocol):
    """One connection to a node, used by one call at a time (see the module docstring)."""

    def __init__(self, limit: int, deadlines: Deadlines) -> None:
        self.limit = limit
        self._deadlines = deadlines
        self.transport: asyncio.Transport | None = None
        self.closed = False
        #: Closed by the server (not by us): it may have restarted.
        self.lost = False
        #: Calls made on it (0: new, never used).
        self.uses = 0
        self._waiter: asyncio.Future[Any] | None = None
        self._parse: Any = None
        self._args: tuple[Any, ...] = ()
        self._chunks: list[bytes] = []
        self._have = 0
        self._need = 0

    # -- asyncio.Protocol ------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            self.abort()  # bytes nobody asked for: out of step
            return
        if self._chunks:
            self._chunks.append(data)
            self._have += len(data)
            if self._have < self._need:
                return
            buf = b"".join(self._chunks)
        else:
            buf = data
        try:
            result, end = self._parse(buf, 0, self._args, self.limit)
            if result is not INCOMPLETE and end != len(buf):
                raise BadReply(f"{len(buf) - end} bytes after the reply")
        except Exception as exc:
            self._fail(exc)
            return
        if result is INCOMPLETE:
            self._chunks = [buf]
            self._have = len(buf)
            self._need = end
            return
        self._chunks = []
        self._finish()
        waiter.set_result(result)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            self._finish()
            waiter.set_exception(Cut() if self._chunks else Stale())
        else:
            self.lost = True
        self._waiter = None

    # -- calls -----------------------------------------------------------------
    def request(self, data: bytes, parse: Any, args: tuple[Any, ...], timeout: float
                ) -> asyncio.Future[Any]:
        """Write a request; the future of its reply, failed with ``TimeoutError`` after
        ``timeout`` seconds (the connection is then closed)."""
        assert self.transport is not None and self._waiter is None
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        self._waiter = waiter
        self._parse = parse
        self._args = args
        self._need = 0
        self.uses += 1
        self._deadlines.add(self, loop, timeout)
        self.transport.write(data)
        return waiter

    def timed_out(self) -> None:
        """Its call's time is up: fail it, close the connection."""
        self._fail(TimeoutError("no reply"))

    def _fail(self, exc: BaseException) -> None:
        waiter = self._waiter
        self._finish()
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.abort()

    def _finish(self) -> None:
        self._waiter = None
        self._deadlines.busy.pop(self, None)

    def abort(self) -> None:
        """Close at once, dropping whatever is buffered either way."""
        self.closed = True
        self._finish()
        self._chunks = []
        transport = self.transport
        if transport is not None:
            try:
                transport.abort()
            except RuntimeError:  # its event loop is closed: close the socket itself
                sock = getattr(transport, "_sock", None)
                if sock is not None:
                    sock.close()
                    transport._sock = None  # type: ignore[attr-defined]  # closed, not leaked


class Pending:
    """A request written on a checked-out connection; ``await reply.result()``."""

    __slots__ = ("_transport", "_conn", "_future", "_method", "_args")

    def __init__(self, transport: AsyncTransport, conn: Connection, future: asyncio.Future[Any],
                 method: str, args: tuple[Any, ...]) -> None:
        self._transport = transport
        self._conn = conn
        self._future = future
        self._method = method
        self._args = args

    async def result(self) -> Any:
        """The call's result, or its memring error raised."""
        return await self._transport.finish(self._conn, self._future, self._method, self._args,
                                            retry=True)

    def abandon(self) -> None:
        """The caller will not read this reply (it was cancelled): close its connection."""
        future = self._future
        if future.done():
            if not future.cancelled():
                future.exception()  # looked at: not "never retrieved"
        else:
            future.cancel()
        self._transport.closed_on_cancel += 1
        self._transport.discard(self._conn)


class Started:
    """A call that needed a connection first: running as a task of its own."""

    __slots__ = ("_task",)

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self._task = task

    async def result(self) -> Any:
        return await self._task

    def abandon(self) -> None:
        self._task.cancel()


class AsyncTransport:
    """One node over a bounded pool of asyncio connections (see the module docstring)."""

    def __init__(self, node: Node, *, timeouts: Timeouts, max_item_size: int, max_pool_size: int,
                 tls_context: ssl.SSLContext | None = None) -> None:
        self.node = node
        self.read_timeout = timeouts.read
        self.connect_timeout = timeouts.connect
        self._limit = max_item_size
        self._tls = tls_context
        self.max_size = max_pool_size
        #: Called (with the node) after a call found connections the server had
        #: closed: it may have restarted.
        self.on_reconnect: Callable[[Node], None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle: list[Connection] = []
        self._count = 0
        self._waiters: collections.deque[asyncio.Future[Connection | None]] = (
            collections.deque())
        self.closed = False
        self._deadlines = Deadlines(min(0.05, max(0.005, timeouts.read / 10)))
        #: Connections closed because the call using them was cancelled.
        self.closed_on_cancel = 0

    # -- the pool --------------------------------------------------------------
    def _idle_connection(self) -> Connection | None:
        """An idle connection still open, or None; notes connections the server closed."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._adopt(loop)
        idle = self._idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                return conn
            self._count -= 1
            if conn.lost and self.on_reconnect is not None:
                self.on_reconnect(self.node)
        return None

    def _adopt(self, loop: asyncio.AbstractEventLoop) -> None:
        """First use, or use from another event loop: connections belong to their loop."""
        for conn in self._idle:
            conn.abort()
        self._idle = []
        self._count = 0
        self._waiters.clear()
        self._deadlines = Deadlines(self._deadlines.period)  # the old one's timer: the old loop's
        self._loop = loop

    async def _checkout(self, key: object) -> Connection:
        """A connection to use (connected now if need be); raises memring errors."""
        conn = self._idle_connection()
        if conn is not None:
            return conn
        if self.closed:
            raise translate(Stale(), self.node, key, 0)
        if self._count >= self.max_size:
            conn = await self._wait_for_one(key)
            if conn is not None:
                return conn
        self._count += 1
        try:
            return await self._connect()
        except BaseException as exc:
            self._count -= 1
            self._wake_one()
            if isinstance(exc, Exception):
                raise translate(exc, self.node, key, self.connect_timeout) from exc
            raise

    async def _wait_for_one(self, key: object) -> Connection | None:
        """Wait (at most the connect timeout) for a connection given back, or a free slot."""
        loop = self._loop
        assert loop is not None
        waiter: asyncio.Future[Connection | None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(self.connect_timeout, _give_up, waiter)
        try:
            return await waiter
        except _PoolWait:
            raise PoolExhausted(
                f"connection pool exhausted: {self.max_size} connections busy for "
                f"{self.connect_timeout:g}s", node=self.node, key=key) from None
        except BaseException:  # cancelled: a connection handed over meanwhile goes on
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                handed = waiter.result()
                if handed is not None:
                    self.release(handed)
                else:
                    self._wake_one()
            raise
        finally:
            timer.cancel()

    async def _connect(self) -> Connection:
        loop = self._loop
        assert loop is not None
        limit, deadlines, node = self._limit, self._deadlines, self.node
        tls = self._tls
        if node.is_unix:
            opening = loop.create_unix_connection(
                lambda: Connection(limit, deadlines), node.host, ssl=tls,
                server_hostname="localhost" if tls is not None else None)
        else:
            opening = loop.create_connection(
                lambda: Connection(limit, deadlines), node.host, node.port, ssl=tls,
                server_hostname=node.host if tls is not None else None)
        _, conn = await asyncio.wait_for(opening, self.connect_timeout)
        sock = conn.transport.get_extra_info("socket") if conn.transport else None
        if sock is not None and tls is None and not node.is_unix:
            import socket

            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def release(self, conn: Connection) -> None:
        """Give back a connection whose last call read its whole reply."""
        if self.closed or conn.closed:
            self.discard(conn)
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        self._idle.append(conn)

    def discard(self, conn: Connection) -> None:
        """Close and forget a connection checked out by a call that did not end cleanly."""
        conn.abort()
        self._count = max(0, self._count - 1)  # one of another loop's was not counted
        self._wake_one()

    def _wake_one(self) -> None:
        """A slot is free: let one waiting call make a connection."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    # -- calls -------------------------------------------------------------------
    def send(self, method: str, *args: Any) -> Pending | Started:
        """Write ``method(*args)``'s request now (on an idle connection) or start it
        (in a task, when a connection must be made or waited for)."""
        if method not in _LOCAL:
            conn = self._idle_connection()
            if conn is not None:
                command = COMMANDS[method]
                try:
                    data = command.build(*args)
                except BaseException:
                    self.release(conn)
                    raise
                return Pending(self, conn, conn.request(data, command.parse, args,
                                                        self.read_timeout), method, args)
        return Started(asyncio.ensure_future(self.call(method, *args)))

    async def call(self, method: str, *args: Any) -> Any:
        """``method(*args)``: its result, or its memring error raised."""
        if method in _LOCAL:  # answered here, on a connection of its own or none
            if method == "quit":
                return self.quit()
            return await (self.dump_keys() if method == "dump_keys" else self.raw(*args))
        return await self._call(method, args, retry=True)

    # get and set: _call() with the usual case (an idle connection) inlined;
    # they are a session store's calls.
    async def get(self, key: bytes) -> Item | None:
        conn = self._idle_connection()
        if conn is None:
            fresh: Item | None = await self._call("get", (key,), retry=True)
            return fresh
        args = (key,)
        future = conn.request(b"get %s\r\n" % key, _GET, args, self.read_timeout)
        item: Item | None = await self.finish(conn, future, "get", args, True)
        return item

    async def set(self, key: bytes, item: Item, expire: int) -> bool:
        conn = self._idle_connection()
        args = (key, item, expire)
        if conn is None:
            return bool(await self._call("set", args, retry=True))
        data, flags = item
        future = conn.request(b"set %s %d %d %d\r\n%s\r\n" % (key, flags, expire, len(data), data),
                              _SET, args, self.read_timeout)
        return bool(await self.finish(conn, future, "set", args, True))

    async def _call(self, method: str, args: tuple[Any, ...], retry: bool) -> Any:
        command = COMMANDS[method]
        data = command.build(*args)
        conn = await self._checkout(key_of(args))
        future = conn.request(data, command.parse, args, self.read_timeout)
        return await self.finish(conn, future, method, args, retry)

    async def finish(self, conn: Connection, future: asyncio.Future[Any], method: str,
                     args: tuple[Any, ...], retry: bool) -> Any:
        """Await a reply; the connection goes back to the pool only if it was read whole."""
        try:
            result = await future
        except asyncio.CancelledError:
            if not future.done() or future.cancelled():
                self.closed_on_cancel += 1
            self.discard(conn)
            raise
        except BaseException as exc:
            self.discard(conn)
            if not isinstance(exc, Exception):
                raise
            if retry and conn.uses > 1 and isinstance(exc, Stale):
                return await self._after_stale(method, args)
            raise translate(exc, self.node, key_of(args), self.read_timeout) from exc
        self.release(conn)
        if method == "batch":
            return batch_results(result, self.node)
        return result

    async def _after_stale(self, method: str, args: tuple[Any, ...]) -> Any:
        """A pooled connection the server had closed (it restarted): retry on new ones."""
        for _ in range(len(self._idle) + 1):
            try:
                result = await self._call(method, args, retry=False)
                break
            except MemringError as again:
                if not isinstance(again.__cause__, Stale):
                    raise
        else:
            result = await self._call(method, args, retry=False)
        if self.on_reconnect is not None:
            self.on_reconnect(self.node)
        return result

    async def dump_keys(self) -> list[bytes]:
        """Every key the node holds (``lru_crawler metadump all``), for rebuilding a copy;
        read on a connection of its own, parsed as it arrives."""
        reader = MetadumpReader()

        def feed(buf: bytes, chunk: bytes) -> tuple[Any, bytes]:
            return (reader.keys if reader.feed(chunk) else INCOMPLETE), b""

        keys: list[bytes] = await self._alone(b"lru_crawler metadump all\r\n", feed,
                                              max(_METADUMP_SECONDS, self.read_timeout))
        return keys

    async def raw(self, command: bytes, end_tokens: bytes) -> bytes:
        """``command``'s reply up to ``end_tokens``, on a connection of its own (closed
        after it: whatever follows the end tokens never reaches a pooled call)."""
        args = (command, end_tokens)
        parse, limit = COMMANDS["raw"].parse, self._limit

        def feed(buf: bytes, chunk: bytes) -> tuple[Any, bytes]:
            buf += chunk
            return parse(buf, 0, args, limit)[0], buf

        reply: bytes = await self._alone(COMMANDS["raw"].build(*args), feed, self.read_timeout)
        return reply

    async def _alone(self, request: bytes, feed: Callable[[bytes, bytes], tuple[Any, bytes]],
                     seconds: float) -> Any:
        """Write ``request`` on a connection of its own and read until ``feed`` (given
        what was read so far and the next chunk) has a result, within ``seconds``."""
        deadline = time.monotonic() + seconds
        node = self.node
        try:
            if node.is_unix:
                opening = asyncio.open_unix_connection(node.host, ssl=self._tls)
            else:
                opening = asyncio.open_connection(node.host, node.port, ssl=self._tls)
            stream, writer = await asyncio.wait_for(opening, self.connect_timeout)
        except Exception as exc:
            raise translate(exc, node, None, self.connect_timeout) from exc
        try:
            writer.write(request)
            buf = b""
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the call's time is up")
                chunk = await asyncio.wait_for(stream.read(65536), min(left, self.read_timeout))
                if not chunk:
                    raise Cut()
                result, buf = feed(buf, chunk)
                if result is not INCOMPLETE:
                    return result
        except Exception as exc:
            raise translate(exc, node, None, self.read_timeout) from exc
        finally:
            writer.transport.abort()

    def quit(self) -> None:
        """Close every idle connection (pymemcache's ``quit``); the pool makes new ones."""
        for conn in self._idle:
            conn.abort()
        self._count = max(0, self._count - len(self._idle))
        self._idle = []

    def close(self) -> None:
        """Close every idle connection; one in use is closed when its call ends."""
        self.closed = True
        for conn in self._idle:
            conn.abort()
        self._count -= len(self._idle)
        self._idle = []
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)

    def __len__(self) -> int:
        """Connections open or being opened, idle or in use."""
        return self._count


class _PoolWait(Exception):
    """A call waited the connect timeout for a connection and got none."""


def _give_up(waiter: asyncio.Future[Any]) -> None:
    if not waiter.done():
        waiter.set_exception(_PoolWait())
