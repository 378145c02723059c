"""The backup engine: every key on two nodes, so losing any one loses nothing.

The two *owners* of a key are the first two nodes of its preference list
that are not down. With every node up they are its *home pair*; when one
is down, the next node on the ring, its *stand-in*, takes that place and
holds a copy whose life is capped at ``failover_ttl`` (kept alive while
the home node stays down, like the single-copy engine's copies).

* **Writes** go to both owners at once, with one version. A write is
  acknowledged when both have it, or one has it and no other live node is
  left. A delete leaves versioned tombstones on both.
* **Reads** ask both owners at once (and the stand-in while a home node is
  warming); the newest version wins, and an owner holding something older
  or nothing is repaired by CAS. Reading both is what makes a read right
  even when clients disagree about which nodes are up: a client that
  failed over wrote the other home node too, so the newest write is always
  among the nodes asked. It costs a second read per ``get``; the two go
  out together, so latency is that of the slower node (README: Backup mode).
* A stand-in's copy says which home node it stands in for; the writer wrote
  the other one too. So when that other home node is asked and holds
  nothing (and has not lost its keys to a restart since), a live value
  copy is older than something that has expired there, a short-lived
  write or a delete's tombstone: it counts for nothing. (Had the same
  write expired, the copy, which keeps its expiry, would read as a
  tombstone; a tombstone copy always counts.) Without this, a client that
  alone lost a home node would keep (and keep alive) its copy of a value
  that the clients that saw every node have since replaced and let expire.
* A node that returns after being down is **warming**: what it holds may
  predate writes made while it was away, so when no other node asked holds
  the key, its item is believed only if the stand-in (which took those
  writes) was asked too, if another warming node holds the same version, if
  it was written after the node returned, or if the node restarted empty
  (then everything on it is newer than its return).

This module is the data path: placement, reads, writes, read-modify-writes
and the multi-key calls. Bringing a returned node back to two copies of
every key (each client settles the keys it hinted for the node; when a node
restarted empty, one client *rebuilds* it, copying back every key it
co-owns from the other owner; :meth:`BackupEngine.wait_redundant` waits
until that is done) is :class:`~memring.engine.rebuild.RebuildMixin`, in
:mod:`memring.engine.rebuild`, which :class:`BackupEngine` inherits.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from typing import Any

from memring.engine import moves, mutations
from memring.engine.base import (
    CAS_ATTEMPTS,
    MISSING,
    cas_token,
    check_expire,
    check_ignored,
    check_noreply,
    gets_instead,
    is_tombstone_flags,
)
from memring.engine.health import NodeState
from memring.engine.ops import Call, Op
from memring.engine.rebuild import RebuildMixin
from memring.engine.versions import (
    FLAG_FOR_BACKUP,
    FLAG_FOR_PRIMARY,
    Kind,
    Stored,
    absolute_expiry,
    encode,
    expiry_from_ttl,
    newest,
    relative_expiry,
    tombstone,
    version_ms,
)
from memring.errors import (
    ClusterError,
    ConfigError,
    MemringError,
    MultiKeyError,
    NodeUnavailable,
    ServerError,
)
from memring.hashring import Node

__all__ = ["BackupEngine"]

log = logging.getLogger("memring")

Item = tuple[bytes, int]


class BackupEngine(RebuildMixin):
    """Two copies of every key (see the module docstring); the rebuild of a
    returned node is inherited from :class:`~memring.engine.rebuild.RebuildMixin`."""

    VERIFY_READS = True

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.failover.mode != "next":
            raise ConfigError("BackupClient needs Failover('next'); it always fails over")
        if len(self.ring) < 2:
            raise ConfigError("BackupClient needs at least two servers")

    # ------------------------------------------------------------------
    # placement
    def home_pair(self, kb: bytes) -> list[Node]:
        return self.ring.nodes_for(kb, 2)

    def owners(self, kb: bytes, home: list[Node] | None = None) -> list[Node]:
        """The first two nodes of ``kb``'s preference list that are not down."""
        pair = home or self.home_pair(kb)
        is_down = self.health.is_down
        if not is_down(pair[0]) and not is_down(pair[1]):
            return pair
        out = [n for n in self.ring.nodes_for(kb, len(self.ring)) if not is_down(n)][:2]
        if not out:
            raise ClusterError(f"no live node can take key {kb!r}")
        return out

    def stand_in(self, kb: bytes) -> Node | None:
        """The node that takes ``kb`` while one of its home pair is down."""
        for node in self.ring.nodes_for(kb, len(self.ring))[2:]:
            if not self.health.is_down(node):
                return node
        return None

    def read_plan(self, kb: bytes) -> list[Node]:
        """The nodes a read of ``kb`` asks: its owners, and while a home node is
        warming the stand-in too (it holds what was written during that outage)."""
        home = self.home_pair(kb)
        owners = self.owners(kb, home)
        if any(self.health.state(n) is NodeState.WARMING for n in home):
            extra = self.stand_in(kb)
            if extra is not None and extra not in owners:
                return [*owners, extra]
        return owners

    def stands_for(self, home: Sequence[Node]) -> int:
        """The ``FLAG_FOR_*`` bits of a copy written now: the home nodes not up."""
        state = self.health.state
        return ((FLAG_FOR_PRIMARY if state(home[0]) is not NodeState.UP else 0)
                | (FLAG_FOR_BACKUP if state(home[1]) is not NodeState.UP else 0))

    def counted(self, home: Sequence[Node], per: Mapping[Node, Stored | None]
                ) -> Iterator[tuple[Node, Stored]]:
        """The replies in ``per`` (node -> item read) that count: the items, less a
        stand-in's copy that the other home node disowns (see the module docstring)."""
        for node, st in per.items():
            if st is not None and (node in home or not self._disowned(st, home, per)):
                yield node, st

    def _disowned(self, st: Stored, home: Sequence[Node],
                  per: Mapping[Node, Stored | None]) -> bool:
        """Is ``st``, read from a stand-in, a live value copy whose other home node
        was asked (its reply in ``per``) and holds nothing?

        A tombstone copy (a delete's, or a copy whose own value expired) is never
        disowned: it can only hide older items, such as a warming node's.
        """
        if st.kind is not Kind.VALUE:
            return False
        if st.stands_for == FLAG_FOR_PRIMARY:
            partner = home[1]
        elif st.stands_for == FLAG_FOR_BACKUP:
            partner = home[0]
        else:
            return False  # not known, or written with both home nodes away
        return partner in per and per[partner] is None and self.holds_its_keys(partner)

    def believable(self, node: Node, st: Stored) -> bool:
        """May ``node``'s item count with nothing to corroborate it? (See the module docstring.)"""
        if self.believable_source(node):
            return True
        return version_ms(st.version) > self.health.record(node).trust_after_ms

    # ------------------------------------------------------------------
    # reads
    def merge(self, kb: bytes, nodes: Sequence[Node], raws: Sequence[Any]
              ) -> tuple[Stored | None, dict[Node, Stored | None]]:
        """The newest item among ``nodes``' replies (each raw or None), and each node's."""
        per: dict[Node, Stored | None] = {}
        best: Stored | None = None
        doubtful: list[Stored] = []
        for node, raw in zip(nodes, raws, strict=True):
            per[node] = None if raw is None else self.stored(raw, kb, node)
        home = self.home_pair(kb)
        for node, st in self.counted(home, per):
            if self.believable(node, st):
                best = newest(best, st)
            else:
                doubtful.append(st)
        if not doubtful:
            return best, per
        # A write made while a warming node was away went to the other home
        # node and to the stand-in. Its item is believed next to a believable
        # item (it only matters if it is newer, and then it is a write the
        # others missed), where the stand-in was asked too (it would hold any
        # such write), or where another node holds the very same version.
        # Alone, it may predate a write whose copies are out of reach: a miss.
        stand_in_asked = any(n not in home for n in nodes)
        for st in doubtful:
            if best is not None or stand_in_asked or sum(
                    1 for other in per.values()
                    if other is not None and other.version == st.version) > 1:
                best = newest(best, st)
        return best, per

    def _read(self, kb: bytes, repair: bool = True,
              first: tuple[list[Node], list[Any]] | None = None
              ) -> Op[tuple[Stored | None, list[Node]]]:
        """The key's newest item (None: a miss) and its owners; owners behind are repaired.

        ``first``: the nodes the face's fast path read, and their replies.
        """
        last: NodeUnavailable | None = None
        for _ in range(len(self.ring) + 1):
            if first is not None:
                plan, results = first
                first = None
            else:
                plan = self.read_plan(kb)
                results = yield [Call(n, "get", (kb,)) for n in plan]
            error = self._first_error(plan, results)
            if error is not None:
                last = error
                continue  # a node went down: ask again, of the nodes that own it now
            best, per = self.merge(kb, plan, results)
            owners = plan[:2]
            if repair and best is not None:
                behind = [n for n in owners if per[n] is None or newest(per[n], best) is not per[n]]
                if behind:
                    yield from self._repair(kb, best, per, behind)
            return best, owners
        assert last is not None
        raise last

    def _first_error(self, nodes: Sequence[Node], results: Sequence[Any]
                     ) -> NodeUnavailable | None:
        """The first failure of a batch if it was a node going down (worth asking again);
        any other error is raised."""
        found: NodeUnavailable | None = None
        for node, r in zip(nodes, results, strict=True):
            if isinstance(r, MemringError):
                if isinstance(r, NodeUnavailable) and self.health.is_down(node):
                    found = found or r
                else:
                    raise r
        return found

    def _repair(self, kb: bytes, best: Stored, per: Mapping[Node, Stored | None],
                nodes: Sequence[Node]) -> Op[None]:
        """Put ``best`` (read from one of ``per``'s nodes) onto ``nodes``, the owners
        found behind; best effort.

        The source is asked for its remaining TTL too: memcached's own ``touch``
        may have changed it since the item was written.
        """
        source = next(n for n, st in per.items() if st is best)
        home = self.home_pair(kb)
        try:
            results = yield [Call(n, "meta_many", ([kb],)) for n in (source, *nodes)]
            now = self.clock.time()
            mine = results[0]
            if isinstance(mine, MemringError) or kb not in mine:
                return  # gone from the source meanwhile: nothing to copy
            if not best.copy:
                best = best._replace(expiry=expiry_from_ttl(mine[kb][2], now))
            calls: list[Call] = []
            for node, got in zip(nodes, results[1:], strict=True):
                if isinstance(got, MemringError):
                    continue
                cur = got.get(kb)
                current = None if cur is None else self.stored(cur[0], kb, node)
                cmd = moves.plan(kb, best, current, None if cur is None else cur[1], now,
                                 self.failover.tombstone_ttl, self._may_add(node, best))
                if cmd is not None:
                    if node not in home:
                        # A stand-in holds copies only: their trailer's expiry is
                        # honoured on read even when a keepalive extends their life.
                        raw, expire = self._stand_in_form(best, now, self.stands_for(home))
                        cmd = (cmd[0], (kb, raw, *cmd[1][2:-1], expire))
                    calls.append(Call(node, cmd[0], cmd[1]))
            if calls:
                done = yield calls
                self.counters["read_repairs"] += sum(r is True for r in done)
                # A copy on a stand-in is this client's to retire once home is back.
                self._hint_down_homes(kb, home, best.version,
                                      [c.node for c, r in zip(calls, done, strict=True)
                                       if r is True and c.node not in home])
        except MemringError as exc:  # the read itself has its answer
            log.debug("repair of %r failed: %s", kb, exc)

    @staticmethod
    def _as_copy(st: Stored, stands_for: int) -> Item:
        if st.kind is Kind.VALUE:
            return encode(st.item, st.version, st.expiry, copy=True, stands_for=stands_for)
        return tombstone(st.version, copy=True, stands_for=stands_for)

    def _stand_in_form(self, st: Stored, now: float, stands_for: int) -> tuple[Item, int]:
        """``(raw item, expire)`` to store ``st`` on a node that does not own its
        key, standing in for the home nodes of ``stands_for``: a copy capped at
        ``failover_ttl``, a tombstone copy once expired."""
        if st.kind is Kind.VALUE and relative_expiry(st.expiry, now) < 0:
            st = st._replace(kind=Kind.TOMBSTONE)
        return self._as_copy(st, stands_for), self.failover.failover_ttl

    def get(self, key: str | bytes, default: Any = None) -> Op[Any]:
        """The value of ``key``, or ``default`` on a miss."""
        kb = self.key(key)
        best, owners = yield from self._read(kb)
        return self.live_value(best, kb, default, owners[0])

    def get_kb(self, kb: bytes, default: Any,
               first: tuple[list[Node], list[Any]] | None = None) -> Op[Any]:
        """:meth:`get` of a checked key, after the face's fast path read ``first``."""
        best, owners = yield from self._read(kb, first=first)
        return self.live_value(best, kb, default, owners[0])

    def gets(self, key: str | bytes, default: Any = None,
             cas_default: Any = None) -> Op[tuple[Any, Any]]:
        """``(value, cas_token)`` with the primary's token (the primary repaired first)."""
        kb = self.key(key)
        for _ in range(CAS_ATTEMPTS):
            best, owners = yield from self._read(kb)
            got = (yield from self.one(owners[0], "gets_many", [kb])).get(kb)
            if got is None:
                if best is None or best.kind is Kind.TOMBSTONE:
                    return default, cas_default
                continue  # the repair lost a race: read again
            st = self.stored(got[0], kb, owners[0])
            if best is not None and st.version < best.version:
                continue
            if st.kind is Kind.TOMBSTONE:
                return default, cas_default
            return self.deserialize(kb, st.item[0], st.item[1], owners[0]), got[1]
        raise ServerError(f"too much contention on {kb!r}", key=kb)

    # ------------------------------------------------------------------
    # writes
    def _write_call(self, kb: bytes, node: Node, st: Stored, home: Sequence[Node],
                    now: float) -> Call:
        """The ``set`` that stores ``st`` on ``node``: full life on a home node, a
        copy capped at ``failover_ttl`` on a stand-in."""
        if node in home:
            raw, expire = moves.owner_form(st, now, self.failover.tombstone_ttl)
        else:
            raw, expire = self._stand_in_form(st, now, self.stands_for(home))
        return Call(node, "set", (kb, raw, expire))

    def _replicate(self, kb: bytes, st: Stored, done: Collection[Node] = (),
                   degraded: bool = False) -> Op[bool]:
        """Store ``st`` on every owner of ``kb`` not in ``done``; False if a node refused.

        An owner that turns out to be down is replaced by the next live node.
        """
        stored = set(done)
        home = self.home_pair(kb)
        covered = False
        for _ in range(len(self.ring) + 1):
            owners = self.owners(kb, home)
            todo = [n for n in owners if n not in stored]
            if not todo:
                break
            now = self.clock.time()
            calls = [self._write_call(kb, n, st, home, now) for n in todo]
            extra = [] if covered else self._cover_calls(kb, owners, home, st, now)
            covered = True
            results = yield calls + extra
            refused, lost_one = self._tally(calls, results[:len(calls)], stored)
            if refused:
                return False  # the server refused to store (NOT_STORED)
            degraded = degraded or lost_one
        else:
            raise ClusterError(f"could not store {kb!r}: nodes keep failing")
        if not covered:  # every owner had it already (a delete's own round trip)
            extra = self._cover_calls(kb, self.owners(kb, home), home, st, self.clock.time())
            if extra:
                yield extra
        if degraded:
            self.counters["degraded_writes"] += 1
        self._hint_down_homes(kb, home, st.version, stored)
        return True

    def _cover_calls(self, kb: bytes, owners: Sequence[Node], home: Sequence[Node],
                     st: Stored, now: float) -> list[Call]:
        """While a home node is warming, a write also replaces the stand-in's copy.

        Reads ask the stand-in then (it holds what was written while that node
        was away); without this, once the new write expired, the stand-in's
        older copy would be the newest item a read finds. Best effort: the
        write is acknowledged by its owners alone.
        """
        if not any(self.health.state(n) is NodeState.WARMING for n in home):
            return []
        extra = self.stand_in(kb)
        if extra is None or extra in owners:
            return []
        return [self._write_call(kb, extra, st, home, now)]

    def _tally(self, calls: Sequence[Call], results: Sequence[Any], stored: set[Node]
               ) -> tuple[bool, bool]:
        """Add the nodes whose write succeeded to ``stored``; ``(refused, degraded)``.

        ``refused``: a server answered NOT_STORED. ``degraded``: a node turned
        out to be down. Any other error is raised, unless refused.
        """
        refused = degraded = False
        error: MemringError | None = None
        for call, r in zip(calls, results, strict=True):
            if r is True:
                stored.add(call.node)
            elif r is False:
                refused = True
            elif isinstance(r, NodeUnavailable) and self.health.is_down(call.node):
                degraded = True
            elif isinstance(r, MemringError):
                error = error or r
        if error is not None and not refused:
            raise error
        return refused, degraded

    def _hint_down_homes(self, kb: bytes, home: Sequence[Node], version: int,
                         stored: Collection[Node]) -> None:
        holders = [n for n in stored if n not in home]
        for node in home:
            if self.health.is_down(node) and holders:
                self.hints.add(node, kb, version, holders[0])

    def set(self, key: str | bytes, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> Op[bool]:
        """Store ``value`` on both owners. True once both have it (or the one left)."""
        kb, item, expire, noreply = self._check_store(key, value, expire, noreply, flags)
        ok = yield from self.set_kb(kb, item, expire, self.hlc.now())
        return bool(self.replied(noreply, ok))

    def set_kb(self, kb: bytes, item: Item, expire: int, version: int,
               sent: tuple[list[Call], list[Any]] | None = None) -> Op[bool]:
        """Store a checked key's serialized item at ``version``.

        ``sent``: the face's fast path already wrote these calls and got these
        results (not both True): finish the write from there.
        """
        st = Stored(Kind.VALUE, version, item, absolute_expiry(expire, self.clock.time()), False)
        if sent is None:
            return (yield from self._replicate(kb, st))
        stored: set[Node] = set()
        refused, degraded = self._tally(sent[0], sent[1], stored)
        if refused:
            return False
        return (yield from self._replicate(kb, st, stored, degraded))

    def delete(self, key: str | bytes, noreply: bool | None = None) -> Op[bool]:
        """Tombstones on both owners. True if the key held a value."""
        kb = self.key(key)
        noreply = check_noreply(noreply)
        st = Stored(Kind.TOMBSTONE, self.hlc.now(), (b"", 0), 0, False)
        home = self.home_pair(kb)
        owners = self.owners(kb, home)
        now = self.clock.time()
        calls = []
        for node in owners:
            write = self._write_call(kb, node, st, home, now)
            calls.append(Call(node, "batch", ([("get", (kb,)), ("set", write.args)],)))
        results = yield calls
        stored: set[Node] = set()
        existed: Stored | None = None
        degraded = False
        for call, r in zip(calls, results, strict=True):
            if isinstance(r, MemringError):
                if not (isinstance(r, NodeUnavailable) and self.health.is_down(call.node)):
                    raise r
                degraded = True
                continue
            old, ok = r
            if isinstance(ok, Exception):
                raise ok
            if ok:
                stored.add(call.node)
            if old is not None and not isinstance(old, Exception):
                existed = newest(existed, self.stored(old, kb, call.node))
        yield from self._replicate(kb, st, stored, degraded)
        return bool(self.replied(
            noreply, existed is not None and existed.kind is Kind.VALUE))

    # -- read-modify-write on the primary ----------------------------------
    def _rmw_primary(self, kb: bytes, mutate: mutations.Mutation) -> Op[Any]:
        """Decide on the primary atomically (CAS), then copy the result to the other owner."""
        for _ in range(CAS_ATTEMPTS):
            best, owners = yield from self._read(kb)
            primary = owners[0]
            got = (yield from self.one(primary, "meta_many", [kb])).get(kb)
            now = self.clock.time()
            if got is None:
                if best is not None and best.kind is Kind.VALUE:
                    continue  # the repair lost a race: read again
                kind, plain, abs_expiry, cas = None, (b"", 0), 0, None
            else:
                st = self.stored(got[0], kb, primary)
                if best is not None and st.version < best.version:
                    continue
                kind, plain, cas = st.kind, st.item, got[1]
                abs_expiry = st.expiry if st.copy else expiry_from_ttl(got[2], now)
            result, new_item, new_abs = mutate(kind, plain, abs_expiry)
            if new_item is None:
                return result
            new = Stored(Kind.VALUE, self.hlc.now(), new_item, new_abs, False)
            if relative_expiry(new_abs, now) < 0:
                new = Stored(Kind.TOMBSTONE, new.version, (b"", 0), 0, False)
            write = self._write_call(kb, primary, new, self.home_pair(kb), now)
            _, raw, expire = write.args
            if cas is None:
                ok = yield from self.one(primary, "add", kb, raw, expire)
            else:
                ok = yield from self.one(primary, "cas", kb, raw, cas, expire)
            if not ok:
                continue
            yield from self._replicate(kb, new, done={primary})
            return result
        raise ServerError(f"too much contention on {kb!r}", key=kb)

    def add(self, key: str | bytes, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> Op[bool]:
        """Store ``value`` only if ``key`` has no value, decided on the primary. True if stored."""
        kb, item, expire, noreply = self._check_store(key, value, expire, noreply, flags)
        new_abs = absolute_expiry(expire, self.clock.time())
        ok = yield from self._rmw_primary(kb, mutations.add(item, new_abs))
        return bool(self.replied(noreply, ok))

    def replace(self, key: str | bytes, value: Any, expire: int = 0,
                noreply: bool | None = None, flags: int | None = None) -> Op[bool]:
        """Store ``value`` only if ``key`` has a value. True if stored."""
        kb, item, expire, noreply = self._check_store(key, value, expire, noreply, flags)
        new_abs = absolute_expiry(expire, self.clock.time())
        ok = yield from self._rmw_primary(kb, mutations.replace(item, new_abs))
        return bool(self.replied(noreply, ok))

    def _concat(self, key: str | bytes, value: Any, noreply: Any, append: bool) -> Op[bool]:
        kb = self.key(key)
        noreply = check_noreply(noreply)
        data = self.concat_data(kb, value)
        mutate = mutations.concat(data, append, lambda joined, f: self.serialize(kb, joined, f))
        return bool(self.replied(noreply, (yield from self._rmw_primary(kb, mutate))))

    def append(self, key: str | bytes, value: Any, expire: int = 0,
               noreply: bool | None = None, flags: int | None = None) -> Op[bool]:
        """Append bytes to an existing value (memcached ignores ``expire``/``flags``)."""
        check_ignored(expire, flags)
        return (yield from self._concat(key, value, noreply, True))

    def prepend(self, key: str | bytes, value: Any, expire: int = 0,
                noreply: bool | None = None, flags: int | None = None) -> Op[bool]:
        """Prepend bytes to an existing value (memcached ignores ``expire``/``flags``)."""
        check_ignored(expire, flags)
        return (yield from self._concat(key, value, noreply, False))

    def _arith(self, key: str | bytes, value: Any, incr: bool, noreply: Any) -> Op[int | None]:
        mutations.check_delta(value)
        check_noreply(noreply)
        kb = self.key(key)
        result: int | None = yield from self._rmw_primary(kb, mutations.arith(value, incr))
        return result

    def incr(self, key: str | bytes, value: int, noreply: bool | None = False
             ) -> Op[int | None]:
        """Add ``value`` to a numeric value; the new value, or None if the key is missing."""
        return (yield from self._arith(key, value, True, noreply))

    def decr(self, key: str | bytes, value: int, noreply: bool | None = False
             ) -> Op[int | None]:
        """Subtract ``value`` (floored at 0); the new value, or None if the key is missing."""
        return (yield from self._arith(key, value, False, noreply))

    def touch(self, key: str | bytes, expire: int = 0, noreply: bool | None = None) -> Op[bool]:
        """Give ``key`` a new expiry on both copies. True if the key exists."""
        kb = self.key(key)
        expire = check_expire(expire)
        noreply = check_noreply(noreply)
        pair = self.home_pair(kb)
        if all(self.health.state(n) is NodeState.UP for n in pair) and expire >= 0:
            results = yield [Call(n, "touch_flags", (kb, expire)) for n in pair]
            if not any(isinstance(r, MemringError) for r in results):
                found = [r for r in results if r is not None]
                if len(found) == 2 and not any(is_tombstone_flags(f) for f in found):
                    return bool(self.replied(noreply, True))
                if not found:
                    return bool(self.replied(noreply, False))
                # a copy missing, or a tombstone: the careful way
        new_abs = absolute_expiry(expire, self.clock.time())
        ok = yield from self._rmw_primary(kb, mutations.retouch(new_abs))
        return bool(self.replied(noreply, ok))

    def cas(self, key: str | bytes, value: Any, cas: Any, expire: int = 0,
            noreply: bool | None = False, flags: int | None = None) -> Op[bool | None]:
        """Store ``value`` if the primary's CAS token is still ``cas``.

        True if stored (on both owners), False if the value changed since
        ``gets``, None if the key is gone (deleted, expired or never set).
        """
        kb, item, expire, noreply = self._check_store(key, value, expire, noreply, flags)
        token = cas_token(cas)
        now = self.clock.time()
        new = Stored(Kind.VALUE, self.hlc.now(), item, absolute_expiry(expire, now), False)

        def attempt() -> Op[bool | None]:
            primary = self.owners(kb)[0]
            _, raw, rel = self._write_call(kb, primary, new, self.home_pair(kb), now).args
            ok: bool | None = yield from self.one(primary, "cas", kb, raw, token, rel)
            if ok:
                yield from self._replicate(kb, new, done={primary})
            elif ok is False:  # memcached's NOT_FOUND for a deleted key: ours is a tombstone
                got = yield from self.one(primary, "get", kb)
                if got is None or self.stored(got, kb, primary).kind is not Kind.VALUE:
                    return None
            return ok

        result = yield from self._retrying(attempt)
        return True if noreply else result

    def _retrying(self, attempt: Any) -> Op[Any]:
        """Run ``attempt()`` (an op) again while it fails only because a node went down."""
        last: NodeUnavailable | None = None
        for _ in range(len(self.ring) + 1):
            try:
                return (yield from attempt())
            except NodeUnavailable as exc:
                if exc.node is None or not self.health.is_down(exc.node):
                    raise
                last = exc
        assert last is not None
        raise last

    # ------------------------------------------------------------------
    # multi-key
    def get_many(self, keys: Iterable[str | bytes], gets: bool = False) -> Op[dict[Any, Any]]:
        """The values of ``keys`` that have one, read from both owners of each.

        ``gets=True`` answers as :meth:`gets_many` (pymemcache's ``HashClient``)."""
        if gets_instead(gets):
            return (yield from self.gets_many(keys))
        by_kb = self.keys(keys)
        if not by_kb:
            return {}
        groups: dict[Node, list[bytes]] = defaultdict(list)
        pairs: dict[bytes, list[Node]] = {}
        slow: list[bytes] = []
        for kb in by_kb:
            pair = self.healthy_pair(kb)
            if pair is None:
                slow.append(kb)
            else:
                pairs[kb] = pair
                groups[pair[0]].append(kb)
                groups[pair[1]].append(kb)
        out: dict[Any, Any] = {}
        failed: dict[bytes, Exception] = {}
        calls = [Call(node, "get_many", (kbs,)) for node, kbs in groups.items()]
        results = yield calls
        replies: dict[Node, Any] = {}
        for call, got in zip(calls, results, strict=True):
            if isinstance(got, MemringError):
                slow.extend(call.args[0])  # read again one by one, below
            else:
                replies[call.node] = got
        behind: list[tuple[bytes, Stored, dict[Node, Stored | None], list[Node]]] = []
        for kb, pair in pairs.items():
            first, second = replies.get(pair[0]), replies.get(pair[1])
            if first is None or second is None:
                continue  # in ``slow``
            raws = [first.get(kb), second.get(kb)]
            try:
                if raws[0] == raws[1]:  # the same item on both (or neither): as get's fast path
                    if raws[0] is not None:
                        value = self.home_value(kb, raws[0], MISSING, pair[0])
                        if value is not MISSING:
                            out[by_kb[kb]] = value
                    continue
                best, per = self.merge(kb, pair, raws)
                value = self.live_value(best, kb, MISSING, pair[0])
            except MemringError as exc:
                failed[kb] = exc
                continue
            if value is not MISSING:
                out[by_kb[kb]] = value
            if best is not None:
                lag = [n for n in pair if per[n] is None or newest(per[n], best) is not per[n]]
                if lag:
                    behind.append((kb, best, per, lag))
        for kb, best, per, lag in behind:
            yield from self._repair(kb, best, per, lag)
        for kb in dict.fromkeys(slow):
            try:
                best, owners = yield from self._read(kb)
                value = self.live_value(best, kb, MISSING, owners[0])
            except MemringError as exc:
                failed[kb] = exc
                continue
            if value is not MISSING:
                out[by_kb[kb]] = value
        return self.finish_many("get_many", out, failed, by_kb)

    get_multi = get_many

    def healthy_pair(self, kb: bytes) -> list[Node] | None:
        """The key's home pair if both are up (not down, not warming): the common case."""
        pair = self.home_pair(kb)
        state = self.health.state
        if state(pair[0]) is NodeState.UP and state(pair[1]) is NodeState.UP:
            return pair
        return None

    def gets_many(self, keys: Iterable[str | bytes]) -> Op[dict[Any, tuple[Any, Any]]]:
        """``{key: (value, cas_token)}``, tokens from each key's primary."""
        by_kb = self.keys(keys)
        out: dict[Any, tuple[Any, Any]] = {}
        failed: dict[bytes, Exception] = {}
        groups: dict[Node, list[bytes]] = defaultdict(list)
        slow: list[bytes] = []
        for kb in by_kb:
            pair = self.healthy_pair(kb)
            if pair is None:
                slow.append(kb)
            else:
                groups[pair[0]].append(kb)
        calls = [Call(node, "gets_many", (kbs,)) for node, kbs in groups.items()]
        calls += [Call(node, "get_many", (kbs,)) for node, kbs in self._backups_of(groups).items()]
        results = yield calls
        primary_replies: dict[bytes, tuple[Node, Any]] = {}
        backup_replies: dict[bytes, Any] = {}
        n_primary = len(groups)
        for i, (call, got) in enumerate(zip(calls, results, strict=True)):
            if isinstance(got, MemringError):
                slow.extend(call.args[0])
                continue
            for kb in call.args[0]:
                if i < n_primary:
                    primary_replies[kb] = (call.node, got.get(kb))
                else:
                    backup_replies[kb] = got.get(kb)
        slow_set = set(slow)
        for kb in by_kb:
            if kb in slow_set or kb not in primary_replies or kb not in backup_replies:
                continue
            node, got = primary_replies[kb]
            try:
                mine = None if got is None else self.stored(got[0], kb, node)
                theirs = backup_replies[kb]
                other = None if theirs is None else self.stored(theirs, kb, node)
            except MemringError as exc:
                failed[kb] = exc
                continue
            if mine is None or (other is not None and newest(mine, other) is not mine
                                and other.version != mine.version):
                if mine is None and other is None:
                    continue
                slow.append(kb)  # the copies differ: the single-key path repairs first
                continue
            if mine.kind is Kind.TOMBSTONE:
                continue
            try:
                out[by_kb[kb]] = (self.deserialize(kb, mine.item[0], mine.item[1], node), got[1])
            except MemringError as exc:
                failed[kb] = exc
        for kb in dict.fromkeys(k for k in slow if k not in out):
            try:
                value, token = yield from self.gets(by_kb[kb], MISSING)
            except MemringError as exc:
                failed[kb] = exc
                continue
            if value is not MISSING:
                out[by_kb[kb]] = (value, token)
        return self.finish_many("gets_many", out, failed, by_kb)

    def _backups_of(self, groups: Mapping[Node, list[bytes]]) -> dict[Node, list[bytes]]:
        out: dict[Node, list[bytes]] = defaultdict(list)
        for kbs in groups.values():
            for kb in kbs:
                out[self.home_pair(kb)[1]].append(kb)
        return out

    def set_many(self, values: Mapping[str | bytes, Any], expire: int = 0,
                 noreply: bool | None = None, flags: int | None = None) -> Op[list[Any]]:
        """Store many values on both owners each, batched per node."""
        by_kb, items = self.serialize_many(values, flags)
        expire = check_expire(expire)
        check_noreply(noreply)
        version = self.hlc.now()
        abs_expiry = absolute_expiry(expire, self.clock.time())
        sts = {kb: Stored(Kind.VALUE, version, item, abs_expiry, False)
               for kb, item in items.items()}
        not_stored, failed = yield from self._replicate_many(sts)
        return list(self.finish_many("set_many", [by_kb[kb] for kb in not_stored], failed,
                                     by_kb))

    set_multi = set_many

    def delete_many(self, keys: Iterable[str | bytes], noreply: bool | None = None) -> Op[bool]:
        """Tombstones for every key on both owners, batched per node. True if all were written."""
        by_kb = self.keys(keys)
        check_noreply(noreply)
        st = Stored(Kind.TOMBSTONE, self.hlc.now(), (b"", 0), 0, False)
        _, failed = yield from self._replicate_many(dict.fromkeys(by_kb, st))
        if failed and not self.failover.return_default:
            raise MultiKeyError(f"delete_many: {len(failed)} of {len(by_kb)} keys failed",
                                results=False, failed={by_kb[kb]: e for kb, e in failed.items()})
        return not failed

    delete_multi = delete_many

    def _replicate_many(self, items: Mapping[bytes, Stored]
                        ) -> Op[tuple[list[bytes], dict[bytes, Exception]]]:
        """:meth:`_replicate` for many keys: one ``set_many`` per node (and expiry), all
        nodes at once. Returns the keys a server refused and the keys that failed."""
        per_key: dict[bytes, list[Node]] = {}
        batches: dict[tuple[Node, int], dict[bytes, Item]] = defaultdict(dict)
        now = self.clock.time()
        for kb, st in items.items():
            home = self.home_pair(kb)
            owners = per_key[kb] = self.owners(kb, home)
            for call in [self._write_call(kb, node, st, home, now) for node in owners] + (
                    self._cover_calls(kb, owners, home, st, now)):
                _, raw, rel = call.args
                batches[(call.node, rel)][kb] = raw
        calls = [Call(node, "set_many", (batch, rel)) for (node, rel), batch in batches.items()]
        results = yield calls
        outcome: dict[tuple[Node, bytes], Any] = {}
        for call, got in zip(calls, results, strict=True):
            refused = set(got) if isinstance(got, list) else set()
            for kb in call.args[0]:
                outcome[(call.node, kb)] = got if isinstance(got, MemringError) else (
                    kb not in refused)
        not_stored: list[bytes] = []
        failed: dict[bytes, Exception] = {}
        for kb, owners in per_key.items():
            results_kb = [outcome[(node, kb)] for node in owners]
            done = {node for node, r in zip(owners, results_kb, strict=True) if r is True}
            if len(done) == len(owners):
                self._hint_down_homes(kb, self.home_pair(kb), items[kb].version, done)
                continue
            if any(r is False for r in results_kb):
                not_stored.append(kb)
                continue
            degraded = any(isinstance(r, NodeUnavailable) and self.health.is_down(node)
                           for node, r in zip(owners, results_kb, strict=True))
            try:  # an owner failed: store this key again, on whoever owns it now
                if not (yield from self._replicate(kb, items[kb], done, degraded)):
                    not_stored.append(kb)
            except MemringError as exc:
                failed[kb] = exc
        return not_stored, failed
