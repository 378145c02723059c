"""Fake memcached nodes and a fake clock, plugged in at the transport seam.

* :class:`FakeClock` — ``monotonic()`` and ``time()`` that move only when a
  test calls :meth:`FakeClock.advance`.
* :class:`FakeMemcached` — one node's state, shared by every client of a
  :class:`FakeCluster`, with memcached's semantics for everything the client
  uses (CAS tokens, TTLs against the fake clock, ``NOT_STORED``/``EXISTS``/
  ``NOT_FOUND``, ``incr`` padding, the item size limit) and four states:

  - up: answers;
  - dead: every call raises ``NodeUnavailable("connection failed: ...")``;
  - hung (SIGSTOP): every call raises ``NodeTimeout("timed out")``, and every
    write command is kept, as the kernel keeps it in the socket buffer, and
    applied when the node resumes;
  - restarted: up again, empty, with a new pid and uptime 0.

* :class:`FakeCluster` — ``n`` fake nodes and the ``_transport_factory`` that
  gives each client its own :class:`FakeTransport` to them
  (:class:`AsyncFakeTransport` for the asyncio face).

Like the real transport, the fakes raise memring errors only.
"""

from __future__ import annotations

import contextlib
import itertools
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memring import Client, Node, NodeState
from memring.client.transport import Ready
from memring.engine.versions import HybridClock
from memring.errors import NodeTimeout, NodeUnavailable, ServerError

__all__ = ["AsyncFakeTransport", "FakeClock", "FakeCluster", "FakeMemcached", "FakeTransport",
           "SingleFault"]

Item = tuple[bytes, int]

THIRTY_DAYS = 30 * 24 * 3600
#: memcached's default item size limit (-I 1m).
MAX_ITEM_SIZE = 1024 * 1024
#: Bytes of memcached's item header counted against the limit.
ITEM_HEADER = 56
MAX_KEY_LENGTH = 250
VERSION = b"1.6.18"

#: Commands that change data: kept while the node is hung, applied on resume.
WRITES = frozenset({
    "set", "set_many", "add", "replace", "append", "prepend", "cas", "delete",
    "delete_many", "incr", "decr", "touch", "touch_flags", "flush_all",
})

_pids = itertools.count(4000)


