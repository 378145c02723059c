"""What both engines share: settings, the item codec, health, multi-key plumbing,
whole-cluster commands and the background work that keeps nodes known.

An engine never touches a socket: its operations are generators of
:class:`~memring.engine.ops.Call` batches (see :mod:`memring.engine.ops`).
The faces (:mod:`memring.client`, :mod:`memring.aio`) drive them, and call
:meth:`Engine.record` with every batch's results, so health is counted in
one place for both.
"""

from __future__ import annotations

import logging
import pickle
import threading
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar, TypeVar

from memring.engine import defaults, moves
from memring.engine.config import Settings
from memring.engine.health import HealthMonitor, NodeHealth, NodeState, NodeStatus
from memring.engine.hints import Hint, Hints
from memring.engine.keys import encode_key, encode_keys
from memring.engine.ops import Call, Op, Quiet, Results
from memring.engine.serde import RESERVED_FLAGS
from memring.engine.versions import (
    FLAG_COPY,
    FLAG_TOMBSTONE,
    FLAG_VERSIONED,
    MARKER_FLAGS,
    TRAILER_SIZE,
    USER_FLAGS,
    VERSION_AT,
    HybridClock,
    Kind,
    Stored,
    absolute_expiry,
    decode,
    pack_trailer,
    tombstone,
)
from memring.errors import (
    ClusterError,
    InvalidArgument,
    InvalidArgumentType,
    MemringError,
    MultiKeyError,
    NodeUnavailable,
    ProtocolError,
    SerializationError,
    ServerError,
    UnpicklableValue,
    ValueTooLarge,
)
from memring.hashring import HashRing, Node
from memring.hashring.node import server_list

__all__ = ["CAS_ATTEMPTS", "COUNTERS", "ITEM_OVERHEAD", "Engine"]

log = logging.getLogger("memring")

T = TypeVar("T")
Item = tuple[bytes, int]
#: Keys settled (or kept alive) per round trip by a handoff (or a keep-alive).
HANDOFF_BATCH = 200
#: Seconds before a handoff that left keys unsettled tries them again.
HANDOFF_RETRY = 1.0

ITEM_OVERHEAD = defaults.ITEM_OVERHEAD
assert ITEM_OVERHEAD >= 88 + TRAILER_SIZE
#: Attempts of a CAS loop (a read-modify-write, a settle) before it gives
#: up under contention.
CAS_ATTEMPTS = 8
#: Client-wide counters in ``metrics()``; each is there from the start.
COUNTERS = (
    "defaults_returned", "multi_key_failures", "failover_writes", "handoff_keys",
    "handoff_holes", "read_repairs", "settled", "hints_dropped", "degraded_writes",
    "rebuilt_keys", "rebuilds", "restarts_seen",
)
_MISSING: Any = object()
_MARKED = FLAG_TOMBSTONE | FLAG_COPY


