"""FaultProxy: a TCP proxy on loopback that gives the clients of one port a fault.

Clients that connect to the proxy reach the target (a real memcached)
through it; clients that connect to the target directly see nothing of
the fault. So one client can see a node hang, vanish or crawl while every
other client finds it well: the asymmetric faults that SIGSTOP, which
every client sees, cannot make.

One thread runs a selector over every socket; the controls (:meth:`pause`,
:meth:`blackhole`, :meth:`refuse`, :meth:`drip`, :meth:`delay`,
:meth:`cut`, ...) may be called from any thread at any moment and take
effect before they return. Nothing busy-waits: the thread sleeps in
``select`` until a socket is ready, a timer (delay, drip) is due, or a
control wakes it.

>>> with LocalCluster(1) as cluster, FaultProxy(cluster[0].address) as proxy:  # doctest: +SKIP
...     faulty = memring.Client([proxy.node()])    # routes keys as cluster[0] does
...     proxy.pause()                              # only this client sees a hung node
"""

from __future__ import annotations

import collections
import contextlib
import errno
import selectors
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal

from memring import Node
from memring.hashring.node import NodeSpec, parse_node
from tests.netfaults.server import abort

__all__ = ["FaultProxy", "ProxyCounters", "proxied_node"]

READ_SIZE = 65536
#: A direction stops reading once this many bytes wait to be written on.
HIGH_WATER = 4 * 1024 * 1024
#: The longest a control waits for the proxy's thread to carry it out.
CALL_TIMEOUT = 5.0
#: The longest the thread sleeps in ``select`` with nothing to do.
IDLE_WAKE = 1.0

Mode = Literal["forward", "pause", "blackhole"]


def proxied_node(real: NodeSpec, proxy: FaultProxy | tuple[str, int], *, weight: int | None = None,
                 hash: str = "murmur3") -> Node:
    """A node at the proxy's address with the ring identity of ``real``.

    memring places a node on the ring by its name, which defaults to its
    address; naming the proxy's node after the real server makes it own
    exactly the keys the real server owns. ``hash`` is the client's hash
    mode: murmur3 names points by the node's label ("host:port"), ketama by
    its ketama name (the bare host on port 11211).
    """
    node = parse_node(real)
    host, port = proxy.address if isinstance(proxy, FaultProxy) else proxy
    name = node.ketama_name if hash == "ketama" else node.label
    return Node(host, port, node.weight if weight is None else weight, name)


@dataclass(frozen=True)
class ProxyCounters:
    """What the proxy has done so far.

    ``client_to_server``/``server_to_client`` count bytes written on;
    ``dropped`` counts bytes a blackhole swallowed.
    """

    accepted: int
    active: int
    client_to_server: int
    server_to_client: int
    dropped: int


class _Pipe:
    """One direction of a link: bytes read from ``src`` wait here to be written to ``dst``."""

    __slots__ = ("src", "dst", "queue", "queued", "eof", "shut", "blocked", "next_drip")

    def __init__(self, src: socket.socket, dst: socket.socket) -> None:
        self.src = src
        self.dst = dst
        #: ``[release_time, data]`` chunks, oldest first.
        self.queue: collections.deque[list[Any]] = collections.deque()
        self.queued = 0
        self.eof = False  # src sent its FIN
        self.shut = False  # we passed the FIN on to dst
        self.blocked = False  # dst's send buffer is full: wait until it is writable
        self.next_drip = 0.0


class _Link:
    """One proxied connection: the client's socket and ours to the target."""

    def __init__(self, number: int, client: socket.socket, server: socket.socket) -> None:
        self.number = number
        self.client = client
        self.server = server
        self.connected = False
        self.up = _Pipe(client, server)
        self.down = _Pipe(server, client)
        self.lost = False  # a blackhole swallowed some of its bytes: out of step
        self.closed = False
        self.masks = {"client": 0, "server": 0}


class _Call:
    __slots__ = ("fn", "done", "value", "error")

    def __init__(self, fn: Callable[[], Any]) -> None:
        self.fn = fn
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None