class FakeClock:
    """A clock for ``Client(_clock=...)``: both readings move only on :meth:`advance`."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self._lock = threading.Lock()
        self._mono = 1000.0
        self._offset = start - self._mono

    def monotonic(self) -> float:
        return self._mono

    def time(self) -> float:
        return self._mono + self._offset

    def advance(self, seconds: float) -> None:
        if seconds < 0:
            raise ValueError("time only moves forward")
        with self._lock:
            self._mono += seconds


@dataclass
class _Entry:
    data: bytes
    flags: int
    exptime: int  # absolute Unix second, 0 = never
    cas: int
    stored_at: int


class FakeMemcached:
    """One fake memcached node. Thread-safe; shared by all clients of a cluster."""

    def __init__(self, node: Node, clock: FakeClock, *, timeout_cost: float = 0.0,
                 max_item_size: int = MAX_ITEM_SIZE) -> None:
        self.node = node
        self.clock = clock
        self.timeout_cost = timeout_cost
        self.max_item_size = max_item_size
        self.state = "up"
        self._lock = threading.RLock()
        self._items: dict[bytes, _Entry] = {}
        self._cas_ids = itertools.count(1)
        self._pending: list[tuple[str, tuple[Any, ...]]] = []
        self._hooks: list[tuple[str, bytes | None, Callable[[], None]]] = []
        self._flush_at: int | None = None
        self.pid = next(_pids)
        self.started = self._now() - 3600  # up for an hour when the test begins
        self.calls: dict[str, int] = {}

    # -- faults -------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL: refused connections; data and buffered writes are gone."""
        with self._lock:
            self.state = "dead"
            self._pending.clear()
            self._items.clear()

    def hang(self) -> None:
        """SIGSTOP: nothing answers; writes sent now are applied on :meth:`resume`."""
        with self._lock:
            if self.state != "up":
                raise RuntimeError(f"cannot hang a {self.state} node")
            self.state = "hung"

    def resume(self) -> None:
        """SIGCONT: apply the writes that arrived while hung, in order, then answer again."""
        with self._lock:
            if self.state != "hung":
                raise RuntimeError(f"cannot resume a {self.state} node")
            pending, self._pending = self._pending, []
            for method, args in pending:
                with contextlib.suppress(ServerError):  # its reply goes to a closed socket
                    getattr(self, "_" + method)(*args)
            self.state = "up"

    def restart(self) -> None:
        """Kill (if running) and start again on the same address: empty, with a new pid."""
        with self._lock:
            self._pending.clear()
            self._items.clear()
            self._flush_at = None
            self.pid = next(_pids)
            self.started = self._now()
            self.state = "up"

    # -- test helpers -----------------------------------------------------------
    def before(self, method: str, fn: Callable[[], None], key: bytes | None = None) -> None:
        """Run ``fn`` once, just before the next ``method`` call (on ``key``, if given)."""
        with self._lock:
            self._hooks.append((method, key, fn))

    def peek(self, key: bytes) -> Item | None:
        """The live raw item under ``key``, bypassing the node's state."""
        with self._lock:
            e = self._live(key)
            return None if e is None else (e.data, e.flags)

    def keys(self) -> list[bytes]:
        with self._lock:
            return [k for k in list(self._items) if self._live(k) is not None]

    @property
    def pending_writes(self) -> int:
        return len(self._pending)

    # -- the wire -----------------------------------------------------------
    def call(self, method: str, key: object, *args: Any) -> Any:
        hook = self._take_hook(method, args)
        if hook is not None:
            hook()
        with self._lock:
            self.calls[method] = self.calls.get(method, 0) + 1
            if self.state == "dead":
                raise NodeUnavailable("connection failed: [Errno 111] Connection refused",
                                      node=self.node, key=key)
            if self.state == "hung":
                if method == "batch":
                    self._pending.extend((m, a) for m, a in args[0] if m in WRITES)
                elif method in WRITES:
                    self._pending.append((method, args))
            elif method == "batch":
                return [self._answer(m, a) for m, a in args[0]]
            else:
                return getattr(self, "_" + method)(*args)
        # hung: the caller waits out its read timeout
        if self.timeout_cost:
            self.clock.advance(self.timeout_cost)
        raise NodeTimeout("timed out", node=self.node, key=key)

    def _answer(self, method: str, args: tuple[Any, ...]) -> Any:
        """One command of a batch: its result, or the error line that answered it."""
        try:
            return getattr(self, "_" + method)(*args)
        except ServerError as exc:
            return exc

    def _take_hook(self, method: str, args: tuple[Any, ...]) -> Callable[[], None] | None:
        with self._lock:
            for i, (m, k, fn) in enumerate(self._hooks):
                if m != method:
                    continue
                if k is not None:
                    first = args[0] if args else None
                    keys = first if isinstance(first, (list, tuple, dict)) else [first]
                    if k not in keys:
                        continue
                del self._hooks[i]
                return fn
        return None

    # -- memcached semantics ------------------------------------------------------
    def _now(self) -> int:
        # memcached's clock ticks in whole seconds
        return int(self.clock.time())

    def _exptime(self, expire: int) -> int:
        """memcached's exptime argument as an absolute second (0 = never, -1 = expired)."""
        if expire == 0:
            return 0
        if expire < 0:
            return -1
        if expire > THIRTY_DAYS:
            return expire if expire > self.started else -1
        return self._now() + expire

    def _live(self, key: bytes) -> _Entry | None:
        e = self._items.get(key)
        if e is None:
            return None
        now = self._now()
        expired = e.exptime != 0 and e.exptime <= now
        flushed = self._flush_at is not None and self._flush_at <= now and (
            e.stored_at <= self._flush_at)
        if expired or flushed:
            del self._items[key]
            return None
        return e

    def _check_key(self, key: bytes) -> None:
        if not isinstance(key, bytes) or not key or len(key) > MAX_KEY_LENGTH or any(
                b <= 32 or b == 127 for b in key):
            raise ServerError(f"server error: CLIENT_ERROR bad key {key!r}", node=self.node,
                              key=key)

    def _store(self, key: bytes, item: Item, expire: int) -> None:
        data, flags = item
        if not isinstance(data, bytes) or not 0 <= flags < 1 << 32:
            raise ServerError("server error: CLIENT_ERROR bad data chunk", node=self.node,
                              key=key)
        if len(key) + len(data) + ITEM_HEADER > self.max_item_size:
            raise ServerError("server error: SERVER_ERROR object too large for cache",
                              node=self.node, key=key)
        self._items[key] = _Entry(data, flags, self._exptime(expire), next(self._cas_ids),
                                  self._now())

    def _get_many(self, keys: Sequence[bytes]) -> dict[bytes, Item]:
        out = {}
        for k in keys:
            self._check_key(k)
            e = self._live(k)
            if e is not None:
                out[k] = (e.data, e.flags)
        return out

    def _gets_many(self, keys: Sequence[bytes]) -> dict[bytes, tuple[Item, bytes]]:
        out = {}
        for k in keys:
            self._check_key(k)
            e = self._live(k)
            if e is not None:
                out[k] = ((e.data, e.flags), str(e.cas).encode())
        return out

    def _get(self, key: bytes) -> Item | None:
        return self._get_many([key]).get(key)

    def _meta_many(self, keys: Sequence[bytes]) -> dict[bytes, tuple[Item, bytes, int]]:
        out = {}
        now = self._now()
        for k in keys:
            self._check_key(k)
            e = self._live(k)
            if e is not None:
                ttl = -1 if e.exptime == 0 else max(e.exptime - now, 0)
                out[k] = ((e.data, e.flags), str(e.cas).encode(), ttl)
        return out

    def _touch_flags(self, key: bytes, expire: int) -> int | None:
        self._check_key(key)
        e = self._live(key)
        if e is None:
            return None
        e.exptime = self._exptime(expire)
        return e.flags

    def _cache_memlimit(self, megabytes: int) -> bool:
        return True

    def _set(self, key: bytes, item: Item, expire: int) -> bool:
        self._check_key(key)
        try:
            self._store(key, item, expire)
        except ServerError:
            self._items.pop(key, None)  # memcached unlinks the old item of a failed set
            raise
        return True

    def _set_many(self, items: Mapping[bytes, Item], expire: int) -> list[bytes]:
        for k, item in items.items():
            self._set(k, item, expire)
        return []

    def _add(self, key: bytes, item: Item, expire: int) -> bool:
        self._check_key(key)
        if self._live(key) is not None:
            return False
        self._store(key, item, expire)
        return True

    def _replace(self, key: bytes, item: Item, expire: int) -> bool:
        self._check_key(key)
        if self._live(key) is None:
            return False
        self._store(key, item, expire)
        return True

    def _concat(self, key: bytes, data: bytes, append: bool) -> bool:
        self._check_key(key)
        e = self._live(key)
        if e is None:
            return False
        joined = e.data + data if append else data + e.data
        if len(key) + len(joined) + ITEM_HEADER > self.max_item_size:
            raise ServerError("server error: SERVER_ERROR out of memory storing object",
                              node=self.node, key=key)
        e.data = joined
        e.cas = next(self._cas_ids)
        return True

    def _append(self, key: bytes, data: bytes) -> bool:
        return self._concat(key, data, True)

    def _prepend(self, key: bytes, data: bytes) -> bool:
        return self._concat(key, data, False)

    def _cas(self, key: bytes, item: Item, cas: bytes, expire: int) -> bool | None:
        self._check_key(key)
        e = self._live(key)
        if e is None:
            return None
        if str(e.cas).encode() != cas:
            return False
        self._store(key, item, expire)
        return True

    def _delete(self, key: bytes) -> bool:
        self._check_key(key)
        if self._live(key) is None:
            return False
        del self._items[key]
        return True

    def _delete_many(self, keys: Sequence[bytes]) -> None:
        for k in keys:
            self._delete(k)

    def _delta(self, key: bytes, delta: int, incr: bool) -> int | None:
        self._check_key(key)
        e = self._live(key)
        if e is None:
            return None
        text = e.data.rstrip(b" ")
        if not text.isdigit() or len(text) > 20 or int(text) >= 1 << 64:
            raise ServerError("server error: CLIENT_ERROR cannot increment or decrement "
                              "non-numeric value", node=self.node, key=key)
        n = (int(text) + delta) % (1 << 64) if incr else max(0, int(text) - delta)
        new = str(n).encode()
        if len(new) < len(e.data):  # memcached rewrites in place, padding with spaces
            new = new.ljust(len(e.data), b" ")
        e.data = new
        e.cas = next(self._cas_ids)
        return n

    def _incr(self, key: bytes, delta: int) -> int | None:
        return self._delta(key, delta, True)

    def _decr(self, key: bytes, delta: int) -> int | None:
        return self._delta(key, delta, False)

    def _touch(self, key: bytes, expire: int) -> bool:
        self._check_key(key)
        e = self._live(key)
        if e is None:
            return False
        e.exptime = self._exptime(expire)
        return True

    def _stats(self, *args: str) -> dict[bytes, Any]:
        now = self._now()
        return {
            b"pid": self.pid, b"uptime": now - self.started, b"time": now,
            b"version": VERSION, b"curr_items": len(self.keys()),
        }

    def _version(self) -> bytes:
        return VERSION

    def _dump_keys(self) -> list[bytes]:
        return self.keys()

    def _flush_all(self, delay: int) -> bool:
        if delay <= 0:
            self._items.clear()
            self._flush_at = None
        else:
            self._flush_at = self._now() + delay
        return True


