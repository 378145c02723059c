"""The public single-copy client: ring routing, failover and Invariant S.

Routing of one key, by the state of its home node (see
:mod:`memring.client.health`):

* **UP** — every call goes to the home node only. No extra round trip.
* **DOWN** — never contacted. With ``Failover("next")`` the key lives on its
  *failover node*: the first node after home in its preference list that is
  not down (every client computes the same one). Writes there are *copies*
  whose life is capped at ``failover_ttl``; deletes leave *tombstones*;
  the client remembers the key (a *hint*) to move it home later. While the
  node stays down, the client gives its copies their full life again every
  ``failover_ttl / 3`` seconds, so none expires in a long outage (a copy
  whose own value expired stays, and reads as a tombstone).
* **WARMING** — the home node is back but may hold values older than the
  outage writes (it hung), or nothing (it restarted). For ``failover_ttl``
  seconds (+ a margin) reads ask the failover node first: a copy or a
  tombstone there wins. Before any write, the key is *settled*: the copy is
  moved home with CAS and replaced by a "settled" marker with CAS, so no
  race with another client can put an older value back. Right after the
  node returns, each client settles the keys it hinted (hinted handoff), so
  a restarted node gets its outage-time keys back.

After the window no copy can exist, so the home node alone is right again:
this is Invariant S (no stale reads, no resurrected deletes). See the README
for its costs and limits.
"""

from __future__ import annotations

import logging
import ssl
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar

from memring.client import copies, defaults, mutations
from memring.client.copies import Kind
from memring.client.health import (
    Clock,
    HealthMonitor,
    NodeHealth,
    NodeState,
    NodeStatus,
    SystemClock,
)
from memring.client.keys import encode_key, encode_keys
from memring.client.policies import Failover, HealthPolicy, Timeouts
from memring.client.serde import RESERVED_FLAGS, Serde, safe_serde
from memring.client.transport import Item, NodeTransport, PymemcacheTransport
from memring.errors import (
    ClusterError,
    ConfigError,
    MemringError,
    MultiKeyError,
    NodeTimeout,
    NodeUnavailable,
    SerializationError,
    ServerError,
    ValueTooLarge,
)
from memring.hashring import DEFAULT_VNODES, HashRing, Node
from memring.hashring.node import NodeSpec

__all__ = ["Client"]

log = logging.getLogger("memring")

T = TypeVar("T")
TransportFactory = Callable[[Node], NodeTransport]

#: memcached's per-item bookkeeping (header, CAS, suffix) plus a copy's
#: 8-byte expiry; with the key it counts against the item size limit.
ITEM_OVERHEAD = 96
#: Attempts of a CAS loop (settle, or an emulated op on a failover node)
#: before it gives up under contention.
CAS_ATTEMPTS = 8
_MISSING = object()
_PYMEMCACHE_IGNORED = {"allow_unicode_keys", "use_pooling", "encoding", "no_delay"}


