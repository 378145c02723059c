"""HostileServer: a fake memcached on loopback whose every reply a test decides.

It listens on 127.0.0.1 on a port picked at run time, frames requests as
memcached does (:mod:`tests.netfaults.protocol`), and hands each one to
the behaviour bound to its command (:mod:`tests.netfaults.behaviours`);
unbound commands are answered honestly from an in-memory store. One
thread accepts, one thread serves each connection. Every wait in them
(for a socket, a sleep, a drip) also waits on a wake-up socket that
:meth:`HostileServer.close` makes readable, so closing stops them all at
once and closes every socket.

>>> with HostileServer(drip(0.05)) as server:          # doctest: +SKIP
...     server.behave(honest(), "set")                   # only the other replies drip
...     client = pymemcache.client.base.Client(server.address)
"""

from __future__ import annotations

import contextlib
import select
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

from memring import Node
from tests.netfaults.behaviours import (
    CLOSE,
    HALF_CLOSE,
    MUTE,
    RESET,
    STOP_READING,
    Behaviour,
    BehaviourLike,
    Reply,
    Send,
    Sleep,
    Stream,
    _Signal,
    as_behaviour,
    honest,
)
from tests.netfaults.protocol import ITEM_SIZE_MAX, MiniMemcached, Request, RequestFramer

__all__ = ["ConnectionRecord", "HostileServer", "HostileServerError", "abort"]

#: How often the accept thread, while accepts are held, looks up to see whether to go on.
POLL = 0.05
#: How long a closed connection keeps reading, so that its FIN is not overtaken by a RST.
LINGER = 1.0
#: How many bytes of each direction a connection record keeps (totals are always counted).
RECORD_LIMIT = 16 * 1024 * 1024


class HostileServerError(RuntimeError):
    """A behaviour raised, or a thread of the server did not stop: raised by ``close()``."""


class _Stopped(Exception):
    """The server is closing: the connection thread ends."""