class FakeTransport:
    """One client's connection to a :class:`FakeMemcached` (a ``NodeTransport``)."""

    def __init__(self, server: FakeMemcached) -> None:
        self.server = server
        self.node = server.node
        self.closed = False
        self.on_reconnect = None
        #: A fault of this one client's link to the node, that other clients do not
        #: see: None, "cut" (requests are lost; every call times out) or "deaf"
        #: (requests arrive and are applied, replies are lost; every call times out).
        self.link: str | None = None

    def call(self, method: str, *args: Any) -> Any:
        if method == "quit":  # the client's own connections: nothing reaches the node
            return None
        first = args[0] if args else None
        key = list(first) if isinstance(first, (dict, list, tuple)) else first
        if method == "batch":
            key = None
        if self.link is not None:
            if self.link == "deaf":
                with contextlib.suppress(NodeUnavailable, ServerError):
                    self.server.call(method, key, *args)
            if self.server.timeout_cost:
                self.server.clock.advance(self.server.timeout_cost)
            raise NodeTimeout("timed out", node=self.node, key=key)
        return self.server.call(method, key, *args)

    def send(self, method: str, *args: Any) -> Ready:
        """The call, made now (the fake server answers at once)."""
        return Ready.of(self.call, method, *args)

    def get(self, key: bytes) -> Item | None:
        item: Item | None = self.call("get_many", [key]).get(key)
        return item

    def set(self, key: bytes, item: Item, expire: int) -> bool:
        return bool(self.call("set", key, item, expire))

    def close(self) -> None:
        self.closed = True

    def after_fork(self) -> None:
        pass