class Engine:
    """The logic of a memring client, sans I/O. Subclasses place the copies."""

    #: Whether reads consult a second node by default (``Failover.verify_reads=None``).
    VERIFY_READS: ClassVar[bool] = False

    def __init__(self, servers: Iterable[Any] | str, settings: Settings, *,
                 hlc: HybridClock) -> None:
        self.settings = settings
        self.failover = settings.failover
        self.timeouts = settings.timeouts
        self.prefix = settings.key_prefix
        self.unicode_keys = settings.allow_unicode_keys
        self.plen = len(self.prefix)
        self.serde = settings.serde
        self.max_item_size = settings.max_item_size
        from memring.errors import ConfigError

        try:
            self.ring = HashRing(server_list(servers), hash=settings.hash,
                                 vnodes=settings.vnodes)
        except TypeError as exc:  # not a collection of specs at all (5, None)
            raise ConfigError(f"servers must be a list of server specs or a comma-separated "
                              f"string, got {type(servers).__name__}: {exc}") from None
        if not len(self.ring):
            raise ConfigError("at least one server is needed")
        verify = settings.failover.verify_reads
        self.verify_reads = self.VERIFY_READS if verify is None else verify
        self.clock = settings.clock
        self.hlc = hlc
        self.health = HealthMonitor(
            self.ring.nodes, policy=settings.health, failover=settings.failover,
            clock=self.clock, wall_ms=hlc.wall_ms)
        self.hints = Hints()
        self.counters: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        #: Each node's transport and health record, set by the face: a call
        #: whose home node is up finds both with one lookup.
        self.homes: dict[Node, tuple[Any, NodeHealth]] = {}
        self.closed = False
        #: Homes whose hints are due a handoff, and when (monotonic seconds).
        self._handoffs: dict[Node, float] = {}
        self._handoffs_lock = threading.Lock()

    def attach(self, transports: Mapping[Node, Any]) -> None:
        self.homes = {node: (transports[node], self.health.record(node))
                      for node in self.ring.nodes}

    # ------------------------------------------------------------------
    # the codec
    def key(self, key: str | bytes) -> bytes:
        return encode_key(key, self.prefix, self.unicode_keys)

    def keys(self, keys: Iterable[str | bytes]) -> dict[bytes, Any]:
        return encode_keys(keys, self.prefix, self.unicode_keys)

    def serialize(self, kb: bytes, value: Any, flags: int | None = None) -> tuple[bytes, int]:
        """``(bytes, flags)`` for a value, checked against the item size limit."""
        try:
            data, serde_flags = self.serde.serialize(kb[len(self.prefix):], value)
        except MemringError:
            raise
        except Exception as exc:
            error = UnpicklableValue if isinstance(exc, pickle.PickleError) else (
                SerializationError)
            raise error(f"cannot serialize {type(value).__name__}: {exc}", key=kb) from exc
        if not isinstance(data, bytes):
            data = self._to_bytes(kb, data)
        if flags is None:
            flags = serde_flags
        if flags & RESERVED_FLAGS or not 0 <= flags < 1 << 32:
            raise SerializationError(f"flags {flags:#x} use bits reserved by memring (24-31)",
                                     key=kb)
        if len(data) + len(kb) + ITEM_OVERHEAD > self.max_item_size:
            raise ValueTooLarge(
                f"value of {len(data)} bytes does not fit the {self.max_item_size}-byte item "
                f"limit (key and overhead included)", key=kb, size=len(data),
                limit=self.max_item_size)
        return (data, flags)

    def _to_bytes(self, kb: bytes, data: Any) -> bytes:
        """A serde's non-bytes data as bytes, as pymemcache makes them: ``str(data)``
        in the client's ``encoding`` (a buffer is taken as it is)."""
        if isinstance(data, (bytearray, memoryview)):
            return bytes(data)
        try:
            return str(data).encode(self.settings.encoding)
        except UnicodeEncodeError as exc:
            raise SerializationError(
                f"data is not {self.settings.encoding}-encodable ({exc.reason}): pass "
                "encoding='utf-8' to store any text", key=kb) from exc

    def stored(self, raw: tuple[bytes, int], kb: bytes, node: Node | None) -> Stored:
        """Decode a raw item read from ``node``; move this process's clock past it."""
        try:
            st = decode(raw, self.clock.time())
            if st.version > self.hlc.last:
                self.hlc.observe(st.version)
        except ValueError as exc:
            raise _undecodable(kb, node, exc) from None
        return st

    def observe(self, version: int, kb: bytes, node: Node | None) -> None:
        """Move this process's clock past a version read from ``node``; a version
        implausibly far ahead is refused as an undecodable item."""
        try:
            self.hlc.observe(version)
        except ValueError as exc:
            raise _undecodable(kb, node, exc) from None

    def value(self, kb: bytes, raw: tuple[bytes, int] | None, default: Any,
              node: Node | None) -> Any:
        """The caller's value of a raw item read from ``node`` (``default`` for a miss)."""
        if raw is None:
            return default
        data, flags = raw
        if flags & MARKER_FLAGS:
            st = self.stored(raw, kb, node)
            if st.kind is Kind.TOMBSTONE:
                return default
            data, flags = st.item
        return self.deserialize(kb, data, flags, node)

    def home_value(self, kb: bytes, raw: tuple[bytes, int], default: Any, node: Node) -> Any:
        """:meth:`value` for the faces' fast path: the usual live value, decoded inline."""
        data, flags = raw
        if flags & FLAG_VERSIONED:  # a value of ours: strip its trailer, move the clock past it
            size = len(data) - TRAILER_SIZE
            if flags & _MARKED or size < 0:
                return self.value(kb, raw, default, node)  # a tombstone, a copy, an oddity
            version = VERSION_AT(data, size)[0]
            if version > self.hlc.last:
                self.observe(version, kb, node)
            data = data[:size]
            flags &= USER_FLAGS
        try:
            return self.serde.deserialize(kb[self.plen:], data, flags)
        except Exception:
            return self.deserialize(kb, data, flags, node)  # raises it, typed

    def home_item(self, item: tuple[bytes, int], version: int, expire: int) -> tuple[bytes, int]:
        """The raw item a set writes to a key's owner: ``item`` with its version trailer."""
        data, flags = item
        abs_expiry = absolute_expiry(expire, self.clock.time()) if expire else 0
        return data + pack_trailer(version, abs_expiry), flags | FLAG_VERSIONED

    def deserialize(self, kb: bytes, data: bytes, flags: int, node: Node | None) -> Any:
        try:
            return self.serde.deserialize(kb[len(self.prefix):], data, flags)
        except SerializationError as exc:
            if exc.node is None:
                exc.node = node
            if exc.key is None:
                exc.key = kb
            raise
        except Exception as exc:  # the bytes do not match their flags
            raise SerializationError(
                f"cannot decode the value of {kb!r} from {node.label if node else 'a node'} "
                f"(flags {flags:#x}): {type(exc).__name__}: {exc}", key=kb, node=node) from exc

    def live_value(self, st: Stored | None, kb: bytes, default: Any, node: Node | None) -> Any:
        if st is None or st.kind is Kind.TOMBSTONE:
            return default
        return self.deserialize(kb, st.item[0], st.item[1], node)

    # ------------------------------------------------------------------
    # health, for the faces' drivers
    def record(self, calls: Sequence[Call], results: Results) -> None:
        """Count every call of a batch as answered or failed."""
        homes = self.homes
        for call, result in zip(calls, results, strict=True):
            if isinstance(result, MemringError):
                self.health.record_failure(call.node, result)
            else:
                homes[call.node][1].succeeded()

    def failed(self, node: Node, exc: MemringError) -> None:
        """Count a failed call the face made itself (its fast path)."""
        self.health.record_failure(node, exc)

    def one(self, node: Node, method: str, *args: Any) -> Op[Any]:
        """One call; its result, or its error raised."""
        (result,) = yield [Call(node, method, args)]
        if isinstance(result, MemringError):
            raise result
        return result

    def unavailable(self, exc: NodeUnavailable, default: T) -> T:
        if self.failover.return_default:
            self.counters["defaults_returned"] += 1
            return default
        raise exc

    def failover_node(self, kb: bytes, home: Node, skip: int = 1) -> Node:
        """The first node after the first ``skip`` of ``kb``'s preference list that is not down."""
        for node in self.ring.nodes_for(kb, len(self.ring))[skip:]:
            if not self.health.is_down(node):
                return node
        raise ClusterError(f"no live node can take key {kb!r}: all {len(self.ring)} are down")

    def up_groups(self, kbs: Iterable[bytes]) -> tuple[dict[Node, list[bytes]], list[bytes]]:
        """Keys whose home is up, by node; and the keys that need the slower path."""
        groups = self.ring.group(kbs)
        state = self.health.state
        other: list[bytes] = []
        for node in [n for n in groups if state(n) is not NodeState.UP]:
            other.extend(groups.pop(node))
        return groups, other

    def finish_many(self, what: str, results: T, failed: Mapping[bytes, Exception],
                    keys: Mapping[bytes, Any]) -> T:
        """Raise :class:`MultiKeyError` for the keys that failed, unless defaults are returned."""
        if not failed:
            return results
        self.counters["multi_key_failures"] += len(failed)
        if self.failover.return_default:
            return results
        first = next(iter(failed.values()))
        raise MultiKeyError(
            f"{what}: {len(failed)} of {len(keys)} keys failed ({first})",
            results=results, failed={keys[kb]: e for kb, e in failed.items()})

    def replied(self, noreply: bool | None, result: Any) -> Any:
        """What a store command returns: True with ``noreply`` (as pymemcache), else ``result``."""
        if noreply is None:
            noreply = self.settings.default_noreply
        return True if noreply else result

    # ------------------------------------------------------------------
    # whole-cluster commands
    def live_nodes(self) -> list[Node]:
        return [n for n in self.ring.nodes if not self.health.is_down(n)]

    def stats(self, *args: str) -> Op[dict[str, dict[bytes, Any]]]:
        """``{node label: stats}`` for every reachable node."""
        for arg in args:
            if not isinstance(arg, str):
                from memring.errors import InvalidArgumentType
                raise InvalidArgumentType(f"stats arguments must be words, got {arg!r}")
            if not arg or not arg.isprintable() or " " in arg:
                raise InvalidArgument(f"stats arguments must be words, got {arg!r}")
        nodes = self.live_nodes()
        results = yield [Call(n, "stats", args) for n in nodes]
        out: dict[str, dict[bytes, Any]] = {}
        for node, got in zip(nodes, results, strict=True):
            if not isinstance(got, MemringError):
                out[node.label] = got
                if not args and self.health.note_stats(node, got):
                    self.noticed_restart(node)
        return out

    def version(self) -> Op[dict[str, str]]:
        """``{node label: version}`` for every reachable node."""
        nodes = self.live_nodes()
        results = yield [Call(n, "version", ()) for n in nodes]
        return {node.label: got.decode() if isinstance(got, bytes) else str(got)
                for node, got in zip(nodes, results, strict=True)
                if not isinstance(got, MemringError)}

    def flush_all(self, delay: int = 0, noreply: bool | None = None) -> Op[bool]:
        """Flush every node. True only if every node, down ones included, was flushed.

        A node that is down keeps its data and serves it again when it
        returns: flushing a cluster with a node down is not complete.
        """
        delay = check_int("delay", delay, 0, 2**31 - 1)
        check_noreply(noreply)
        live = self.live_nodes()
        results = yield [Call(n, "flush_all", (delay,)) for n in live]
        return len(live) == len(self.ring) and all(r is True for r in results)

    def cache_memlimit(self, memlimit: int) -> Op[bool]:
        """Set every node's memory limit to ``memlimit`` megabytes (``cache_memlimit``).

        True only if every node, down ones included, took it (as
        :meth:`flush_all`); a node's error reply is raised.
        """
        memlimit = check_int("memlimit", memlimit, 1, 2**31 - 1)
        live = self.live_nodes()
        results = yield [Call(n, "cache_memlimit", (memlimit,)) for n in live]
        for result in results:
            if isinstance(result, ServerError):
                raise result
        return len(live) == len(self.ring) and all(r is True for r in results)

    def raw_command(self, command: str | bytes, end_tokens: str | bytes = "\r\n"
                    ) -> Op[dict[str, bytes]]:
        """Send one raw command line to every reachable node; ``{node label: reply}``,
        each reply read up to ``end_tokens`` (dropped), as pymemcache's ``raw_command``.

        One line: a command holding CR or LF raises
        :class:`~memring.InvalidArgument` (it would put the connection out of
        step). An error reply raises (a :class:`~memring.ServerError`), and so
        does a reply that outgrows the item size limit before its end tokens
        (:class:`~memring.ProtocolError`). Each node's call has a connection
        of its own, closed after it, so what follows the end tokens is
        dropped and never read by another call. A node that cannot be
        reached is left out. A raw reply never changes a node's health.
        """
        encoding = "utf-8" if self.unicode_keys else "ascii"
        raw = _text_arg("command", command, encoding)
        end = _text_arg("end_tokens", end_tokens, encoding)
        if not raw or b"\r" in raw or b"\n" in raw:
            raise InvalidArgument(f"command must be one non-empty line, got {command!r}")
        if not end:
            raise InvalidArgument("end_tokens must not be empty")
        nodes = self.live_nodes()
        results = yield Quiet([Call(n, "raw", (raw, end)) for n in nodes])
        out: dict[str, bytes] = {}
        for node, got in zip(nodes, results, strict=True):
            if isinstance(got, (ServerError, ProtocolError)):
                raise got
            if not isinstance(got, MemringError):
                out[node.label] = got
        return out

    def shutdown(self, graceful: bool = False) -> Op[None]:
        """Ask every reachable node to shut down (memcached must run with
        ``--enable-shutdown``; otherwise its refusal is raised, as
        :class:`~memring.UnknownCommandError`). The nodes are then down to
        this client and probed like any down node."""
        if not isinstance(graceful, bool):
            raise InvalidArgumentType(f"graceful must be a bool, got {graceful!r}")
        nodes = self.live_nodes()
        results = yield [Call(n, "shutdown", (graceful,)) for n in nodes]
        for result in results:
            if isinstance(result, ServerError):  # refused; a closed connection is success
                raise result

    def quit(self) -> Op[None]:
        """Close every idle connection, as pymemcache's ``quit`` closes its one; the
        client stays usable and connects again when it needs to."""
        yield Quiet([Call(n, "quit", ()) for n in self.ring.nodes])

    def check_key(self, key: str | bytes, key_prefix: bytes | None = None) -> bytes:
        """The wire form of ``key`` (``key_prefix``, by default the client's, prepended),
        or :class:`~memring.InvalidKey`, as pymemcache's ``check_key``."""
        prefix = self.prefix if key_prefix is None else key_prefix
        if not isinstance(prefix, bytes):
            raise InvalidArgumentType(f"key_prefix must be bytes, got {prefix!r}")
        if prefix:
            encode_key(prefix)
        return encode_key(key, prefix, self.unicode_keys)

    def health_report(self) -> Op[dict[str, NodeStatus]]:
        """Per-node state and counters. A node whose pid and uptime this client has
        not read yet is asked for them (quietly: its answer, or its silence, does
        not change its state)."""
        unknown = [n for n in self.live_nodes() if self.health.record(n).pid is None]
        if unknown:
            results = yield Quiet([Call(n, "stats", ()) for n in unknown])
            for node, got in zip(unknown, results, strict=True):
                if not isinstance(got, MemringError):
                    self.health.note_stats(node, got)
        return {n.label: self.status(n) for n in self.ring.nodes}

    def status(self, node: Node) -> NodeStatus:
        return self.health.status(node)

    def metrics(self) -> dict[str, Any]:
        """Counters: per node, and client-wide (every key present from the start)."""
        nodes = {}
        for node in self.ring.nodes:
            s = self.health.status(node)
            nodes[node.label] = {
                "state": s.state.value, "ops": s.ops, "errors": s.errors,
                "timeouts": s.timeouts, "failovers": s.failovers,
                "state_changes": s.state_changes,
            }
        counters = dict(self.counters)
        counters["hints_dropped"] = self.hints.dropped
        return {"nodes": nodes, "hints_pending": self.hints.pending(), **counters}

    # ------------------------------------------------------------------
    # background work: probes, keep-alives, restart checks, handoffs
    def background(self) -> tuple[list[tuple[Op[Any], bool]], float | None]:
        """The work due now, each ``(op, long)``, and seconds until more is due.

        A long op (a handoff, a rebuild) may run for a while: the face runs
        it beside its prober, not in its way.
        """
        if self.closed:
            return [], None
        probes, downs, wait = self.health.due()
        work: list[tuple[Op[Any], bool]] = [(self._probe(n), False) for n in probes]
        work += [(self.keepalive(n), False) for n in downs]
        work += [(self._restart_check(n), False) for n in self.health.checks_due()]
        work += self.more_work()
        more = self.work_wait()
        if more is not None:
            wait = more if wait is None else min(wait, more)
        return work, wait

    def _probe(self, node: Node) -> Op[None]:
        (got,) = yield [Call(node, "stats", ())]
        back, restarted = self.health.probed(node, got)
        if back:
            self.returned(node, restarted)

    def _restart_check(self, node: Node) -> Op[None]:
        try:
            (got,) = yield [Call(node, "stats", ())]
        finally:
            self.health.end_restart_check(node)
        if not isinstance(got, MemringError) and self.health.note_stats(node, got, infer=True):
            log.warning("node %s restarted (empty) between two calls", node.label,
                        extra={"memring_node": node.label})
            self.noticed_restart(node)

    def note_reconnect(self, node: Node) -> None:
        """The face found ``node``'s pooled connections closed by the server."""
        if not self.closed:
            self.health.begin_restart_check(node)

    def noticed_restart(self, node: Node) -> None:
        """``node`` restarted, empty, while this client saw it up."""
        self.counters["restarts_seen"] += 1

    def _due(self, home: Node, delay: float) -> None:
        """Schedule a handoff of ``home``'s hints in ``delay`` seconds (or sooner)."""
        at = self.clock.monotonic() + delay
        with self._handoffs_lock:
            if at < self._handoffs.get(home, float("inf")):
                self._handoffs[home] = at
        self.health.on_change()

    def _put(self, node: Node, kb: bytes, st: Stored) -> Op[bool]:
        """Make ``node`` hold ``st`` unless it holds something as new (one CAS attempt)."""
        got = (yield from self.one(node, "meta_many", [kb])).get(kb)
        current, cas = (None, None) if got is None else (self.stored(got[0], kb, node), got[1])
        now = self.clock.time()
        cmd = moves.plan(kb, st, current, cas, now, self.failover.tombstone_ttl,
                         self._may_add(node, st))
        if cmd is None:
            return False
        return bool((yield from self.one(node, cmd[0], *cmd[1])))

    def _may_add(self, node: Node, st: Stored) -> bool:
        return moves.may_add(st, self.hlc.wall_ms(), self.health.uptime(node),
                             self.failover.tombstone_ttl)

    def _check_store(self, key: str | bytes, value: Any, expire: Any, noreply: Any,
                     flags: Any) -> tuple[bytes, Item, int, bool | None]:
        kb = self.key(key)
        expire = check_expire(expire)
        noreply = check_noreply(noreply)
        return kb, self.serialize(kb, value, check_flags(flags)), expire, noreply

    def concat_data(self, kb: bytes, value: Any) -> bytes:
        """The bytes ``append``/``prepend`` add, checked against the item limit first."""
        if isinstance(value, str):
            data = self._to_bytes(kb, value)  # in the client's encoding, as pymemcache
        elif isinstance(value, bytes):
            data = value
        else:
            data = self.serialize(kb, value)[0]
        self.serialize(kb, data)  # raises ValueTooLarge before any I/O
        return data

    def touch_owner(self, node: Node, kb: bytes, expire: int) -> Op[bool]:
        """``touch`` on a node that owns ``kb``: memcached's own, but a tombstone is missing."""
        flags = yield from self.one(node, "touch_flags", kb, expire)
        if flags is None:
            return False
        if is_tombstone_flags(flags):
            # A deleted key: missing. Give its tombstone back its own life.
            if expire <= 0 or expire > self.failover.tombstone_ttl:
                yield from self.one(node, "touch", kb, self.failover.tombstone_ttl)
            return False
        return True

    def _collect(self, got: Mapping[bytes, Item], by_kb: Mapping[bytes, Any], node: Node,
                 out: dict[Any, Any], failed: dict[bytes, Exception]) -> None:
        """One node's ``get_many`` reply into ``out`` (a key that can't be decoded: ``failed``).

        Decoded as the fast paths decode (:meth:`home_value`): the same result
        as :meth:`value` for every item (tombstones and copies take its way).
        """
        home_value = self.home_value
        for kb, raw in got.items():
            try:
                value = home_value(kb, raw, MISSING, node)
            except MemringError as exc:
                failed[kb] = exc
                continue
            if value is not MISSING:
                out[by_kb[kb]] = value

    def _group_failure(self, node: Node, exc: MemringError, kbs: list[bytes],
                       retry: list[bytes], failed: dict[bytes, Exception]) -> None:
        if (isinstance(exc, NodeUnavailable) and self.failover.mode == "next"
                and self.health.is_down(node)):
            retry.extend(kbs)
        else:
            for kb in kbs:
                failed[kb] = exc

    def serialize_many(self, values: Any, flags: Any) -> tuple[dict[bytes, Any], dict[bytes, Item]]:
        """Wire keys (mapped to the caller's keys) and items of a multi-key write.

        Every key and value is checked before any I/O, so a bad one writes nothing.
        """
        from memring.errors import InvalidArgumentType

        if not isinstance(values, Mapping):
            raise InvalidArgumentType(
                f"values must be a mapping of keys to values, got {type(values).__name__}")
        flags = check_flags(flags)
        by_kb: dict[bytes, Any] = {}
        items: dict[bytes, Item] = {}
        for key, value in values.items():
            kb = self.key(key)
            by_kb[kb] = key
            items[kb] = self.serialize(kb, value, flags)
        return by_kb, items

    def returned(self, node: Node, restarted: bool | None) -> None:
        if self.failover.mode == "next" and self.hints.pending(node):
            self._due(node, 0.0)

    def more_work(self) -> list[tuple[Op[Any], bool]]:
        now = self.clock.monotonic()
        with self._handoffs_lock:
            due = [n for n, at in self._handoffs.items() if at <= now]
            for node in due:
                del self._handoffs[node]
        return [(self._handoff(node), True) for node in due]

    def work_wait(self) -> float | None:
        with self._handoffs_lock:
            if not self._handoffs:
                return None
            return max(0.0, min(self._handoffs.values()) - self.clock.monotonic())

    def _handoff(self, home: Node) -> Op[None]:
        """Settle every key this client wrote elsewhere while ``home`` was down."""
        pending = list(self.hints.take(home).items())
        kept: list[tuple[bytes, Hint]] = []
        settled = 0
        for i in range(0, len(pending), HANDOFF_BATCH):
            batch = pending[i:i + HANDOFF_BATCH]
            if self.closed or self.health.is_down(home):
                kept.extend(batch)
                continue
            try:
                left = yield from self._handoff_batch(home, batch)
            except MemringError as exc:
                log.warning("handoff to %s failed: %s", home.label, exc)
                kept.extend(batch)
                continue
            kept.extend(left)
            settled += len(batch) - len(left)
        self.counters["handoff_keys"] += settled
        if kept:
            self.hints.put_back(home, kept)
            if not self.health.is_down(home):
                self._due(home, HANDOFF_RETRY)
        log.info("handoff to %s: %d keys settled, %d kept for later", home.label, settled,
                 len(kept))

    def keepalive(self, home: Node) -> Op[None]:
        """While ``home`` is down, give this client's copies of its keys their full life again.

        A copy lives ``failover_ttl`` seconds, so that none outlives the
        warming window after its home returns; an outage may last longer.
        A copy found gone (evicted) becomes a tombstone copy: its value is
        lost, and so must be the older one at home.
        """
        if self.failover.mode != "next":
            return
        hints = self.hints.keys(home)
        by_holder: dict[Node, list[tuple[bytes, Hint]]] = defaultdict(list)
        for kb, hint in hints.items():
            by_holder[hint.holder].append((kb, hint))
        ttl = self.failover.failover_ttl
        for holder, entries in by_holder.items():
            for i in range(0, len(entries), HANDOFF_BATCH):
                if self.closed or not self.health.is_down(home):
                    return
                chunk = entries[i:i + HANDOFF_BATCH]
                try:
                    touched = yield from self.one(
                        holder, "batch", [("touch", (kb, ttl)) for kb, _ in chunk])
                    gone = [("add", (kb, tombstone(h.version, copy=True), ttl))
                            for (kb, h), ok in zip(chunk, touched, strict=True) if ok is False]
                    if gone:
                        yield from self.one(holder, "batch", gone)
                except MemringError as exc:
                    log.warning("keeping the copies of %s's keys alive on %s failed: %s",
                                home.label, holder.label, exc)
                    break

    def _plan_settle(self, home: Node, kb: bytes, hint: Hint, new: Stored,
                     current: Stored | None, cas: bytes | None, hole: bool, now: float,
                     ops: list[tuple[str, tuple[Any, ...]]],
                     planned: list[tuple[bytes, Hint, bool]], done: list[bytes]) -> None:
        """Plan the op that puts ``new`` onto ``home`` over ``current`` (read with
        ``cas``) for a handoff batch; a key home already holds as new goes to ``done``."""
        cmd = moves.plan(kb, new, current, cas, now, self.failover.tombstone_ttl,
                         self._may_add(home, new))
        if cmd is not None:
            ops.append(cmd)
            planned.append((kb, hint, hole))
        elif not hole:
            done.append(kb)

    def _settle_batch(self, home: Node, batch: Sequence[tuple[bytes, Hint]],
                      ops: list[tuple[str, tuple[Any, ...]]],
                      planned: list[tuple[bytes, Hint, bool]], keep: list[tuple[bytes, Hint]],
                      done: list[bytes], copies: Mapping[bytes, Any]) -> Op[None]:
        """Send a handoff batch's planned ``ops`` to ``home`` in one round trip, then
        retire the copies of every key home now holds the newest of.

        ``planned`` says per op its key, hint and whether it fills a hole (a
        tombstone for a lost copy); ``done`` already holds the keys home was
        found newer for, and gains those settled now; a key whose op lost a
        race joins ``keep``, to be looked at again.
        """
        if ops:
            (results,) = yield [Call(home, "batch", (ops,))]
            if isinstance(results, MemringError):
                raise results
            for (kb, hint, hole), ok in zip(planned, results, strict=True):
                if ok is True:
                    self.counters["handoff_holes" if hole else "settled"] += 1
                    if not hole:
                        done.append(kb)
                elif not any(k == kb for k, _ in keep):
                    keep.append((kb, hint))  # a write landed meanwhile: look again
        yield from self._retire(home, dict(batch), [kb for kb in done if kb in copies], copies)

    def _retire(self, home: Node, hints: Mapping[bytes, Hint], kbs: Sequence[bytes],
                copies: Mapping[bytes, Any]) -> Op[None]:
        """Replace the settled copies of ``kbs`` by a tombstone just older than each.

        A copy left behind would be read again if ``home`` failed once more
        before it expired, and it may be older than what home holds by then.
        The tombstone reads as a miss there, and loses to home's item in any
        comparison. By CAS on the copy that was read: a newer copy written
        meanwhile stays.
        """
        ttl = self.failover.failover_ttl
        by_holder: dict[Node, list[tuple[str, tuple[Any, ...]]]] = defaultdict(list)
        for kb in kbs:
            raw, token, _ = copies[kb]
            st = self.stored(raw, kb, hints[kb].holder)
            if st.kind is Kind.VALUE:
                by_holder[hints[kb].holder].append(
                    ("cas", (kb, tombstone(st.version - 1, copy=True), token, ttl)))
        if by_holder:
            yield [Call(node, "batch", (ops,)) for node, ops in by_holder.items()]  # best effort

    def _handoff_batch(self, home: Node, batch: Sequence[tuple[bytes, Hint]]
                       ) -> Op[list[tuple[bytes, Hint]]]:
        """Settle one batch of ``home``'s hints; returns the hints to try again."""
        raise NotImplementedError
        yield  # a generator

    def close(self) -> None:
        self.closed = True

    def after_fork(self) -> None:
        """In a child process: locks another thread held at fork time are held for
        ever there, so every lock is new; health and hints are kept as they were."""
        self._handoffs_lock = threading.Lock()
        self.health.after_fork()
        self.hints.after_fork()
        self.hlc._after_fork()