def abort(sock: socket.socket) -> None:
    """Close ``sock`` with a reset (RST) instead of a FIN: ``SO_LINGER`` on, time 0."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


@dataclass
class _Conn:
    number: int
    peer: tuple[str, int]
    received: bytearray = field(default_factory=bytearray)
    sent: bytearray = field(default_factory=bytearray)
    bytes_received: int = 0
    bytes_sent: int = 0
    requests: list[Request] = field(default_factory=list)
    closed: bool = False
    how: str = ""
    muted: bool = False
    reading: bool = True


@dataclass(frozen=True)
class ConnectionRecord:
    """What one connection brought and got, at the moment it was asked for.

    ``received``/``sent`` keep the first :data:`RECORD_LIMIT` bytes;
    ``bytes_received``/``bytes_sent`` count them all. ``how`` says how it
    ended: "peer closed", "closed", "reset", "server closed", or the error.
    """

    number: int
    peer: tuple[str, int]
    received: bytes
    sent: bytes
    bytes_received: int
    bytes_sent: int
    requests: tuple[Request, ...]
    closed: bool
    how: str


class HostileServer:
    """A fake memcached in background threads; ``behaviour`` decides its replies.

    ``behaviour`` (default: honest) applies to every command not bound
    otherwise; ``commands`` binds behaviours to commands by name
    (``{"get": drip()}``). Both can be changed at any moment with
    :meth:`behave`. ``rcvbuf`` sets a small receive buffer (with
    :func:`~tests.netfaults.behaviours.stop_reading`, a client's writes
    then block soon). ``store`` is the honest state, shared by every
    connection; a test can fill or inspect it directly.
    """

    def __init__(
        self,
        behaviour: BehaviourLike | None = None,
        *,
        commands: Mapping[str, BehaviourLike] | None = None,
        host: str = "127.0.0.1",
        backlog: int = 64,
        rcvbuf: int | None = None,
        store: MiniMemcached | None = None,
        item_size_max: int = ITEM_SIZE_MAX,
    ) -> None:
        self._lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        self._stop = threading.Event()
        # Readable once close() writes to it: every wait of every thread includes it.
        self._wake_r, self._wake_w = socket.socketpair()
        self._default: Behaviour = as_behaviour(behaviour) if behaviour is not None else honest()
        self._per_command: dict[str, Behaviour] = {
            name: as_behaviour(b) for name, b in (commands or {}).items()}
        self.store = store if store is not None else MiniMemcached(item_size_max=item_size_max)
        self.item_size_max = item_size_max
        self._conns: list[_Conn] = []
        self._threads: list[threading.Thread] = []
        self._errors: list[BaseException] = []
        self._backlog = backlog
        self._holding = False
        self._accept_lock = threading.Lock()
        self._fillers: list[socket.socket] = []
        self._filler_ports: set[int] = set()
        self._closed = False

        lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            if rcvbuf is not None:  # accepted sockets inherit it
                lsock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            lsock.bind((host, 0))
            lsock.listen(backlog)
            lsock.setblocking(False)
        except BaseException:
            lsock.close()
            self._wake_r.close()
            self._wake_w.close()
            raise
        self._lsock = lsock
        self.host, self.port = lsock.getsockname()[:2]
        self._acceptor = threading.Thread(target=self._accept_loop, daemon=True,
                                          name=f"hostile-accept-{self.port}")
        self._acceptor.start()

    # -- addresses -------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)``, for pymemcache and sockets."""
        return (self.host, self.port)

    @property
    def server(self) -> str:
        """``"host:port"``, for memring's server lists."""
        return f"{self.host}:{self.port}"

    @property
    def node(self) -> Node:
        """The memring node of this server."""
        return Node(self.host, self.port)

    # -- behaviours --------------------------------------------------------------
    def behave(self, behaviour: BehaviourLike | None, *commands: str) -> None:
        """Bind ``behaviour`` to ``commands``, or make it the default if none are named.

        ``None`` unbinds the commands (or makes the default honest). Takes
        effect from the next request, on every connection.
        """
        b = as_behaviour(behaviour) if behaviour is not None else None
        with self._lock:
            if not commands:
                self._default = b or honest()
            for name in commands:
                if b is None:
                    self._per_command.pop(name, None)
                else:
                    self._per_command[name] = b

    def honest_again(self) -> None:
        """Every command honest from now on."""
        with self._lock:
            self._default = honest()
            self._per_command.clear()

    def _behaviour_for(self, command: str) -> Behaviour:
        with self._lock:
            return self._per_command.get(command, self._default)

    # -- what happened -------------------------------------------------------------
    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        with self._lock:
            return len(self._conns)

    def connections(self) -> list[ConnectionRecord]:
        """A snapshot of every connection accepted so far, in accept order."""
        with self._lock:
            return [ConnectionRecord(c.number, c.peer, bytes(c.received), bytes(c.sent),
                                     c.bytes_received, c.bytes_sent, tuple(c.requests),
                                     c.closed, c.how) for c in self._conns]

    def received(self) -> list[bytes]:
        """The bytes each connection sent to the server, in accept order."""
        with self._lock:
            return [bytes(c.received) for c in self._conns]

    def requests(self, command: str | None = None) -> list[Request]:
        """Every request received (of ``command`` only, if given), in arrival order."""
        with self._lock:
            reqs = [r for c in self._conns for r in c.requests]
        reqs.sort(key=lambda r: r.arrived)
        return [r for r in reqs if command is None or r.command == command]

    def wait_until(self, predicate: Callable[[], bool], timeout: float = 2.0) -> bool:
        """Wait (at most ``timeout`` s) until ``predicate()`` is true; return whether it is.

        The predicate is evaluated whenever a connection or request arrives
        or a connection ends.
        """
        deadline = time.monotonic() + timeout
        while not predicate():
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            with self._changed:
                self._changed.wait(min(left, POLL))
        return True

    def wait_requests(self, n: int = 1, timeout: float = 2.0) -> list[Request]:
        """The requests received, once there are at least ``n``; raise TimeoutError if not."""
        if not self.wait_until(lambda: len(self.requests()) >= n, timeout):
            raise TimeoutError(f"{len(self.requests())} of {n} requests arrived in {timeout}s")
        return self.requests()

    # -- accepting -----------------------------------------------------------------
    def hold_accepts(self, fill_backlog: bool = True) -> None:
        """Stop accepting new connections (the ones being served go on).

        With ``fill_backlog`` (default) the listen queue is filled with the
        server's own connections, so new connects hang: their SYN is
        dropped and the client's connect timeout fires, as with a server
        too busy to accept. Without it, the kernel still completes new
        connects and queues them, and nothing ever reads them: the client's
        first read times out. :meth:`release_accepts` undoes it.
        """
        with self._accept_lock:
            self._holding = True
        if not fill_backlog:
            return
        self._lsock.listen(0)
        for _ in range(64):
            filler = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            filler.setblocking(False)
            filler.connect_ex(self.address)
            self._fillers.append(filler)
            self._filler_ports.add(filler.getsockname()[1])
            if not select.select([], [filler], [], 0.2)[1]:
                return  # this one waits for a SYN-ACK: the queue is full
        raise HostileServerError("the listen queue never filled")

    def release_accepts(self) -> None:
        """Accept again; drop the filler connections."""
        for filler in self._fillers:
            abort(filler)
        self._fillers.clear()
        self._lsock.listen(self._backlog)
        with self._accept_lock:
            self._holding = False

    def _accept_loop(self) -> None:
        try:
            while not self._stop.is_set():
                with self._accept_lock:
                    holding = self._holding
                if holding:
                    self._stop.wait(POLL)
                    continue
                if not self._wait(self._lsock, select.POLLIN):
                    continue
                with self._accept_lock:
                    if self._holding:
                        continue
                    try:
                        sock, peer = self._lsock.accept()
                    except (BlockingIOError, InterruptedError):
                        continue
                self._start(sock, peer)
        except _Stopped:
            pass
        except OSError as exc:
            self._errors.append(exc)
        finally:
            self._lsock.close()

    def _wait(self, sock: socket.socket, events: int, timeout: float | None = None) -> bool:
        """Wait until ``sock`` is ready for ``events`` (True) or ``timeout`` passes (False);
        raise :class:`_Stopped` as soon as the server closes."""
        poller = select.poll()
        poller.register(self._wake_r, select.POLLIN)
        poller.register(sock, events | select.POLLERR | select.POLLHUP)
        ready = poller.poll(None if timeout is None else max(0, int(timeout * 1000) + 1))
        if self._stop.is_set():
            raise _Stopped
        return bool(ready)

    def _start(self, sock: socket.socket, peer: tuple[str, int]) -> None:
        if peer[1] in self._filler_ports:
            abort(sock)
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._changed:
            conn = _Conn(len(self._conns), peer)
            self._conns.append(conn)
            thread = threading.Thread(target=self._serve, args=(conn, sock), daemon=True,
                                      name=f"hostile-{self.port}-conn{conn.number}")
            self._threads.append(thread)
            self.store.total_connections += 1
            self.store.curr_connections += 1
            self._changed.notify_all()
        thread.start()

    # -- serving one connection ----------------------------------------------------
    def _serve(self, conn: _Conn, sock: socket.socket) -> None:
        end: str | None = None
        how = "server closed"
        try:
            with self._lock:
                on_accept = self._default.on_accept
            end = self._perform(conn, sock, self._decide(on_accept, conn.number))
            framer = RequestFramer(item_size_max=self.item_size_max, connection=conn.number,
                                   store=self.store)
            while end is None and not self._stop.is_set():
                if not conn.reading:
                    self._stop.wait()  # until close()
                    continue
                self._wait(sock, select.POLLIN)
                try:
                    data = sock.recv(65536)
                except (BlockingIOError, InterruptedError):
                    continue
                if not data:
                    how = "peer closed"
                    break
                self._record(conn, data)
                for req in framer.feed(data):
                    with self._changed:
                        conn.requests.append(req)
                        self._changed.notify_all()
                    if conn.muted:
                        continue
                    behaviour = self._behaviour_for(req.command)
                    end = self._perform(conn, sock, self._decide(behaviour.reply, req))
                    if end is not None:
                        break
                if end is None and framer.close_after:
                    end = "close"
        except _Stopped:
            end = None
        except OSError as exc:  # the client reset or went away
            how, end = f"error: {exc!r}", None
        except Exception as exc:  # a bug here, not in a behaviour: close() raises it
            self._errors.append(exc)
            how, end = f"error: {exc!r}", "reset"
        finally:
            if end == "reset":
                how = "reset"
                abort(sock)
            elif end == "close":
                how = "closed"
                self._linger(conn, sock)
            else:
                sock.close()
            self._ended(conn, how)

    def _ended(self, conn: _Conn, how: str) -> None:
        with self._changed:
            if not conn.closed:
                conn.closed, conn.how = True, how
                self.store.curr_connections -= 1
                self._changed.notify_all()

    def _decide(self, fn: Callable[[Any], Reply], arg: Any) -> Reply:
        """Run a behaviour's function; one that raises closes the connection."""
        try:
            return fn(arg)
        except Exception as exc:
            self._errors.append(exc)
            return CLOSE

    def _linger(self, conn: _Conn, sock: socket.socket) -> None:
        """Close with a FIN: shut down sending, then read until the client closes (bounded),
        since closing with unread data would send a RST instead. The record shows the
        connection closed from the FIN on."""
        try:
            sock.shutdown(socket.SHUT_WR)
            self._ended(conn, "closed")
            deadline = time.monotonic() + LINGER
            while self._wait(sock, select.POLLIN, deadline - time.monotonic()):
                try:
                    if not sock.recv(65536):
                        break
                except (BlockingIOError, InterruptedError):
                    continue
                if time.monotonic() >= deadline:
                    break
        except (OSError, _Stopped):
            pass
        finally:
            sock.close()

    def _record(self, conn: _Conn, received: bytes) -> None:
        with self._lock:
            conn.bytes_received += len(received)
            if len(conn.received) < RECORD_LIMIT:
                conn.received += received[:RECORD_LIMIT - len(conn.received)]

    @staticmethod
    def _record_sent(conn: _Conn, sent: memoryview) -> None:
        conn.bytes_sent += len(sent)
        if len(conn.sent) < RECORD_LIMIT:
            conn.sent += sent[:RECORD_LIMIT - len(conn.sent)]

    def _perform(self, conn: _Conn, sock: socket.socket, reply: Reply) -> str | None:
        """Carry out a behaviour's reply; "close" or "reset" if the connection must end."""
        for item in _items(reply):
            if isinstance(item, (bytes, bytearray)):
                self._send(conn, sock, bytes(item))
            elif isinstance(item, Send):
                step = item.chunk or len(item.data) or 1
                for i in range(0, len(item.data), step):
                    if i and item.interval:
                        self._sleep(item.interval)
                    self._send(conn, sock, item.data[i:i + step])
            elif isinstance(item, Stream):
                for i, chunk in enumerate(item.chunks):
                    if i and item.interval:
                        self._sleep(item.interval)
                    self._send(conn, sock, chunk)
            elif isinstance(item, Sleep):
                self._sleep(item.seconds)
            elif item is CLOSE:
                return "close"
            elif item is RESET:
                return "reset"
            elif item is HALF_CLOSE:
                sock.shutdown(socket.SHUT_WR)
                conn.muted = True
                return None
            elif item is MUTE:
                conn.muted = True
                return None
            elif item is STOP_READING:
                conn.reading = False
                return None
            else:
                raise TypeError(f"not an action: {item!r}")
        return None

    def _sleep(self, seconds: float) -> None:
        if self._stop.wait(seconds):
            raise _Stopped

    def _send(self, conn: _Conn, sock: socket.socket, data: bytes) -> None:
        view = memoryview(data)
        while view:
            if self._stop.is_set():
                raise _Stopped
            try:
                # Sent and recorded under the lock: a test that has read the
                # bytes finds them in the record.
                with self._lock:
                    n = sock.send(view)
                    self._record_sent(conn, view[:n])
            except (BlockingIOError, InterruptedError):
                self._wait(sock, select.POLLOUT)
                continue
            view = view[n:]

    # -- closing ---------------------------------------------------------------------
    def close(self) -> None:
        """Stop every thread, close every socket; raise if a behaviour raised. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        self._wake_w.send(b"!")
        deadline = time.monotonic() + 5.0
        self._acceptor.join(max(0.0, deadline - time.monotonic()))
        with self._lock:
            threads = list(self._threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        for filler in self._fillers:
            abort(filler)
        self._fillers.clear()
        self._wake_r.close()
        self._wake_w.close()
        alive = [t.name for t in [self._acceptor, *threads] if t.is_alive()]
        if alive:
            raise HostileServerError(f"threads still running after close(): {alive}")
        if self._errors:
            first = self._errors[0]
            raise HostileServerError(f"{len(self._errors)} error(s) in the server; the first: "
                                     f"{first!r}") from first

    def __enter__(self) -> HostileServer:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<HostileServer {self.server} default={self._default.name}>"


def _items(reply: Reply) -> Iterator[bytes | Send | Stream | Sleep | _Signal]:
    if reply is None:
        return
    if isinstance(reply, (bytes, bytearray)):
        yield bytes(reply)
        return
    if isinstance(reply, (Send, Stream, Sleep, _Signal)):
        yield reply
        return
    yield from reply