class _AsyncReady:
    """A reply already in hand, awaited as the async transport's replies are."""

    __slots__ = ("_ready",)

    def __init__(self, ready: Ready) -> None:
        self._ready = ready

    async def result(self) -> Any:
        return self._ready.result()

    def abandon(self) -> None:
        pass


class AsyncFakeTransport(FakeTransport):
    """:class:`FakeTransport` at the async transport's seam: the same fake node and link
    faults, with ``async`` methods (that never suspend: the fake answers at once)."""

    async def call(self, method: str, *args: Any) -> Any:  # type: ignore[override]
        return FakeTransport.call(self, method, *args)

    def send(self, method: str, *args: Any) -> _AsyncReady:  # type: ignore[override]
        return _AsyncReady(Ready.of(FakeTransport.call, self, method, *args))

    async def get(self, key: bytes) -> Item | None:  # type: ignore[override]
        item: Item | None = FakeTransport.call(self, "get_many", [key]).get(key)
        return item

    async def set(self, key: bytes, item: Item, expire: int) -> bool:  # type: ignore[override]
        return bool(FakeTransport.call(self, "set", key, item, expire))


class FakeCluster:
    """``n`` fake nodes on made-up addresses; pass :meth:`transport_factory` to clients.

    >>> clock = FakeClock()
    >>> cluster = FakeCluster(4, clock)
    >>> client = Client(cluster.servers, _transport_factory=cluster.transport_factory,
    ...                 _clock=clock, _background=False)  # doctest: +SKIP
    """

    def __init__(self, n: int, clock: FakeClock, *, timeout_cost: float = 0.0) -> None:
        self.clock = clock
        #: Versions for the cluster's clients, from the fake clock: what a version
        #: says of time (a warming node's trust, a copy's age) moves with the test.
        self.hlc = HybridClock(lambda: int(clock.time() * 1000))
        self.nodes = [Node(f"10.0.0.{i + 1}", 11211) for i in range(n)]
        self.servers = {node: FakeMemcached(node, clock, timeout_cost=timeout_cost)
                        for node in self.nodes}
        self.transports: list[FakeTransport] = []

    def transport_factory(self, node: Node) -> FakeTransport:
        t = FakeTransport(self.servers[node])
        self.transports.append(t)
        return t

    def async_transport_factory(self, node: Node) -> AsyncFakeTransport:
        """:meth:`transport_factory` for the asyncio face."""
        t = AsyncFakeTransport(self.servers[node])
        self.transports.append(t)
        return t

    def __getitem__(self, node: Node) -> FakeMemcached:
        return self.servers[node]

    def __len__(self) -> int:
        return len(self.nodes)