def _undecodable(kb: bytes, node: Node | None, exc: Exception) -> SerializationError:
    return SerializationError(f"undecodable item for {kb!r} from "
                              f"{node.label if node else 'a node'}: {exc}", key=kb, node=node)


def check_int(name: str, value: Any, low: int, high: int) -> int:
    """An int argument in ``[low, high]``, or a typed error (nothing is sent)."""
    from memring.errors import InvalidArgumentType

    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise InvalidArgument(f"{name} must be in {low}..{high}, got {value!r}")
    return value


def check_seconds(name: str, value: Any) -> float:
    """A duration argument: a non-negative, finite int or float, or a typed error."""
    from memring.errors import InvalidArgumentType

    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgumentType(f"{name} must be a number of seconds, got {value!r}")
    if not 0 <= value < float("inf"):
        raise InvalidArgument(f"{name} must be a finite number of seconds >= 0, got {value!r}")
    return float(value)


def _text_arg(name: str, value: Any, encoding: str) -> bytes:
    """A str or bytes argument as bytes, or a typed error."""
    if isinstance(value, bytes):
        return value
    if not isinstance(value, str):
        raise InvalidArgumentType(f"{name} must be str or bytes, got {type(value).__name__}")
    try:
        return value.encode(encoding)
    except UnicodeEncodeError:
        raise InvalidArgument(f"{name} is not {encoding}: {value!r}") from None