class Client:
    """A Memcached cluster client with pymemcache's API.

    >>> client = Client(["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"])  # doctest: +SKIP
    >>> client.set("session:42", {"user": 7}, expire=1800)                         # doctest: +SKIP
    True

    ``servers`` are ``"host:port[:weight]"`` strings, ``(host, port)`` tuples
    or :class:`~memring.Node` objects. Everything else is keyword-only:

    failover
        ``Failover("next")`` (default) or ``Failover("fail")``, or the
        strings ``"next"``/``"fail"``.
    timeouts
        :class:`Timeouts`; default connect 0.5 s, read 1.0 s.
    health
        :class:`HealthPolicy`: when a node is down, how it is probed.
    serde
        pymemcache serde; the default stores bytes/str/int/JSON, never pickle.
    key_prefix
        Prepended to every key; the prefixed key is what gets routed.
    hash, vnodes
        Ring placement: ``"murmur3"`` (default) or ``"ketama"`` (placement
        compatible with libmemcached and twemproxy).
    max_item_size
        memcached's item size limit (its ``-I``, 1 MiB by default). A value
        that cannot fit raises :class:`ValueTooLarge` before any I/O.
    max_pool_size, tls_context
        Passed to pymemcache's connection pools.

    pymemcache ``HashClient`` keyword arguments are accepted too, so code and
    frameworks written for it work unchanged: ``connect_timeout``,
    ``timeout``, ``ignore_exc`` (= ``Failover("fail", return_default=True)``),
    ``default_noreply``, ``allow_unicode_keys``, ``use_pooling``, ``encoding``,
    ``no_delay``.

    Every write waits for the server's reply: a call that returns without
    error has stored its data. ``noreply=True`` is accepted and makes
    store commands return True, as in pymemcache, but the reply is still
    awaited.
    """

    def __init__(
        self,
        servers: Iterable[NodeSpec] | str,
        *,
        failover: Failover | str = defaults.FAILOVER_MODE,
        timeouts: Timeouts | None = None,
        health: HealthPolicy | None = None,
        serde: Serde | None = None,
        key_prefix: bytes | str = b"",
        hash: str = defaults.HASH,
        vnodes: int = DEFAULT_VNODES,
        max_item_size: int = defaults.MAX_VALUE_SIZE,
        max_pool_size: int | None = defaults.MAX_POOL_SIZE,
        tls_context: ssl.SSLContext | None = None,
        _transport_factory: TransportFactory | None = None,
        _clock: Clock | None = None,
        _background: bool = True,
        **pymemcache_options: Any,
    ) -> None:
        failover, timeouts, self._default_noreply = _pymemcache_compat(
            failover, timeouts, pymemcache_options)
        self._failover = Failover.coerce(failover)
        self._timeouts = timeouts or Timeouts()
        self._health_policy = health or HealthPolicy()
        if not isinstance(self._health_policy, HealthPolicy):
            raise ConfigError("health must be a HealthPolicy")
        slowest_probe = self._health_policy.backoff_max * (1 + self._health_policy.jitter)
        if self._failover.mode == "next" and slowest_probe >= self._failover.warming_seconds:
            # Clients learn of a return at their own next probe; one that
            # still routes to the failover node after another client's
            # warming window has ended could read an old value at home.
            raise ConfigError(
                f"HealthPolicy.backoff_max (with jitter, {slowest_probe:g}s) must be shorter "
                f"than the warming window, failover_ttl + margin "
                f"({self._failover.warming_seconds:g}s)")
        self._serde: Serde = serde or safe_serde
        if isinstance(key_prefix, str):
            key_prefix = key_prefix.encode("utf-8")
        if not isinstance(key_prefix, bytes):
            raise ConfigError("key_prefix must be str or bytes")
        self._prefix = key_prefix
        if key_prefix:
            encode_key(key_prefix)  # the prefix alone must be a valid key
        if isinstance(max_item_size, bool) or not isinstance(max_item_size, int) or (
                max_item_size <= ITEM_OVERHEAD):
            raise ConfigError(f"max_item_size must be an int > {ITEM_OVERHEAD}")
        self._max_item_size = max_item_size
        self._ring = HashRing(
            servers.split(",") if isinstance(servers, str) else servers,
            hash=hash, vnodes=vnodes,
        )
        if not len(self._ring):
            raise ConfigError("at least one server is needed")
        self._clock: Clock = _clock or SystemClock()
        if _transport_factory is None:
            def _transport_factory(node: Node) -> NodeTransport:
                return PymemcacheTransport(node, timeouts=self._timeouts,
                                           max_pool_size=max_pool_size, tls_context=tls_context)
        self._transports: dict[Node, NodeTransport] = {
            node: _transport_factory(node) for node in self._ring.nodes}
        self._background = _background
        self._health = HealthMonitor(
            self._transports, policy=self._health_policy, failover=self._failover,
            clock=self._clock, on_return=self._on_return, on_restart=self._on_restart,
            background=_background,
            on_down=self._keepalive, down_interval=self._failover.keepalive_seconds,
        )
        for transport in self._transports.values():
            if hasattr(transport, "on_reconnect"):
                transport.on_reconnect = self._health.note_reconnect
        #: Each node's transport and health record: the fast path of a call
        #: whose home node is up finds both with one lookup.
        self._homes: dict[Node, tuple[NodeTransport, NodeHealth]] = {
            node: (t, self._health.record(node)) for node, t in self._transports.items()}
        self._hints: dict[Node, dict[bytes, None]] = defaultdict(dict)
        self._hints_lock = threading.Lock()
        self._counters: dict[str, int] = defaultdict(int)
        self._closed = False

    # ------------------------------------------------------------------
    # public introspection
    @property
    def ring(self) -> HashRing:
        return self._ring

    @property
    def failover(self) -> Failover:
        return self._failover

    @property
    def timeouts(self) -> Timeouts:
        return self._timeouts

    def health(self) -> dict[str, NodeStatus]:
        """Per-node state and counters, keyed by node label."""
        return {n.label: self._health.status(n) for n in self._ring.nodes}

    def metrics(self) -> dict[str, Any]:
        """Counters: per node (ops, errors, timeouts, failovers, state changes) and client-wide."""
        nodes = {}
        for label, s in self.health().items():
            nodes[label] = {
                "state": s.state.value, "ops": s.ops, "errors": s.errors,
                "timeouts": s.timeouts, "failovers": s.failovers,
                "state_changes": s.state_changes,
            }
        with self._hints_lock:
            pending = sum(len(h) for h in self._hints.values())
        return {"nodes": nodes, "hints_pending": pending, **self._counters}

    def route(self, key: str | bytes) -> Node:
        """The node a call for ``key`` would talk to now (home, or its failover node)."""
        kb = self._key(key)
        home = self._ring.node_for(kb)
        if self._health.state(home) is NodeState.DOWN and self._failover.mode == "next":
            return self._failover_node(kb, home)
        return home

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({[n.label for n in self._ring.nodes]!r}, "
                f"failover={self._failover!r}, timeouts={self._timeouts!r})")

    # ------------------------------------------------------------------
    # plumbing
    def _key(self, key: str | bytes) -> bytes:
        return encode_key(key, self._prefix)

    def _serialize(self, kb: bytes, value: Any, flags: int | None = None) -> Item:
        data, serde_flags = self._serde.serialize(kb, value)
        if not isinstance(data, bytes):
            data = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if flags is None:
            flags = serde_flags
        if flags & RESERVED_FLAGS or not 0 <= flags < 1 << 32:
            raise SerializationError(f"flags {flags:#x} use bits reserved by memring (24-31)")
        size = len(data) + len(kb) + ITEM_OVERHEAD
        if size > self._max_item_size:
            raise ValueTooLarge(
                f"value of {len(data)} bytes does not fit the {self._max_item_size}-byte item "
                f"limit (key and overhead included)", key=kb, size=len(data),
                limit=self._max_item_size)
        return (data, flags)

    def _deserialize(self, kb: bytes, item: Item | None, default: Any) -> Any:
        if item is None:
            return default
        if item[1] & copies.MARKER_FLAGS:  # a copy or a marker (a plain value decodes as itself)
            kind, item, _ = copies.decode(item, self._clock.time())
            if kind is not Kind.VALUE:
                return default
        return self._serde.deserialize(kb[len(self._prefix):], item[0], item[1])

    def _collect(self, got: Mapping[bytes, Item], by_kb: Mapping[bytes, Any],
                 out: dict[Any, Any]) -> None:
        """Add one node's ``get_many`` reply to ``out``, deserialized, keyed as the caller's."""
        deserialize, cut = self._serde.deserialize, len(self._prefix)
        for kb, item in got.items():
            if item[1] & copies.MARKER_FLAGS:
                value = self._deserialize(kb, item, _MISSING)
                if value is _MISSING:
                    continue
            else:
                value = deserialize(kb[cut:], item[0], item[1])
            out[by_kb[kb]] = value

    def _unprefix(self, kb: bytes) -> bytes:
        return kb[len(self._prefix):] if self._prefix else kb

    def _call(self, node: Node, method: str, *args: Any) -> Any:
        """Call a transport method on ``node``, keeping its health up to date."""
        transport, health = self._homes[node]
        try:
            result = getattr(transport, method)(*args)
        except MemringError as exc:
            self._health.record_failure(node, exc)
            raise
        health.succeeded()
        return result

    def _failed(self, node: Node, exc: MemringError) -> NodeUnavailable:
        """Count a failed call on ``node``; return ``exc`` if another node
        may take the call (the node is unavailable), else raise it."""
        self._health.record_failure(node, exc)
        if isinstance(exc, NodeUnavailable):
            return exc
        raise exc

    def _failover_node(self, kb: bytes, home: Node) -> Node:
        for node in self._ring.nodes_for(kb, len(self._ring))[1:]:
            if not self._health.is_down(node):
                return node
        raise ClusterError(f"no live node can take key {kb!r}: all {len(self._ring)} are down")

    def _unavailable(self, exc: NodeUnavailable, default: T) -> T:
        if self._failover.return_default:
            self._counters["defaults_returned"] += 1
            return default
        raise exc

    def _single(
        self,
        kb: bytes,
        default: Any,
        up: Callable[[Node], Any],
        down: Callable[[Node, Node], Any],
        warm: Callable[[Node, Node], Any],
        failed: NodeUnavailable | None = None,
    ) -> Any:
        """Run one single-key operation wherever the key lives now.

        ``failed``: the caller already ran ``up`` on the key's home node
        (its fast path for an up node, without building these callbacks)
        and it raised this.
        """
        home = self._ring.node_for(kb)
        state = self._health.state(home)
        if failed is None and state is NodeState.UP:
            try:
                return up(home)
            except NodeUnavailable as exc:
                failed = exc
        if failed is not None:
            if self._failover.mode == "fail" or not self._health.is_down(home):
                return self._unavailable(failed, default)
        elif state is NodeState.DOWN and self._failover.mode == "fail":
            return self._unavailable(
                NodeUnavailable("node is down", node=home, key=kb), default)
        last: NodeUnavailable | None = None
        for _ in range(len(self._ring)):
            state = self._health.state(home)
            try:
                if state is NodeState.UP:
                    return up(home)
                f = self._failover_node(kb, home)
                if state is NodeState.DOWN:
                    self._health.record_failover(home)
                    return down(f, home)
                return warm(home, f)
            except NodeUnavailable as exc:
                last = exc
                if exc.node is not None and not self._health.is_down(exc.node):
                    raise
        assert last is not None
        raise last

    # -- hints and settling (Invariant S) --------------------------------
    def _hint(self, home: Node, kb: bytes) -> None:
        with self._hints_lock:
            hints = self._hints[home]
            if kb in hints or len(hints) < defaults.MAX_HINTS_PER_NODE:
                hints[kb] = None
                return
            self._counters["hints_dropped"] += 1
            if self._counters["hints_dropped"] == 1:
                log.warning("hint log for %s is full: keys written during this outage beyond "
                            "%d will not be moved home", home.label, defaults.MAX_HINTS_PER_NODE)

    def _on_return(self, node: Node, restarted: bool | None) -> None:
        if self._failover.mode != "next":
            return
        with self._hints_lock:
            hints = self._hints.pop(node, {})
        if not hints:
            return
        if self._background:
            threading.Thread(target=self._handoff, args=(node, list(hints)),
                             name="memring-handoff", daemon=True).start()
        else:
            self._handoff(node, list(hints))

    def _on_restart(self, node: Node) -> None:
        """``node`` restarted between two calls, never seen down: it just lost its keys.

        The single-copy client has nothing to move (no copy was written
        elsewhere); BackupClient rebuilds the lost copies.
        """

    def _handoff(self, home: Node, keys: list[bytes]) -> None:
        """Settle every key this client wrote to a failover node while ``home`` was down."""
        moved = failed = 0
        for kb in keys:
            if self._closed:
                return
            if self._health.state(home) is not NodeState.WARMING:
                with self._hints_lock:  # down again (or window over): keep for next time
                    for k in keys[moved:]:
                        self._hints[home].setdefault(k, None)
                return
            try:
                self._settle(kb, home, self._failover_node(kb, home))
            except MemringError as exc:
                log.warning("handoff of %r to %s failed: %s", kb, home.label, exc)
                failed += 1
                with self._hints_lock:  # its copy is still out there: keep the hint
                    self._hints[home].setdefault(kb, None)
            moved += 1
        self._counters["handoff_keys"] += moved - failed
        log.info("handoff to %s: %d keys settled, %d kept for later", home.label,
                 moved - failed, failed)

    def _keepalive(self, home: Node) -> None:
        """While ``home`` is down, give this client's copies of its keys their full TTL again.

        A copy lives ``failover_ttl`` seconds, so that none outlives the
        warming window after its home returns; an outage may last longer.
        Without this, its copies and tombstones would expire while the home
        node still holds older values, and those would be read again when it
        returns. A copy found gone (evicted, or refreshed too late) becomes a
        tombstone: its value is lost, and so must be the older one at home.
        """
        if self._failover.mode != "next":
            return
        with self._hints_lock:
            keys = list(self._hints.get(home, ()))
        ttl = self._failover.failover_ttl
        for kb in keys:
            if self._closed or not self._health.is_down(home):
                return
            try:
                f = self._failover_node(kb, home)
                if not self._call(f, "touch", kb, ttl):
                    self._call(f, "add", kb, copies.TOMBSTONE, ttl)
            except MemringError as exc:
                log.warning("keeping the copy of %r alive failed: %s", kb, exc)
                return

    def _settle(self, kb: bytes, home: Node, f: Node) -> None:
        """Make ``home`` authoritative for ``kb`` again (see the module docstring).

        Reads home before the copy, and swaps both with CAS, so that a
        concurrent writer (which settles first, then writes home) can never
        have its value replaced by the older copy.
        """
        for _ in range(CAS_ATTEMPTS):
            got = self._call(f, "gets_many", [kb]).get(kb)
            if got is None or got[0][1] & copies.FLAG_SETTLED:
                return  # the common case: nothing to move
            # Read home *before* the copy that is moved: had a writer settled
            # and written home since the read above, home's CAS token is new
            # and the copy read now is the settled marker.
            at_home = self._call(home, "gets_many", [kb]).get(kb)
            got = self._call(f, "gets_many", [kb]).get(kb)
            if got is None:
                return
            item, f_cas = got
            now = self._clock.time()
            kind, plain, abs_expiry = copies.decode(item, now)
            if kind is Kind.SETTLED:
                return
            if kind is Kind.VALUE:
                rel = copies.relative_expiry(abs_expiry, now)
                if rel < 0:
                    kind = Kind.TOMBSTONE
            if kind is Kind.VALUE:
                if at_home is None:
                    ok = self._call(home, "add", kb, plain, rel)
                else:
                    ok = self._call(home, "cas", kb, plain, at_home[1], rel)
            elif at_home is None or at_home[0][1] & copies.FLAG_TOMBSTONE:
                ok = True
            else:
                # A conditional delete: memcached has no "delete if unchanged",
                # so swap in a tombstone that vanishes within seconds.
                ok = self._call(home, "cas", kb, copies.TOMBSTONE, at_home[1],
                                copies.HOME_TOMBSTONE_TTL)
            if not ok:
                continue
            if self._call(f, "cas", kb, copies.SETTLED, f_cas,
                          self._failover.failover_ttl) is not False:
                self._counters["settled"] += 1
                return
        raise ServerError(f"could not settle {kb!r}: too much contention", node=home, key=kb)

    def _rmw(
        self, f: Node, home: Node, kb: bytes,
        mutate: Callable[[Kind | None, Item, int], tuple[Any, Item | None, int]],
    ) -> Any:
        """An atomic read-modify-write of a key's copy on its failover node (CAS loop)."""
        for _ in range(CAS_ATTEMPTS):
            got, (kind, plain, abs_expiry), now = self._fetch(f, kb)
            result, new_item, new_abs = mutate(kind, plain, abs_expiry)
            if new_item is None:
                return result
            rel = copies.copy_expiry(new_abs, now, self._failover.failover_ttl)
            stored = copies.encode_copy(new_item, new_abs)
            if rel < 0:  # expired at once: it is a delete
                stored, rel = copies.TOMBSTONE, self._failover.failover_ttl
            if got is None:
                ok = self._call(f, "add", kb, stored, rel)
            else:
                ok = self._call(f, "cas", kb, stored, got[1], rel)
            if ok:
                self._copied(home, f, kb)
                return result
        raise ServerError(f"too much contention on {kb!r} during failover", node=f, key=kb)

    def _fetch(self, node: Node, kb: bytes) -> tuple[
            tuple[Item, bytes] | None, tuple[Kind | None, Item, int], float]:
        """``gets`` of one key: the raw reply, its decoded ``(kind, item, expiry)``, the time."""
        got = self._call(node, "gets_many", [kb]).get(kb)
        now = self._clock.time()
        if got is None:
            return None, (None, copies.TOMBSTONE, 0), now
        return got, copies.decode(got[0], now), now

    def _write_copy(self, f: Node, home: Node, kb: bytes, item: Item, expire: int) -> bool:
        now = self._clock.time()
        abs_expiry = copies.absolute_expiry(expire, now)
        rel = copies.copy_expiry(abs_expiry, now, self._failover.failover_ttl)
        if rel < 0:  # already expired: it is a delete
            return self._write_tombstone(f, home, kb)
        self._call(f, "set", kb, copies.encode_copy(item, abs_expiry), rel)
        self._copied(home, f, kb)
        return True

    def _write_tombstone(self, f: Node, home: Node, kb: bytes) -> bool:
        self._call(f, "set", kb, copies.TOMBSTONE, self._failover.failover_ttl)
        self._copied(home, f, kb)
        return True

    def _copied(self, home: Node, f: Node, kb: bytes) -> None:
        """Record that ``kb`` has a copy on ``f``; settle it now if ``home`` just returned.

        The hint is taken after the copy is written, and the state read after
        the hint: either the handoff takes this hint (and finds the copy), or
        home was back before the hint was recorded and this call settles it.
        """
        self._hint(home, kb)
        if self._health.state(home) is not NodeState.DOWN:
            self._settle(kb, home, f)

    # -- reads shared by get / get_many -----------------------------------
    def _read_warming(self, kb: bytes, home: Node, f: Node) -> Item | None:
        got = self._call(f, "get", kb)
        if got is not None:
            kind, plain, _ = copies.decode(got, self._clock.time())
            if kind is Kind.VALUE:
                return plain
            if kind is Kind.TOMBSTONE:
                return None
        item: Item | None = self._call(home, "get", kb)
        return item

    # ------------------------------------------------------------------
    # single-key API (pymemcache names, arguments and defaults)
    def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` on a miss."""
        kb = encode_key(key, self._prefix)
        home = self._ring.node_for(kb)
        transport, health = self._homes[home]
        failed: NodeUnavailable | None = None
        if health.state is NodeState.UP:  # the common case, without callbacks
            try:
                got = transport.get(kb)
            except MemringError as exc:
                failed = self._failed(home, exc)
            else:
                health.succeeded()
                return default if got is None else self._deserialize(kb, got, default)

        def up(h: Node) -> Item | None:
            item: Item | None = self._call(h, "get", kb)
            return item

        item = self._single(kb, _MISSING, up, lambda f, h: up(f),
                            lambda h, f: self._read_warming(kb, h, f), failed)
        return default if item is _MISSING else self._deserialize(kb, item, default)

    def gets(
        self, key: str | bytes, default: Any = None, cas_default: Any = None
    ) -> tuple[Any, Any]:
        """``(value, cas_token)``, or ``(default, cas_default)`` on a miss."""
        kb = self._key(key)

        def up(h: Node) -> Any:
            return self._call(h, "gets_many", [kb]).get(kb)

        def warm(h: Node, f: Node) -> Any:
            self._settle(kb, h, f)
            return up(h)

        got = self._single(kb, None, up, lambda f, h: up(f), warm)
        if got is None:
            return default, cas_default
        value = self._deserialize(kb, got[0], _MISSING)
        return (default, cas_default) if value is _MISSING else (value, got[1])

    def _store(self, kb: bytes, noreply: bool | None, up: Callable[[Node], Any],
               down: Callable[[Node, Node], Any], failed: NodeUnavailable | None = None) -> Any:
        def warm(h: Node, f: Node) -> Any:
            self._settle(kb, h, f)
            return up(h)

        result = self._single(kb, False, up, down, warm, failed)
        return self._replied(noreply, result)

    def _replied(self, noreply: bool | None, result: Any) -> Any:
        """What a store command returns: True with ``noreply`` (as pymemcache), else ``result``."""
        if noreply is None:
            noreply = self._default_noreply
        return True if noreply else result

    def set(self, key: str | bytes, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> bool:
        """Store ``value``. Returns True once the node has acknowledged it."""
        kb = encode_key(key, self._prefix)
        return self._set_item(kb, self._serialize(kb, value, flags), _check_expire(expire),
                              noreply)

    def _set_item(self, kb: bytes, item: Item, expire: int, noreply: bool | None) -> bool:
        home = self._ring.node_for(kb)
        transport, health = self._homes[home]
        failed: NodeUnavailable | None = None
        if health.state is NodeState.UP:  # the common case, without callbacks
            try:
                ok = transport.set(kb, item, expire)
            except MemringError as exc:
                failed = self._failed(home, exc)
            else:
                health.succeeded()
                return bool(self._replied(noreply, ok))
        return bool(self._store(
            kb, noreply, lambda h: self._call(h, "set", kb, item, expire),
            lambda f, h: self._write_copy(f, h, kb, item, expire), failed))

    def add(self, key: str | bytes, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> bool:
        """Store ``value`` only if ``key`` has no value. True if stored."""
        kb = self._key(key)
        item = self._serialize(kb, value, flags)
        expire = _check_expire(expire)

        def down(f: Node, h: Node) -> bool:
            now = self._clock.time()
            new_abs = copies.absolute_expiry(expire, now)
            return bool(self._rmw(f, h, kb, mutations.add(item, new_abs)))

        def up(h: Node) -> bool:
            if self._call(h, "add", kb, item, expire):
                return True
            # The key may hold a tombstone left by settling a delete: it is missing.
            got = self._call(h, "gets_many", [kb]).get(kb)
            if got is not None and got[0][1] & copies.FLAG_TOMBSTONE:
                return bool(self._call(h, "cas", kb, item, got[1], expire))
            return False

        return bool(self._store(kb, noreply, up, down))

    def replace(self, key: str | bytes, value: Any, expire: int = 0,
                noreply: bool | None = None, flags: int | None = None) -> bool:
        """Store ``value`` only if ``key`` has a value. True if stored."""
        kb = self._key(key)
        item = self._serialize(kb, value, flags)
        expire = _check_expire(expire)

        def down(f: Node, h: Node) -> bool:
            new_abs = copies.absolute_expiry(expire, self._clock.time())
            return bool(self._rmw(f, h, kb, mutations.replace(item, new_abs)))

        return bool(self._store(
            kb, noreply, lambda h: self._call(h, "replace", kb, item, expire), down))

    def _concat(self, key: str | bytes, value: Any, noreply: bool | None, method: str) -> bool:
        kb = self._key(key)
        data = self._concat_data(kb, value, method)

        def down(f: Node, h: Node) -> bool:
            return bool(self._rmw(f, h, kb, self._concat_mutation(kb, data, method)))

        return bool(self._store(kb, noreply, lambda h: self._call(h, method, kb, data), down))

    def _concat_data(self, kb: bytes, value: Any, method: str) -> bytes:
        """The bytes ``append``/``prepend`` send, checked against the item limit first."""
        if isinstance(value, str):
            data = value.encode("utf-8")
        elif isinstance(value, bytes):
            data = value
        else:
            data = self._serialize(kb, value)[0]
        if len(data) + len(kb) + ITEM_OVERHEAD > self._max_item_size:  # before any I/O
            raise ValueTooLarge(
                f"{method} of {len(data)} bytes cannot fit the {self._max_item_size}-byte item "
                f"limit (key and overhead included)", key=kb, size=len(data),
                limit=self._max_item_size)
        return data

    def _concat_mutation(self, kb: bytes, data: bytes, method: str) -> mutations.Mutation:
        return mutations.concat(data, method == "append",
                                lambda joined, flags: self._serialize(kb, joined, flags))

    def append(self, key: str | bytes, value: Any, expire: int = 0,
               noreply: bool | None = None, flags: int | None = None) -> bool:
        """Append bytes to an existing value (memcached ignores ``expire``/``flags``)."""
        return self._concat(key, value, noreply, "append")

    def prepend(self, key: str | bytes, value: Any, expire: int = 0,
                noreply: bool | None = None, flags: int | None = None) -> bool:
        """Prepend bytes to an existing value (memcached ignores ``expire``/``flags``)."""
        return self._concat(key, value, noreply, "prepend")

    def cas(self, key: str | bytes, value: Any, cas: Any, expire: int = 0,
            noreply: bool | None = False, flags: int | None = None) -> bool | None:
        """Store ``value`` if the key's CAS token is still ``cas``.

        True if stored, False if the value changed since ``gets``, None if
        the key is gone.
        """
        kb = self._key(key)
        item = self._serialize(kb, value, flags)
        expire = _check_expire(expire)
        token = _cas_token(cas)

        def down(f: Node, h: Node) -> bool | None:
            now = self._clock.time()
            abs_expiry = copies.absolute_expiry(expire, now)
            rel = copies.copy_expiry(abs_expiry, now, self._failover.failover_ttl)
            stored = copies.encode_copy(item, abs_expiry)
            if rel < 0:  # expired at once: it is a delete
                stored, rel = copies.TOMBSTONE, self._failover.failover_ttl
            ok: bool | None = self._call(f, "cas", kb, stored, token, rel)
            if ok:
                self._copied(h, f, kb)
            return ok

        def warm(h: Node, f: Node) -> bool | None:
            self._settle(kb, h, f)
            ok: bool | None = self._call(h, "cas", kb, item, token, expire)
            return ok

        result: bool | None = self._single(
            kb, False, lambda h: self._call(h, "cas", kb, item, token, expire), down, warm)
        return True if noreply else result

    def delete(self, key: str | bytes, noreply: bool | None = None) -> bool:
        """Delete ``key``. True if it was deleted (always True while failing over)."""
        kb = self._key(key)
        return bool(self._store(kb, noreply, lambda h: self._call(h, "delete", kb),
                                lambda f, h: self._write_tombstone(f, h, kb)))

    def _arith(self, key: str | bytes, value: int, incr: bool) -> int | None:
        mutations.check_delta(value)
        kb = self._key(key)
        method = "incr" if incr else "decr"

        def down(f: Node, h: Node) -> int | None:
            result: int | None = self._rmw(f, h, kb, mutations.arith(value, incr))
            return result

        def warm(h: Node, f: Node) -> int | None:
            self._settle(kb, h, f)
            result: int | None = self._call(h, method, kb, value)
            return result

        result: int | None = self._single(
            kb, None, lambda h: self._call(h, method, kb, value), down, warm)
        return result

    def incr(self, key: str | bytes, value: int, noreply: bool | None = False) -> int | None:
        """Add ``value`` to a numeric value; the new value, or None if the key is missing."""
        return self._arith(key, value, True)

    def decr(self, key: str | bytes, value: int, noreply: bool | None = False) -> int | None:
        """Subtract ``value`` (floored at 0); the new value, or None if the key is missing."""
        return self._arith(key, value, False)

    def touch(self, key: str | bytes, expire: int = 0, noreply: bool | None = None) -> bool:
        """Give ``key`` a new expiry. True if the key exists."""
        kb = self._key(key)
        expire = _check_expire(expire)

        def down(f: Node, h: Node) -> bool:
            new_abs = copies.absolute_expiry(expire, self._clock.time())
            return bool(self._rmw(f, h, kb, mutations.retouch(new_abs)))

        return bool(self._store(kb, noreply, lambda h: self._call(h, "touch", kb, expire), down))

    # ------------------------------------------------------------------
    # multi-key API: keys grouped by node, nodes called concurrently
    def _fan_out(self, calls: Sequence[tuple[Node, str, tuple[Any, ...]]]) -> list[Any]:
        """Run ``(node, method, args)`` calls on their nodes at once; each result or its error.

        Every request is written before any reply is read, so the nodes work
        concurrently while this thread waits for the first reply. Once one
        node has timed out, the others are not waited for beyond the same
        deadline: a call waits at most one read timeout for all its nodes.
        Every reply is read (so every connection goes back to its pool) before
        an error that is not a memring error is raised.
        """
        start = time.monotonic()
        homes = self._homes
        replies = [homes[node][0].send(method, *args) for node, method, args in calls]
        out: list[Any] = []
        deadline: float | None = None
        unexpected: Exception | None = None
        for (node, _, _), reply in zip(calls, replies, strict=True):
            try:
                result = reply.result(None if deadline is None else deadline - time.monotonic())
            except MemringError as exc:
                self._health.record_failure(node, exc)
                if isinstance(exc, NodeTimeout):
                    deadline = start + self._timeouts.read
                out.append(exc)
                continue
            except Exception as exc:  # e.g. max_pool_size reached
                unexpected = unexpected or exc
                continue
            homes[node][1].succeeded()
            out.append(result)
        if unexpected is not None:
            raise unexpected
        return out

    def _group(self, kbs: Iterable[bytes]) -> tuple[dict[Node, list[bytes]], list[bytes]]:
        """Keys whose home is up, by node; and the keys that need the failover path."""
        groups = self._ring.group(kbs)
        state = self._health.state
        other: list[bytes] = []
        for node in [n for n in groups if state(n) is not NodeState.UP]:
            other.extend(groups.pop(node))
        return groups, other

    def _one_by_one(self, call: Callable[[Any], Any], kbs: Iterable[bytes],
                    by_kb: Mapping[bytes, Any], out: dict[Any, Any],
                    failed: dict[bytes, Exception]) -> None:
        """``call(key)`` for each key a batched read left over, into ``out`` or ``failed``.

        ``call`` returns ``_MISSING`` for a key that has no value.
        """
        for kb in kbs:
            try:
                got = call(by_kb[kb])
            except MemringError as exc:
                failed[kb] = exc
                continue
            if got is not _MISSING:
                out[by_kb[kb]] = got

    def _get_or_missing(self, key: str | bytes) -> Any:
        return self.get(key, _MISSING)

    def _gets_or_missing(self, key: str | bytes) -> Any:
        value, token = self.gets(key, _MISSING)
        return _MISSING if value is _MISSING else (value, token)

    def _group_failure(self, node: Node, exc: MemringError, kbs: list[bytes],
                       retry: list[bytes], failed: dict[bytes, Exception]) -> None:
        if (isinstance(exc, NodeUnavailable) and self._failover.mode == "next"
                and self._health.is_down(node)):
            retry.extend(kbs)
        else:
            for kb in kbs:
                failed[kb] = exc

    def _finish_many(self, what: str, results: Any, failed: dict[bytes, Exception],
                     keys: Mapping[bytes, Any]) -> Any:
        if not failed:
            return results
        self._counters["multi_key_failures"] += len(failed)
        if self._failover.return_default:
            return results
        first = next(iter(failed.values()))
        raise MultiKeyError(
            f"{what}: {len(failed)} of {len(keys)} keys failed ({first})",
            results=results, failed={keys[kb]: e for kb, e in failed.items()})

    def get_many(self, keys: Iterable[str | bytes]) -> dict[Any, Any]:
        """The values of ``keys`` that have one, as a dict keyed like ``keys``."""
        by_kb = encode_keys(keys, self._prefix)
        if not by_kb:
            return {}
        groups, other = self._group(by_kb)
        out: dict[Any, Any] = {}
        failed: dict[bytes, Exception] = {}
        calls = [(node, "get_many", (kbs,)) for node, kbs in groups.items()]
        for (node, _, (kbs,)), got in zip(calls, self._fan_out(calls), strict=True):
            if isinstance(got, MemringError):
                self._group_failure(node, got, kbs, other, failed)
            else:
                self._collect(got, by_kb, out)
        if other:
            self._get_failed_over(other, by_kb, out, failed)
        result: dict[Any, Any] = self._finish_many("get_many", out, failed, by_kb)
        return result

    def _get_failed_over(self, kbs: list[bytes], by_kb: Mapping[bytes, Any],
                         out: dict[Any, Any], failed: dict[bytes, Exception]) -> None:
        """Read keys whose home is not up: one batch per failover node for down homes."""
        batches: dict[Node, list[bytes]] = defaultdict(list)
        slow: list[bytes] = []
        for kb in kbs:
            home = self._ring.node_for(kb)
            if self._failover.mode == "next" and self._health.is_down(home):
                try:
                    batches[self._failover_node(kb, home)].append(kb)
                except ClusterError as exc:
                    failed[kb] = exc
                    continue
                self._health.record_failover(home)
            else:  # warming (two reads each) or Failover("fail"): one key at a time
                slow.append(kb)
        calls = [(node, "get_many", (batch,)) for node, batch in batches.items()]
        for (_, _, (batch,)), got in zip(calls, self._fan_out(calls), strict=True):
            if isinstance(got, MemringError):
                slow.extend(batch)  # the failover node failed too: let get() walk on
                continue
            self._collect(got, by_kb, out)
        self._one_by_one(self._get_or_missing, slow, by_kb, out, failed)

    get_multi = get_many

    def gets_many(self, keys: Iterable[str | bytes]) -> dict[Any, tuple[Any, Any]]:
        """``{key: (value, cas_token)}`` for the keys that have a value."""
        by_kb = encode_keys(keys, self._prefix)
        groups, other = self._group(by_kb)
        out: dict[Any, tuple[Any, Any]] = {}
        failed: dict[bytes, Exception] = {}
        calls = [(node, "gets_many", (kbs,)) for node, kbs in groups.items()]
        for (node, _, (kbs,)), got in zip(calls, self._fan_out(calls), strict=True):
            if isinstance(got, MemringError):
                self._group_failure(node, got, kbs, other, failed)
                continue
            for kb, (item, token) in got.items():
                value = self._deserialize(kb, item, _MISSING)
                if value is not _MISSING:
                    out[by_kb[kb]] = (value, token)
        self._one_by_one(self._gets_or_missing, other, by_kb, out, failed)
        result: dict[Any, tuple[Any, Any]] = self._finish_many("gets_many", out, failed, by_kb)
        return result

    def _serialize_many(self, values: Mapping[str | bytes, Any], flags: int | None
                        ) -> tuple[dict[bytes, Any], dict[bytes, Item]]:
        """Wire keys (mapped to the caller's keys) and items of a multi-key write.

        Every key and value is checked before any I/O, so a bad one writes nothing.
        """
        by_kb: dict[bytes, Any] = {}
        items: dict[bytes, Item] = {}
        for key, value in values.items():
            kb = self._key(key)
            by_kb[kb] = key
            items[kb] = self._serialize(kb, value, flags)
        return by_kb, items

    def set_many(self, values: Mapping[str | bytes, Any], expire: int = 0,
                 noreply: bool | None = None, flags: int | None = None) -> list[Any]:
        """Store many values; returns the keys that failed to store (empty on success)."""
        by_kb, items = self._serialize_many(values, flags)
        expire = _check_expire(expire)
        groups, other = self._group(items)
        not_stored: list[Any] = []
        failed: dict[bytes, Exception] = {}
        calls = [(node, "set_many", ({kb: items[kb] for kb in kbs}, expire))
                 for node, kbs in groups.items()]
        for (node, _, (batch, _e)), got in zip(calls, self._fan_out(calls), strict=True):
            if isinstance(got, MemringError):
                self._group_failure(node, got, list(batch), other, failed)
            else:
                not_stored.extend(by_kb[kb] for kb in got)
        for kb in other:
            try:
                if not self._set_item(kb, items[kb], expire, False):
                    not_stored.append(by_kb[kb])
            except MemringError as exc:
                failed[kb] = exc
        if failed and self._failover.return_default:
            not_stored.extend(by_kb[kb] for kb in failed)
        return list(self._finish_many("set_many", not_stored, failed, by_kb))

    set_multi = set_many

    def delete_many(self, keys: Iterable[str | bytes], noreply: bool | None = None) -> bool:
        """Delete many keys. Returns True (as pymemcache does) unless a node failed."""
        by_kb = encode_keys(keys, self._prefix)
        groups, other = self._group(by_kb)
        failed: dict[bytes, Exception] = {}
        calls = [(node, "delete_many", (kbs,)) for node, kbs in groups.items()]
        for (node, _, (kbs,)), got in zip(calls, self._fan_out(calls), strict=True):
            if isinstance(got, MemringError):
                self._group_failure(node, got, kbs, other, failed)
        for kb in other:
            try:
                self.delete(by_kb[kb])
            except MemringError as exc:
                failed[kb] = exc
        self._finish_many("delete_many", True, failed, by_kb)
        return not failed

    delete_multi = delete_many

    # ------------------------------------------------------------------
    # whole-cluster commands
    def _live_nodes(self) -> list[Node]:
        return [n for n in self._ring.nodes if not self._health.is_down(n)]

    def stats(self, *args: str) -> dict[str, dict[bytes, Any]]:
        """``{node_label: stats}`` for every reachable node."""
        nodes = self._live_nodes()
        out = {}
        calls = [(n, "stats", args) for n in nodes]
        for node, got in zip(nodes, self._fan_out(calls), strict=True):
            if not isinstance(got, MemringError):
                out[node.label] = got
        return out

    def version(self) -> dict[str, str]:
        """``{node_label: version}`` for every reachable node."""
        nodes = self._live_nodes()
        out = {}
        calls = [(n, "version", ()) for n in nodes]
        for node, got in zip(nodes, self._fan_out(calls), strict=True):
            if not isinstance(got, MemringError):
                out[node.label] = got.decode() if isinstance(got, bytes) else str(got)
        return out

    def flush_all(self, delay: int = 0, noreply: bool | None = None) -> bool:
        """Flush every node. True only if every node, down ones included, was flushed.

        A node that is down keeps its data and serves it again when it
        returns: flushing a cluster with a node down is not complete.
        """
        nodes = self._ring.nodes
        live = self._live_nodes()
        results = self._fan_out([(n, "flush_all", (delay,)) for n in live])
        return len(live) == len(nodes) and all(r is True for r in results)

    def close(self) -> None:
        """Stop the prober, close every connection. Idempotent."""
        self._closed = True
        self._health.close()
        for t in self._transports.values():
            t.close()

    disconnect_all = close

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _check_expire(expire: Any) -> int:
    if isinstance(expire, bool) or not isinstance(expire, int):
        raise ValueError(f"expire must be an int of seconds, got {expire!r}")
    return expire


def _cas_token(cas: Any) -> bytes:
    if isinstance(cas, int) and not isinstance(cas, bool):
        return str(cas).encode()
    if isinstance(cas, str):
        cas = cas.encode()
    if not isinstance(cas, bytes) or not cas.isdigit():
        raise ValueError(f"cas token must be an int or digits, got {cas!r}")
    return cas


def _pymemcache_compat(
    failover: Failover | str, timeouts: Timeouts | None, options: dict[str, Any]
) -> tuple[Failover | str, Timeouts | None, bool]:
    """Map pymemcache ``HashClient`` keyword arguments onto memring's policies."""
    connect = options.pop("connect_timeout", None)
    read = options.pop("timeout", None)
    if connect is not None or read is not None:
        if timeouts is not None:
            raise ConfigError("pass either timeouts= or connect_timeout=/timeout=, not both")
        timeouts = Timeouts(connect=connect, read=read)
    if options.pop("ignore_exc", False):
        failover = Failover("fail", return_default=True)
    default_noreply = bool(options.pop("default_noreply", False))
    for name in _PYMEMCACHE_IGNORED:
        options.pop(name, None)
    if options:
        raise ConfigError(f"unknown Client options: {', '.join(sorted(options))}")
    return failover, timeouts, default_noreply