def tick(clock: FakeClock, clients: Sequence[Client], seconds: float, step: float) -> None:
    """Let ``seconds`` pass in steps of ``step``, every client running its due probes
    after each step, as its background prober would."""
    while seconds > 1e-9:
        dt = min(step, seconds)
        clock.advance(dt)
        seconds -= dt
        for c in clients:
            c._tick()


class SingleFault:
    """What the Invariant S state machines share: one fault at a time (a node's,
    or one client's link to a node), and reads checked against a key's model.

    Put it before ``RuleBasedStateMachine`` among the bases; the subclass
    adds its own model of the keys.
    """

    def __init__(self, nodes: int, clients: int, timeout_cost: float,
                 make_client: Callable[[FakeCluster, FakeClock], Client]) -> None:
        super().__init__()
        self.clock = FakeClock()
        self.cluster = FakeCluster(nodes, self.clock, timeout_cost=timeout_cost)
        self.clients = [make_client(self.cluster, self.clock) for _ in range(clients)]
        self.values = itertools.count()
        self.faulty: Node | None = None
        #: A fault only one client sees: (that client, the node), or None.
        self.link: tuple[int, Node] | None = None

    def teardown(self) -> None:
        for c in self.clients:
            c.close()

    def _value(self, key: str) -> str:
        """A value never written before."""
        return f"{key}={next(self.values)}"

    def _deadline(self, expire: int) -> float | None:
        return None if expire == 0 else self.clock.time() + expire

    @staticmethod
    def sees_down(c: Client, node: Node) -> bool:
        return c._engine.health.state(node) is NodeState.DOWN

    def may_fault(self, node: Node) -> bool:
        """Single faults: nothing is faulty, and no client still sees another node down."""
        return self.faulty is None and self.link is None and not any(
            self.sees_down(c, n) for c in self.clients for n in self.cluster.nodes if n != node)

    def cut_link(self, who: int, node: Node, how: str) -> bool:
        """Client ``who`` alone loses ``node`` ("cut" or "deaf", see FakeTransport.link)."""
        if not self.may_fault(node):
            return False
        self.link = (who, node)
        self.clients[who]._transports[node].link = how
        return True

    def heal_link(self) -> None:
        assert self.link is not None
        who, node = self.link
        self.clients[who]._transports[node].link = None
        self.link = None

    def observe(self) -> None:
        """Every client that has not yet had a call fail on the faulty node gets one."""
        assert self.faulty is not None
        for c in self.clients:
            if not self.sees_down(c, self.faulty):
                c.stats()  # a call to every node it does not know to be down
            assert self.sees_down(c, self.faulty)

    def shadowed(self, got: object, allowed: Mapping[object, float | None],
                 shadow: Mapping[str, float | None]) -> bool:
        """The README's limit: a value overwritten while clients saw a fault
        differently (``shadow``: value -> its own expiry) may come back once every
        newer value has expired, since memcached leaves no trace of an expired item."""
        now = self.clock.time()
        if str(got) not in shadow or not all(d is not None and d < now for d in allowed.values()):
            return False
        deadline = shadow[str(got)]
        return deadline is None or now <= deadline

    def check_value(self, who: int, key: str, got: object,
                    allowed: Mapping[object, float | None], gone: Mapping[str, str]) -> None:
        """``got`` (not a miss) must be a value ``key`` may hold now: one of
        ``allowed`` (value -> expiry deadline or None), not yet expired."""
        if got in allowed:
            deadline = allowed[got]
            assert deadline is None or self.clock.time() <= deadline, (
                f"client {who} read {key!r} = {got!r} after it expired")
            return
        why = gone.get(str(got), "never written")
        kind = "resurrected delete" if why == "deleted" else "stale read"
        raise AssertionError(
            f"{kind}: client {who} read {key!r} = {got!r} ({why}); "
            f"allowed: {sorted(map(str, allowed))} or a miss")
