"""Dual-write backup mode: every key on two nodes, so losing any one loses nothing.

The two *owners* of a key are the first two nodes of its preference list that
are not down. With every node up they are the key's *home pair*, primary and
backup; when one of them is down, the next node on the ring, the key's
*stand-in*, takes its place.

Stored format: every value carries its absolute expiry (the same 8-byte
trailer as failover copies, see :mod:`memring.client.copies`), so a repair or
a read-modify-write gives the second copy the very same expiry as the
first. Deletes write *tombstones* on both owners (they live
``failover_ttl`` seconds), so a concurrent read-repair can never bring a
deleted key back.

A write goes to both owners at once. If one of them turns out to be down,
the write goes on to the next live node, so that it still ends on two nodes,
and the key is remembered (a *hint*) for the node that is down. Copies on a
stand-in live at most ``failover_ttl`` seconds.

Reads go to the primary; on a miss they read the backup and repair the
primary with ``add`` (which can't overwrite a newer write). A stand-in is
never read as a second copy: a live home node that misses the key is right.

A node that returns after an outage is *warming* for ``failover_ttl`` (+ a
margin): reads ask the other owner first, which saw every write of the
outage, and each client *settles* the keys it hinted (CAS from the other
owner) — so a node that hung never wins with old data (Invariant S). While
a home node is warming:

* a write also removes the stand-in's copy of the key, so that if the other
  home node fails next, the stand-in never serves a value older than the
  warming node's. Then (stand-in first, warming node second) the stand-in's
  copy or tombstone wins, and if it has none the warming node answers;
* if both home nodes are warming, reads ask the stand-in first, for the
  same reason;
* a read that finds the key on the other copy also adds it to the warming
  node (a *refill*; ``add`` never overwrites anything), so that a node that
  restarted empty gets back the keys it was the backup of (read-repair
  alone only fixes primaries). Keys not read in that window keep one copy
  until they are written again. memcached's ``uptime`` starts at about 2 s,
  so a quick restart can't always be told from a hang: every warming node
  is refilled.
"""

from __future__ import annotations

import logging
import threading
from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping
from typing import Any, TypeVar

from memring.client import copies, mutations
from memring.client.client import CAS_ATTEMPTS, Client, _cas_token, _check_expire
from memring.client.copies import Kind
from memring.client.health import NodeState
from memring.client.keys import encode_key, encode_keys
from memring.client.transport import Item
from memring.errors import (
    ClusterError,
    ConfigError,
    MemringError,
    MultiKeyError,
    NodeUnavailable,
    ServerError,
)
from memring.hashring import Node

__all__ = ["BackupClient"]

log = logging.getLogger("memring")

#: Marks a restarted node as being rebuilt by one client (a tombstone: reads miss).
REBUILD_MARKER = b"memring:rebuild"
#: Keys read from the other owner per round trip while rebuilding.
REBUILD_BATCH = 200

T = TypeVar("T")
_MISSING = object()
_CONFLICT = object()  # a CAS lost a race: read again and retry
Mutation = mutations.Mutation
Call = tuple[Node, str, tuple[Any, ...]]