def gets_instead(gets: Any) -> bool:
    """``get_many(keys, gets=True)``, as pymemcache's ``HashClient`` takes it: whether
    to answer with :meth:`gets_many` instead (a bool, or a typed error)."""
    if not isinstance(gets, bool):
        raise InvalidArgumentType(f"gets must be a bool, got {gets!r}")
    return gets


def check_expire(expire: Any) -> int:
    """memcached's expire: seconds (up to 30 days), a Unix time, 0 (never) or < 0 (now)."""
    return check_int("expire", expire, -(2**31), 2**31 - 1)


def check_flags(flags: Any) -> int | None:
    if flags is None:
        return None
    return check_int("flags", flags, 0, (1 << 24) - 1)


def check_ignored(expire: Any, flags: Any) -> None:
    """``append``/``prepend`` take ``expire`` and ``flags`` (memcached ignores them): check them."""
    check_expire(expire)
    check_flags(flags)


def is_tombstone_flags(flags: int) -> bool:
    """Flags of a memring tombstone."""
    return bool(flags & FLAG_TOMBSTONE and flags & FLAG_VERSIONED)


def check_noreply(noreply: Any) -> bool | None:
    if noreply is not None and not isinstance(noreply, bool):
        from memring.errors import InvalidArgumentType
        raise InvalidArgumentType(f"noreply must be a bool or None, got {noreply!r}")
    return noreply


def cas_token(cas: Any) -> bytes:
    """A CAS token as memcached takes it, from ``gets``' int, str or bytes."""
    if isinstance(cas, int) and not isinstance(cas, bool):
        if not 0 <= cas < 1 << 64:
            raise InvalidArgument(f"cas token must be in 0..2**64-1, got {cas!r}")
        return str(cas).encode()
    if isinstance(cas, str):
        cas = cas.encode("ascii", "replace")
    if not isinstance(cas, bytes):
        from memring.errors import InvalidArgumentType
        raise InvalidArgumentType(f"cas token must be an int or digits, got {cas!r}")
    if not cas.isdigit() or len(cas) > 20 or int(cas) >= 1 << 64:
        raise InvalidArgument(f"cas token must be an int or digits, got {cas!r}")
    return cas


MISSING = _MISSING