class FaultProxy:
    """A proxy on ``host`` (a port picked at run time unless ``port`` is given) to ``target``.

    Controls (each thread-safe, in effect when it returns):

    * :meth:`pause` / :meth:`resume` — forward nothing either way and hold
      what arrives; resume delivers it in order (this client alone sees a
      SIGSTOPped server: its requests are applied late);
    * :meth:`blackhole` / :meth:`heal` — accept and read, forward and answer
      nothing, and drop what was read (a partition); heal resets the
      connections that lost bytes (their streams are out of step);
    * :meth:`refuse` / :meth:`accept_again` — close the listening socket
      (connects are refused) and reset every connection; listen again on
      the same port;
    * :meth:`drip` — server-to-client bytes one at a time, ``interval`` apart;
    * :meth:`delay` — every chunk read from now on is forwarded ``seconds`` late;
    * :meth:`cut` — reset every current connection;
    * :meth:`clear` — back to plain forwarding (no pause, blackhole, drip or delay);
    * :meth:`counters` — connections accepted and bytes each way.
    """

    def __init__(self, target: tuple[str, int], *, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.target = target
        self.host = host
        self._sel = selectors.DefaultSelector()
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._sel.register(self._wake_r, selectors.EVENT_READ, "wake")
        self._calls: collections.deque[_Call] = collections.deque()
        self._listener: socket.socket | None = None
        self._links: list[_Link] = []
        self._mode: Mode = "forward"
        self._drip: float | None = None
        self._delay = 0.0
        self._accepted = 0
        self._to_server = 0
        self._to_client = 0
        self._dropped = 0
        self._stopping = False
        self._error: BaseException | None = None
        try:
            self._listen(port)
        except BaseException:
            self._sel.close()
            self._wake_r.close()
            self._wake_w.close()
            raise
        assert self._listener is not None
        self.port: int = self._listener.getsockname()[1]
        self._thread: threading.Thread = threading.Thread(target=self._run, daemon=True,
                                        name=f"fault-proxy-{self.port}")
        self._thread.start()

    # -- addresses ------------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        return (self.host, self.port)

    def node(self, *, weight: int = 1, hash: str = "murmur3") -> Node:
        """A memring node at the proxy that the ring places as it places the target."""
        return proxied_node(Node(self.target[0], self.target[1], weight), self, hash=hash)

    # -- controls ---------------------------------------------------------------------
    def pause(self) -> None:
        """Forward nothing, either way, until :meth:`resume`; hold what arrives."""
        self._call(lambda: self._set_mode("pause"))

    def resume(self) -> None:
        """Forward again, first what was held, in order."""
        self._call(lambda: self._set_mode("forward"))

    def blackhole(self) -> None:
        """Read from both sides and drop it all: nothing is forwarded or answered."""
        self._call(lambda: self._set_mode("blackhole"))

    def heal(self) -> None:
        """Forward again; connections that lost bytes in the blackhole are reset."""
        self._call(lambda: self._set_mode("forward"))

    def refuse(self) -> None:
        """Close the listening socket (connects are refused) and reset every connection."""
        self._call(self._do_refuse)

    def accept_again(self) -> None:
        """Listen again, on the same port."""
        self._call(lambda: self._listen(self.port) if self._listener is None else None)

    def drip(self, interval: float | None) -> None:
        """Forward server-to-client bytes one per ``interval`` seconds (None or 0: stop)."""
        if interval is not None and interval < 0:
            raise ValueError("interval must be >= 0")
        self._call(lambda: self._set_drip(interval or None))

    def delay(self, seconds: float) -> None:
        """Forward each chunk read from now on ``seconds`` after it arrived (0: no delay).

        Both directions are delayed: a request and its reply cost ``2 * seconds``.
        """
        if seconds < 0:
            raise ValueError("delay must be >= 0")
        self._call(lambda: setattr(self, "_delay", float(seconds)))

    def cut(self) -> int:
        """Reset every current connection now; returns how many there were."""
        result: int = self._call(self._reset_all)
        return result

    def clear(self) -> None:
        """Plain forwarding again: no pause, blackhole, drip or delay."""

        def clear() -> None:
            self._set_mode("forward")
            self._set_drip(None)
            self._delay = 0.0

        self._call(clear)

    def counters(self) -> ProxyCounters:
        """Connections accepted, open now, and bytes each way so far."""
        result: ProxyCounters = self._call(lambda: ProxyCounters(
            self._accepted, len(self._links), self._to_server, self._to_client, self._dropped))
        return result

    @property
    def mode(self) -> Mode:
        return self._mode

    def close(self) -> None:
        """Stop the thread and close every socket. Idempotent."""
        if self._thread.is_alive():
            self._call(lambda: setattr(self, "_stopping", True))
            self._thread.join(CALL_TIMEOUT)
            if self._thread.is_alive():
                raise RuntimeError("the proxy's thread did not stop")
        if self._error is not None:
            error, self._error = self._error, None
            raise RuntimeError(f"the proxy failed: {error!r}") from error

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, et: type[BaseException] | None, e: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FaultProxy {self.host}:{self.port} -> {self.target[0]}:{self.target[1]} " \
               f"{self._mode}>"

    # -- running controls on the proxy's thread ----------------------------------------
    def _call(self, fn: Callable[[], Any]) -> Any:
        if threading.current_thread() is self._thread:
            return fn()
        if not self._thread.is_alive():
            raise RuntimeError("the proxy is closed")
        call = _Call(fn)
        self._calls.append(call)
        self._wake()
        if not call.done.wait(CALL_TIMEOUT):
            raise TimeoutError("the proxy's thread did not answer")
        if call.error is not None:
            raise call.error
        return call.value

    def _wake(self) -> None:
        with contextlib.suppress(BlockingIOError):  # full of wake-ups: awake already
            self._wake_w.send(b"!")

    def _run_calls(self) -> None:
        try:
            while self._wake_r.recv(4096):
                pass
        except BlockingIOError:
            pass
        while self._calls:
            call = self._calls.popleft()
            try:
                call.value = call.fn()
            except Exception as exc:
                call.error = exc
            call.done.set()

    # -- state changes (on the proxy's thread) ----------------------------------------
    def _set_mode(self, mode: Mode) -> None:
        if mode == "blackhole":
            for link in list(self._links):
                for pipe in (link.up, link.down):
                    if pipe.queue:
                        self._dropped += pipe.queued
                        pipe.queue.clear()
                        pipe.queued = 0
                        link.lost = True
        elif mode == "forward":
            for link in list(self._links):
                if link.lost:
                    self._drop(link, reset=True)
        self._mode = mode

    def _set_drip(self, interval: float | None) -> None:
        self._drip = interval
        for link in self._links:
            link.down.next_drip = 0.0

    def _listen(self, port: int) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, port))
            sock.listen(128)
            sock.setblocking(False)
            self._sel.register(sock, selectors.EVENT_READ, "listen")
        except BaseException:
            sock.close()
            raise
        self._listener = sock

    def _do_refuse(self) -> None:
        if self._listener is not None:
            self._sel.unregister(self._listener)
            self._listener.close()
            self._listener = None
        self._reset_all()

    def _reset_all(self) -> int:
        links = list(self._links)
        for link in links:
            self._drop(link, reset=True)
        return len(links)

    # -- the loop ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            while not self._stopping:
                for link in list(self._links):
                    self._update_interest(link)
                for key, mask in self._sel.select(self._timeout()):
                    what = key.data
                    if what == "wake":
                        self._run_calls()
                    elif what == "listen":
                        self._accept_all()
                    else:
                        link, side = what
                        if not link.closed:
                            self._ready(link, side, mask)
                if self._mode == "forward":
                    for link in list(self._links):
                        self._flush(link)
        except BaseException as exc:
            self._error = exc
        finally:
            self._shutdown()

    def _shutdown(self) -> None:
        for link in list(self._links):
            self._drop(link, reset=False)
        if self._listener is not None:
            self._listener.close()
            self._listener = None
        self._sel.close()
        self._wake_r.close()
        self._wake_w.close()
        while self._calls:
            call = self._calls.popleft()
            call.error = RuntimeError("the proxy is closed")
            call.done.set()

    def _timeout(self) -> float:
        """Seconds until the next timer (a delayed chunk, a drip), at most :data:`IDLE_WAKE`."""
        if self._mode != "forward":
            return IDLE_WAKE
        now = time.monotonic()
        due = now + IDLE_WAKE
        for link in self._links:
            for pipe in (link.up, link.down):
                if pipe.queue and not pipe.blocked and (link.connected or pipe is link.down):
                    at = pipe.queue[0][0]
                    if pipe is link.down and self._drip:
                        at = max(at, pipe.next_drip)
                    due = min(due, at)
        return max(0.0, due - now)

    def _update_interest(self, link: _Link) -> None:
        reading = self._mode != "pause"
        blackhole = self._mode == "blackhole"
        client = 0
        if reading and not link.up.eof and (blackhole or link.up.queued < HIGH_WATER):
            client |= selectors.EVENT_READ
        if link.down.blocked:
            client |= selectors.EVENT_WRITE
        if not link.connected:
            server = selectors.EVENT_WRITE
        else:
            server = 0
            if reading and not link.down.eof and (blackhole or link.down.queued < HIGH_WATER):
                server |= selectors.EVENT_READ
            if link.up.blocked:
                server |= selectors.EVENT_WRITE
        self._interest(link, "client", link.client, client)
        self._interest(link, "server", link.server, server)

    def _interest(self, link: _Link, side: str, sock: socket.socket, mask: int) -> None:
        old = link.masks[side]
        if mask == old:
            return
        if old == 0:
            self._sel.register(sock, mask, (link, side))
        elif mask == 0:
            self._sel.unregister(sock)
        else:
            self._sel.modify(sock, mask, (link, side))
        link.masks[side] = mask

    def _accept_all(self) -> None:
        while self._listener is not None:
            try:
                client, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            server.setblocking(False)
            server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(self._accepted, client, server)
            self._accepted += 1
            self._links.append(link)
            err = server.connect_ex(self.target)
            if err == 0:
                link.connected = True
            elif err not in (errno.EINPROGRESS, errno.EWOULDBLOCK):
                self._drop(link, reset=True)

    def _ready(self, link: _Link, side: str, mask: int) -> None:
        if side == "server" and not link.connected:
            if mask & selectors.EVENT_WRITE:
                if link.server.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    self._drop(link, reset=True)  # the target refused: so do we
                else:
                    link.connected = True
            return
        pipe_in = link.up if side == "client" else link.down
        pipe_out = link.down if side == "client" else link.up
        if mask & selectors.EVENT_WRITE:
            pipe_out.blocked = False
        if mask & selectors.EVENT_READ:
            self._read(link, pipe_in)

    def _read(self, link: _Link, pipe: _Pipe) -> None:
        try:
            data = pipe.src.recv(READ_SIZE)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # reset by that side: reset the other
            self._drop(link, reset=True)
            return
        if not data:
            pipe.eof = True
            return
        if self._mode == "blackhole":
            self._dropped += len(data)
            link.lost = True
            return
        pipe.queue.append([time.monotonic() + self._delay, data])
        pipe.queued += len(data)

    def _flush(self, link: _Link) -> None:
        """Write what is due on both directions of ``link``; pass FINs on."""
        now = time.monotonic()
        for pipe in (link.up, link.down):
            if link.closed or (pipe is link.up and not link.connected):
                continue
            drip = self._drip if pipe is link.down else None
            while pipe.queue and not pipe.blocked:
                entry = pipe.queue[0]
                if entry[0] > now or (drip and now < pipe.next_drip):
                    break
                data: bytes = entry[1]
                try:
                    n = pipe.dst.send(data[:1] if drip else data)
                except (BlockingIOError, InterruptedError):
                    pipe.blocked = True
                    break
                except OSError:
                    self._drop(link, reset=True)
                    return
                if pipe is link.up:
                    self._to_server += n
                else:
                    self._to_client += n
                pipe.queued -= n
                if n < len(data):
                    entry[1] = data[n:]
                else:
                    pipe.queue.popleft()
                if drip:
                    pipe.next_drip = now + drip
                    break
            if pipe.eof and not pipe.queue and not pipe.shut:
                pipe.shut = True
                with contextlib.suppress(OSError):
                    pipe.dst.shutdown(socket.SHUT_WR)
        if not link.closed and link.up.shut and link.down.shut:
            self._drop(link, reset=False)

    def _drop(self, link: _Link, *, reset: bool) -> None:
        """Close both sockets of ``link``: with a RST (``reset``) or quietly."""
        if link.closed:
            return
        link.closed = True
        for side, sock in (("client", link.client), ("server", link.server)):
            if link.masks[side]:
                self._sel.unregister(sock)
                link.masks[side] = 0
            if reset:
                abort(sock)
            else:
                sock.close()
        self._links.remove(link)