class BackupClient(Client):
    """A :class:`~memring.Client` that keeps two copies of every key.

    Same constructor and API as :class:`~memring.Client`; the failover
    policy must be ``"next"`` (its ``failover_ttl`` caps copies written to a
    stand-in node and the life of tombstones).

    Costs: twice the memory and twice the write traffic of the single-copy
    client; writes go to both owners concurrently, so their latency is that
    of the slower of two nodes. Reads cost one round trip (two on a miss).
    While a node is warming, writes of its keys cost a third (concurrent)
    call, which removes the stand-in's copy.

    Semantics across the two copies:

    * ``set``/``set_many``: stored on both owners. A write that finds an
      owner down (a *degraded* write, counted in
      ``metrics()["degraded_writes"]``) is stored on the next live node
      instead; it is acknowledged once two live nodes have it, or one has it
      and no other live node is left.
    * ``delete``: tombstones on both owners.
    * ``add``, ``replace``, ``append``, ``prepend``, ``incr``, ``decr``,
      ``touch``, ``cas``: decided on the primary alone, atomically (CAS), then
      the result is copied to the backup. ``add`` never succeeds on one copy
      while failing on the other. ``gets`` returns the primary's CAS token.
    * An evicted copy is a lost copy: size memory so that neither copy is
      evicted before it expires.
    """

    def __init__(self, servers: Any, **options: Any) -> None:
        super().__init__(servers, **options)
        if self._failover.mode != "next":
            raise ConfigError("BackupClient needs Failover('next'); it always fails over")
        if len(self._ring) < 2:
            raise ConfigError("BackupClient needs at least two servers")
        #: Nodes known to have come back empty (their uptime or pid said so).
        self._restarted: set[Node] = set()
        #: Returned nodes whose hinted keys this client is still settling.
        self._settling: set[Node] = set()

    # -- placement -------------------------------------------------------
    def owners(self, key: str | bytes) -> list[Node]:
        """The nodes that hold ``key`` now, in read order."""
        return self._read_order(self._owners(self._key(key)))

    def _owners(self, kb: bytes, home: list[Node] | None = None) -> list[Node]:
        """The first two nodes of ``kb``'s preference list that are not down.

        ``home`` (``nodes_for(kb, 2)``) may be passed by a caller that has it.
        """
        pair = home or self._home_pair(kb)
        is_down = self._health.is_down
        if not is_down(pair[0]) and not is_down(pair[1]):
            return pair
        out = [n for n in self._ring.nodes_for(kb, len(self._ring)) if not is_down(n)][:2]
        if not out:
            raise ClusterError(f"no live node can take key {kb!r}")
        return out

    def _read_order(self, owners: list[Node]) -> list[Node]:
        if len(owners) == 2 and self._health.state(owners[0]) is NodeState.WARMING and (
                self._health.state(owners[1]) is not NodeState.WARMING):
            return [owners[1], owners[0]]
        return owners

    def _read_plan(self, kb: bytes, owners: list[Node]) -> list[Node]:
        """The nodes a read of ``kb`` asks, in order (see the module docstring)."""
        order = self._read_order(owners)
        state = self._health.state
        if len(order) == 2 and state(order[0]) is NodeState.WARMING:
            # Both warming: the stand-in has every write made while either was down.
            stand_in = self._stand_in(kb)
            if stand_in is not None and stand_in not in order and (
                    state(stand_in) is NodeState.UP) and order == self._home_pair(kb):
                return [stand_in, *order]
        return order

    def _home_pair(self, kb: bytes) -> list[Node]:
        return self._ring.nodes_for(kb, 2)

    def _stand_in(self, kb: bytes) -> Node | None:
        """The node that takes ``kb`` while one of its home pair is down."""
        for node in self._ring.nodes_for(kb, len(self._ring))[2:]:
            if not self._health.is_down(node):
                return node
        return None

    def _to_clear(self, kb: bytes, owners: list[Node], home: list[Node]) -> Node | None:
        """The stand-in whose copy of ``kb`` a write must remove, if any.

        While a home node is warming, the stand-in may still hold a copy
        written during its outage; a write to the home pair supersedes it.
        """
        state = self._health.state
        if not any(state(n) is NodeState.WARMING for n in home):
            return None
        if any(n not in home for n in owners):
            return None  # the stand-in is an owner: the write itself goes there
        return self._stand_in(kb)

    def _hint_down_homes(self, kb: bytes, home: list[Node]) -> None:
        for node in home:
            if self._health.is_down(node):
                self._hint(node, kb)

    def _retrying(self, attempt: Callable[[], T]) -> T:
        """Run ``attempt`` again while it fails only because a node went down."""
        for _ in range(len(self._ring) + 1):
            try:
                return attempt()
            except NodeUnavailable as exc:
                if exc.node is None or not self._health.is_down(exc.node):
                    raise
        raise ClusterError("nodes keep failing")

    # -- writes ----------------------------------------------------------
    def _write_calls(self, kb: bytes, nodes: Iterable[Node], item: Item,
                     abs_expiry: int, home: list[Node] | None = None) -> list[Call]:
        """One ``set`` per node; a stand-in gets a copy capped at ``failover_ttl``."""
        now = self._clock.time()
        home = home or self._home_pair(kb)
        ttl = self._failover.failover_ttl
        calls: list[Call] = []
        for node in nodes:
            if item is copies.TOMBSTONE:
                stored, rel = item, ttl
            else:
                stored = copies.encode_copy(item, abs_expiry)
                rel = copies.relative_expiry(abs_expiry, now, None if node in home else ttl)
                if rel < 0:
                    stored, rel = copies.TOMBSTONE, ttl
            calls.append((node, "set", (kb, stored, rel)))
        return calls

    def _replicate(self, kb: bytes, item: Item, abs_expiry: int,
                   done: Collection[Node] = (), degraded: bool = False) -> bool:
        """Store ``item`` on every owner of ``kb`` not in ``done``; False if a node refused.

        An owner that turns out to be down is replaced by the next live node.
        """
        stored = set(done)
        home = self._home_pair(kb)
        for _ in range(len(self._ring) + 1):
            owners = self._owners(kb, home)
            todo = [n for n in owners if n not in stored]
            if not todo:
                break
            calls = self._write_calls(kb, todo, item, abs_expiry, home)
            clear = self._to_clear(kb, owners, home)
            extra: list[Call] = [] if clear is None else [(clear, "delete", (kb,))]
            results = self._fan_out(calls + extra)
            refused, lost_one = self._tally(calls, results, stored)
            if refused:
                return False  # the server refused to store (NOT_STORED)
            degraded = degraded or lost_one
        else:
            raise ClusterError(f"could not store {kb!r}: nodes keep failing")
        if degraded:
            self._counters["degraded_writes"] += 1
        self._hint_down_homes(kb, home)
        return True

    def _tally(self, calls: list[Call], results: list[Any], stored: set[Node]) -> tuple[bool, bool]:
        """Add the nodes whose write succeeded to ``stored``; ``(refused, degraded)``.

        ``refused``: a server answered NOT_STORED. ``degraded``: a node
        turned out to be down. Any other error is raised, unless refused.
        """
        refused = degraded = False
        error: MemringError | None = None
        for (node, _, _), r in zip(calls, results, strict=False):
            if r is True:
                stored.add(node)
            elif r is False:
                refused = True
            elif isinstance(r, NodeUnavailable) and self._health.is_down(node):
                degraded = True
            elif isinstance(r, MemringError):
                error = error or r
        if error is not None and not refused:
            raise error
        return refused, degraded

    def _healthy_pair(self, kb: bytes) -> list[Node] | None:
        """The key's home pair if both are up (not down, not warming): the common case."""
        pair = self._home_pair(kb)
        homes = self._homes
        if homes[pair[0]][1].state is NodeState.UP and homes[pair[1]][1].state is NodeState.UP:
            return pair
        return None  # (a warming window that is over ends on the slow path's state())

    def _set_item(self, kb: bytes, item: Item, expire: int, noreply: bool | None) -> bool:
        now = self._clock.time()
        abs_expiry = copies.absolute_expiry(expire, now)
        pair = self._healthy_pair(kb)
        rel = copies.relative_expiry(abs_expiry, now)
        if pair is None or rel < 0:
            return bool(self._replied(noreply, self._replicate(kb, item, abs_expiry)))
        # Both home nodes up: one set on each, at once, and nothing else to do.
        args = (kb, copies.encode_copy(item, abs_expiry), rel)
        calls: list[Call] = [(pair[0], "set", args), (pair[1], "set", args)]
        results = self._fan_out(calls)
        if results[0] is True and results[1] is True:
            return bool(self._replied(noreply, True))
        stored: set[Node] = set()
        refused, degraded = self._tally(calls, results, stored)
        ok = not refused and self._replicate(kb, item, abs_expiry, stored, degraded)
        return bool(self._replied(noreply, ok))

    def delete(self, key: str | bytes, noreply: bool | None = None) -> bool:
        kb = self._key(key)
        existed = self._read(kb, repair=False) is not None
        self._replicate(kb, copies.TOMBSTONE, 0)
        return True if noreply else existed

    # -- reads -----------------------------------------------------------
    def _read(self, kb: bytes, repair: bool = True) -> Item | None:
        """The key's plain item, from the primary, else the backup (repairing the primary)."""
        pair = self._healthy_pair(kb)
        if pair is not None:  # the common case: the primary, and nothing else on a hit
            transport, health = self._homes[pair[0]]
            try:
                got = transport.get(kb)
            except MemringError as exc:
                self._failed(pair[0], exc)  # raises unless the node is unavailable
                if not self._health.is_down(pair[0]):
                    raise
            else:
                health.succeeded()
                if got is not None:
                    kind, plain, _ = copies.decode(got, self._clock.time())
                    if kind is Kind.VALUE:
                        return plain
                try:  # a miss: ask the backup, with the primary's reply in hand
                    return self._read_from(kb, pair, repair, got)
                except NodeUnavailable as exc:
                    if exc.node is None or not self._health.is_down(exc.node):
                        raise
        return self._retrying(
            lambda: self._read_from(kb, self._read_plan(kb, self._owners(kb)), repair))

    def _read_from(self, kb: bytes, order: list[Node], repair: bool,
                   got: Any = _MISSING) -> Item | None:
        """Read ``kb`` from ``order[0]``, else from the other home node.

        ``got``: ``order[0]``'s reply, if the caller already has it.
        """
        now = self._clock.time()
        home = self._home_pair(kb)
        first = order[0]
        if got is _MISSING:
            got = self._call(first, "get", kb)
        if got is not None:
            kind, plain, abs_expiry = copies.decode(got, now)
            if kind is Kind.VALUE:
                if repair:
                    for node in order[1:]:
                        self._refill_one(kb, node, plain, abs_expiry)
                return plain
            if kind is Kind.TOMBSTONE:
                return None
        # ``first`` is a home node that lost the key (restarted, evicted), or a
        # stand-in with no copy of it. A stand-in never has what a live home
        # node lacks: only a home node that can be believed on its own is asked.
        second = next((n for n in order[1:] if n in home and self._trusted(n)), None)
        if second is None:
            return None
        got = self._call(second, "get", kb)
        if got is None:
            return None
        kind, plain, abs_expiry = copies.decode(got, now)
        if kind is not Kind.VALUE:
            return None
        if repair and self._health.state(first) is NodeState.UP:
            rel = copies.relative_expiry(abs_expiry, now, None if first in home else
                                         self._failover.failover_ttl)
            if rel >= 0:
                try:  # add: never overwrites a newer write that got there first
                    if self._call(first, "add", kb, copies.encode_copy(plain, abs_expiry), rel):
                        self._counters["read_repairs"] += 1
                except MemringError:
                    pass  # the read itself succeeded; the repair is best effort
        return plain

    def _refill_call(self, kb: bytes, node: Node, plain: Item, abs_expiry: int) -> Call | None:
        """The ``add`` that gives a warming home node its copy back, if due."""
        if self._health.state(node) is not NodeState.WARMING or node not in self._home_pair(kb):
            return None
        rel = copies.relative_expiry(abs_expiry, self._clock.time())
        if rel < 0:
            return None
        return (node, "add", (kb, copies.encode_copy(plain, abs_expiry), rel))

    def _refill_one(self, kb: bytes, node: Node, plain: Item, abs_expiry: int) -> None:
        call = self._refill_call(kb, node, plain, abs_expiry)
        if call is None:
            return
        try:  # add: a newer write (or a delete's tombstone) there wins
            if self._call(call[0], call[1], *call[2]):
                self._counters["refills"] += 1
        except MemringError:
            pass  # the read itself succeeded; the refill is best effort

    def _trusted(self, node: Node) -> bool:
        """May a read believe ``node`` on its own?

        A warming node that hung holds old values of the keys written while
        it was away until they are settled; one that restarted holds nothing
        older than its return.
        """
        if self._health.state(node) is not NodeState.WARMING:
            return True
        return node in self._restarted or node not in self._settling

    def _on_return(self, node: Node, restarted: bool | None) -> None:
        if restarted:
            self._restarted.add(node)
            self._on_restart(node)
        else:
            self._restarted.discard(node)
        with self._hints_lock:
            hinted = bool(self._hints.get(node))
        if hinted:
            self._settling.add(node)
        super()._on_return(node, restarted)

    def _on_restart(self, node: Node) -> None:
        if self._background:
            threading.Thread(target=self._rebuild, args=(node,), name="memring-rebuild",
                             daemon=True).start()
        else:
            self._rebuild(node)

    def _rebuild(self, node: Node) -> int:
        """Copy back onto ``node``, which restarted empty, every key it co-owns.

        Read-repair and refills only reach keys that are read; without this
        a key whose other copy was on the restarted node would live on one
        node until rewritten, and the next single fault could lose it. Keys
        are listed with ``lru_crawler metadump`` on the key's other owner
        and copied with ``add``, so a newer write or a delete's tombstone
        that got there first always wins. One client per restart does it:
        the first whose ``add`` of a marker on the returned node succeeds.
        """
        try:
            if not self._call(node, "add", REBUILD_MARKER, copies.TOMBSTONE,
                              self._failover.failover_ttl):
                return 0  # another client is rebuilding it
        except MemringError:
            return 0
        copied = 0
        for source in self._ring.nodes:
            if source == node or self._health.is_down(source):
                continue
            try:
                keys = self._call(source, "dump_keys")
            except MemringError as exc:
                log.warning("rebuild of %s: cannot list the keys of %s: %s",
                            node.label, source.label, exc)
                continue
            ours = [k for k in keys if k != REBUILD_MARKER
                    and {node, source} == set(self._ring.nodes_for(k, 2))]
            for i in range(0, len(ours), REBUILD_BATCH):
                if self._closed or self._health.is_down(node):
                    return copied
                try:
                    copied += self._rebuild_batch(node, source, ours[i:i + REBUILD_BATCH])
                except MemringError as exc:
                    log.warning("rebuild of %s from %s failed: %s", node.label, source.label, exc)
                    break
        self._counters["rebuilt_keys"] += copied
        log.info("rebuild of %s: %d keys copied back from their other owners", node.label, copied)
        return copied

    def _rebuild_batch(self, node: Node, source: Node, kbs: list[bytes]) -> int:
        copied = 0
        now = self._clock.time()
        for kb, item in self._call(source, "get_many", kbs).items():
            kind, plain, abs_expiry = copies.decode(item, now)
            rel = copies.relative_expiry(abs_expiry, now)
            if kind is Kind.VALUE and rel >= 0 and self._call(
                    node, "add", kb, copies.encode_copy(plain, abs_expiry), rel):
                copied += 1
        return copied

    def _handoff(self, home: Node, keys: list[bytes]) -> None:
        try:
            super()._handoff(home, keys)
        finally:
            self._settling.discard(home)

    def get(self, key: str | bytes, default: Any = None) -> Any:
        kb = encode_key(key, self._prefix)
        item = self._read(kb)
        if item is None:
            return default
        return self._serde.deserialize(self._unprefix(kb), item[0], item[1])

    def gets(self, key: str | bytes, default: Any = None,
             cas_default: Any = None) -> tuple[Any, Any]:
        kb = self._key(key)

        def attempt() -> tuple[Item, bytes] | None:
            self._read(kb)  # repairs the primary if only the backup has the key
            primary = self._read_plan(kb, self._owners(kb))[0]
            got: tuple[Item, bytes] | None = self._call(primary, "gets_many", [kb]).get(kb)
            return got

        got = self._retrying(attempt)
        if got is None:
            return default, cas_default
        kind, plain, _ = copies.decode(got[0], self._clock.time())
        if kind is not Kind.VALUE:
            return default, cas_default
        return self._serde.deserialize(self._unprefix(kb), plain[0], plain[1]), got[1]

    # -- read-modify-write on the primary ----------------------------------
    def _rmw_primary(self, kb: bytes, mutate: Mutation) -> Any:
        """Decide on the primary atomically (CAS), then copy the result to the backup."""
        for _ in range(CAS_ATTEMPTS):
            result = self._retrying(lambda: self._rmw_once(kb, mutate))
            if result is not _CONFLICT:
                return result
        raise ServerError(f"too much contention on {kb!r}", key=kb)

    def _rmw_once(self, kb: bytes, mutate: Mutation) -> Any:
        self._read(kb)  # a key only the backup has is first repaired onto the primary
        primary = self._read_plan(kb, self._owners(kb))[0]
        got, (kind, plain, abs_expiry), _ = self._fetch(primary, kb)
        result, new_item, new_abs = mutate(kind, plain, abs_expiry)
        if new_item is None:
            return result
        _, _, (k, stored, rel) = self._write_calls(kb, [primary], new_item, new_abs)[0]
        if got is None:
            ok = self._call(primary, "add", k, stored, rel)
        else:
            ok = self._call(primary, "cas", k, stored, got[1], rel)
        if not ok:
            return _CONFLICT
        self._replicate(kb, new_item, new_abs, done={primary})
        return result

    def add(self, key: str | bytes, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> bool:
        kb = self._key(key)
        item = self._serialize(kb, value, flags)
        new_abs = copies.absolute_expiry(_check_expire(expire), self._clock.time())
        return bool(self._rmw_primary(kb, mutations.add(item, new_abs)))

    def replace(self, key: str | bytes, value: Any, expire: int = 0,
                noreply: bool | None = None, flags: int | None = None) -> bool:
        kb = self._key(key)
        item = self._serialize(kb, value, flags)
        new_abs = copies.absolute_expiry(_check_expire(expire), self._clock.time())
        return bool(self._rmw_primary(kb, mutations.replace(item, new_abs)))

    def _concat(self, key: str | bytes, value: Any, noreply: bool | None, method: str) -> bool:
        kb = self._key(key)
        data = self._concat_data(kb, value, method)
        return bool(self._rmw_primary(kb, self._concat_mutation(kb, data, method)))

    def _arith(self, key: str | bytes, value: int, incr: bool) -> int | None:
        mutations.check_delta(value)
        kb = self._key(key)
        result: int | None = self._rmw_primary(kb, mutations.arith(value, incr))
        return result

    def touch(self, key: str | bytes, expire: int = 0, noreply: bool | None = None) -> bool:
        kb = self._key(key)
        new_abs = copies.absolute_expiry(_check_expire(expire), self._clock.time())
        return bool(self._rmw_primary(kb, mutations.retouch(new_abs)))

    def cas(self, key: str | bytes, value: Any, cas: Any, expire: int = 0,
            noreply: bool | None = False, flags: int | None = None) -> bool | None:
        """Store ``value`` if the primary's CAS token is still ``cas``.

        True if stored (on both owners), False if the value changed since
        ``gets``, None if the key is gone (deleted, expired or never set).
        """
        kb = self._key(key)
        item = self._serialize(kb, value, flags)
        new_abs = copies.absolute_expiry(_check_expire(expire), self._clock.time())
        token = _cas_token(cas)

        def attempt() -> bool | None:
            primary = self._read_plan(kb, self._owners(kb))[0]
            _, _, (k, stored, rel) = self._write_calls(kb, [primary], item, new_abs)[0]
            ok: bool | None = self._call(primary, "cas", k, stored, token, rel)
            if ok:
                self._replicate(kb, item, new_abs, done={primary})
                return True
            if ok is False:  # memcached answers NOT_FOUND for a deleted key: ours is a tombstone
                got = self._call(primary, "get", kb)
                if got is None or copies.decode(got, self._clock.time())[0] is not Kind.VALUE:
                    return None
            return ok

        ok = self._retrying(attempt)
        return True if noreply else ok

    # -- multi-key -------------------------------------------------------
    def get_many(self, keys: Iterable[str | bytes]) -> dict[Any, Any]:
        by_kb = encode_keys(keys, self._prefix)
        if not by_kb:
            return {}
        groups: dict[Node, list[bytes]] = defaultdict(list)
        plans: dict[bytes, list[Node]] = {}
        for kb in by_kb:
            plan = plans[kb] = self._read_plan(kb, self._owners(kb))
            groups[plan[0]].append(kb)
        out: dict[Any, Any] = {}
        slow: list[bytes] = []
        refills: list[Call] = []
        now = self._clock.time()
        for kb, item in self._from_primaries("get_many", groups, slow):
            if item is None:
                slow.append(kb)  # miss on the primary: the backup may have it
                continue
            kind, plain, abs_expiry = copies.decode(item, now)
            if kind is Kind.VALUE:
                out[by_kb[kb]] = self._serde.deserialize(self._unprefix(kb), *plain)
                for node in plans[kb][1:]:
                    refill = self._refill_call(kb, node, plain, abs_expiry)
                    if refill is not None:
                        refills.append(refill)
            elif kind is not Kind.TOMBSTONE:
                slow.append(kb)
        if refills:  # best effort, like a read-repair
            self._counters["refills"] += sum(r is True for r in self._fan_out(refills))
        failed: dict[bytes, Exception] = {}
        self._one_by_one(self._get_or_missing, slow, by_kb, out, failed)
        result: dict[Any, Any] = self._finish_many("get_many", out, failed, by_kb)
        return result

    get_multi = get_many

    def _from_primaries(self, method: str, groups: Mapping[Node, list[bytes]],
                        slow: list[bytes]) -> Iterator[tuple[bytes, Any]]:
        """``method`` (a multi-key read) on every node of ``groups`` at once: each
        key with its reply (None on a miss). The keys of a node that failed go
        to ``slow``, for the single-key path."""
        calls: list[Call] = [(node, method, (kbs,)) for node, kbs in groups.items()]
        for (_, _, (kbs,)), got in zip(calls, self._fan_out(calls), strict=True):
            if isinstance(got, MemringError):
                slow.extend(kbs)
                continue
            for kb in kbs:
                yield kb, got.get(kb)

    def gets_many(self, keys: Iterable[str | bytes]) -> dict[Any, tuple[Any, Any]]:
        """``{key: (value, cas_token)}``, tokens from each key's primary.

        One ``gets`` per primary node, all at once, when both of a key's home
        nodes are up and the primary has it; any other key goes through
        :meth:`gets` (which repairs a primary that lost it first).
        """
        by_kb = encode_keys(keys, self._prefix)
        groups: dict[Node, list[bytes]] = defaultdict(list)
        slow: list[bytes] = []
        for kb in by_kb:
            pair = self._healthy_pair(kb)
            if pair is None:
                slow.append(kb)
            else:
                groups[pair[0]].append(kb)
        out: dict[Any, tuple[Any, Any]] = {}
        now = self._clock.time()
        for kb, reply in self._from_primaries("gets_many", groups, slow):
            kind, plain, _ = copies.decode(reply[0], now) if reply else (None, None, 0)
            if kind is Kind.VALUE and plain is not None:
                out[by_kb[kb]] = (
                    self._serde.deserialize(self._unprefix(kb), plain[0], plain[1]), reply[1])
            elif kind is not Kind.TOMBSTONE:
                slow.append(kb)  # a miss, or a marker: the backup may have it
        failed: dict[bytes, Exception] = {}
        self._one_by_one(self._gets_or_missing, slow, by_kb, out, failed)
        result: dict[Any, tuple[Any, Any]] = self._finish_many("gets_many", out, failed, by_kb)
        return result

    def set_many(self, values: Mapping[str | bytes, Any], expire: int = 0,
                 noreply: bool | None = None, flags: int | None = None) -> list[Any]:
        by_kb, items = self._serialize_many(values, flags)
        abs_expiry = copies.absolute_expiry(_check_expire(expire), self._clock.time())
        not_stored, failed = self._replicate_many(items, abs_expiry)
        return list(self._finish_many("set_many", [by_kb[kb] for kb in not_stored], failed,
                                      by_kb))

    set_multi = set_many

    def delete_many(self, keys: Iterable[str | bytes], noreply: bool | None = None) -> bool:
        """Tombstones for every key on both owners, batched per node. True if all were written."""
        by_kb = encode_keys(keys, self._prefix)
        _, failed = self._replicate_many(dict.fromkeys(by_kb, copies.TOMBSTONE), 0)
        if failed and not self._failover.return_default:
            raise MultiKeyError(f"delete_many: {len(failed)} of {len(by_kb)} keys failed",
                                results=False, failed={by_kb[kb]: e for kb, e in failed.items()})
        return not failed

    delete_multi = delete_many

    def _replicate_many(self, items: Mapping[bytes, Item], abs_expiry: int
                        ) -> tuple[list[bytes], dict[bytes, Exception]]:
        """:meth:`_replicate` for many keys: one ``set_many`` per node (and expiry), all
        nodes at once. Returns the keys a server refused and the keys that failed."""
        per_key: dict[bytes, list[Node]] = {}
        batches: dict[tuple[Node, int], dict[bytes, Item]] = defaultdict(dict)
        clears: dict[Node, list[bytes]] = defaultdict(list)
        for kb, item in items.items():
            home = self._home_pair(kb)
            owners = per_key[kb] = self._owners(kb, home)
            for node, _, (_, stored, rel) in self._write_calls(kb, owners, item, abs_expiry,
                                                               home):
                batches[(node, rel)][kb] = stored
            clear = self._to_clear(kb, owners, home)
            if clear is not None:
                clears[clear].append(kb)
        calls: list[Call] = [(node, "set_many", (batch, rel))
                             for (node, rel), batch in batches.items()]
        extra: list[Call] = [(node, "delete_many", (kbs,)) for node, kbs in clears.items()]
        outcome: dict[tuple[Node, bytes], Any] = {}
        for (node, _, (batch, _r)), got in zip(calls, self._fan_out(calls + extra),
                                               strict=False):
            refused = set(got) if isinstance(got, list) else set()
            for kb in batch:
                outcome[(node, kb)] = got if isinstance(got, MemringError) else (
                    kb not in refused)
        not_stored: list[bytes] = []
        failed: dict[bytes, Exception] = {}
        for kb, owners in per_key.items():
            results = [outcome[(node, kb)] for node in owners]
            done = {node for node, r in zip(owners, results, strict=True) if r is True}
            if len(done) == len(owners):
                self._hint_down_homes(kb, self._home_pair(kb))
                continue
            if any(r is False for r in results):
                not_stored.append(kb)
                continue
            degraded = any(isinstance(r, NodeUnavailable) and self._health.is_down(node)
                           for node, r in zip(owners, results, strict=True))
            try:  # an owner failed: store this key again, on whoever owns it now
                if not self._replicate(kb, items[kb], abs_expiry, done, degraded):
                    not_stored.append(kb)
            except MemringError as exc:
                failed[kb] = exc
        return not_stored, failed

    # -- a returning node (Invariant S) -------------------------------------
    def _keepalive(self, home: Node) -> None:
        """Nothing to keep alive while ``home`` is down.

        The single-copy client refreshes its failover copies during a long
        outage. Here the other home node holds every outage write with its
        full expiry, and ``home`` is settled from it when it returns; the
        node the single-copy client would refresh may be that very partner,
        whose full copy a ``touch`` down to ``failover_ttl`` would cut short.
        """

    def _settle(self, kb: bytes, home: Node, f: Node) -> None:
        """Make the returning node ``home``'s copy of ``kb`` equal to the other owner's.

        If it can't be done now, the key stays hinted for ``home``'s next return.
        """
        try:
            if self._settle_from_partner(kb, home):
                return
        except MemringError:
            self._hint(home, kb)
            raise
        self._hint(home, kb)

    def _settle_from_partner(self, kb: bytes, home: Node) -> bool:
        """True once settled (or nothing to do); False if ``home`` is down again."""
        for _ in range(CAS_ATTEMPTS):
            owners = self._owners(kb)
            if home not in owners:
                return False
            others = [n for n in owners if n != home]
            if not others:
                return True
            source = others[0]
            try:  # the token first, then the source
                mine = self._call(home, "gets_many", [kb]).get(kb)
                theirs = self._call(source, "get", kb)
            except NodeUnavailable as exc:
                if exc.node == source and self._health.is_down(source):
                    continue  # settle from the node that stands in for it
                raise
            now = self._clock.time()
            if theirs is not None:
                kind, plain, abs_expiry = copies.decode(theirs, now)
            else:
                kind, plain, abs_expiry = Kind.TOMBSTONE, copies.TOMBSTONE, 0
            if kind is Kind.VALUE:
                stored = copies.encode_copy(plain, abs_expiry)
                rel = copies.relative_expiry(abs_expiry, now)
            else:
                if mine is None or mine[0][1] & copies.FLAG_TOMBSTONE:
                    return True
                stored, rel = copies.TOMBSTONE, self._failover.failover_ttl
            if mine is not None and mine[0] == stored:
                return True
            if mine is None:
                ok = self._call(home, "add", kb, stored, rel)
            else:
                ok = self._call(home, "cas", kb, stored, mine[1], rel)
            if ok:
                self._counters["settled"] += 1
                return True
        raise ServerError(f"could not settle {kb!r}: too much contention", node=home, key=kb)
