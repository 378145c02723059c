"""The single-copy engine: ring routing, failover, and Invariant S with versions.

Where a key lives, by the state of its home node as this client sees it
(:mod:`memring.engine.health`):

* **UP** — every call goes to the home node only: one round trip. Writes
  are plain ``set``s of a versioned item (:mod:`memring.engine.versions`);
  a delete leaves a tombstone for ``tombstone_ttl`` instead of nothing.
* **DOWN** — never contacted. With ``Failover("next")`` the key lives on
  its *failover node* (the first node after home in its preference list
  that is not down). Writes there are *copies*, versioned like any write,
  their life capped at ``failover_ttl``; this client keeps them alive while
  home stays down and remembers each key it wrote (a *hint*).
* **WARMING** — home answers again, but may hold values older than copies
  written elsewhere during its outage (it hung, or another client saw it
  down when this one did not). For ``failover_ttl`` (+ a margin) reads ask
  home and the node after it at once, and the newer version wins (and is
  moved home). If that node is down, home's item is believed only if it
  was written after home returned; otherwise the read is a miss. Writes
  go home: being newer, they win every later comparison.

When home returns, each client *hands off* its hints: a copy newer than
what home holds is moved home with CAS; a copy that is gone (expired,
evicted, its node lost) is replaced at home by a tombstone, if home holds
something older, so no client reads that older value as current. After the
window no copy can exist, and home alone is right again.

Why versions: clients do not see faults alike. One process's call times
out and it fails over; another's never did, and it reads and writes home
directly. Versions make that safe: nothing is ever moved over a newer
write, and a delete's tombstone outranks every older copy. What a client
that never saw the fault can read, until the one that failed over hands
off (well under a second after home answers again), is the value home
held before: the README's Invariant S section states this bound and the
``verify_reads`` mode that removes it.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from memring.engine import mutations
from memring.engine.base import (
    CAS_ATTEMPTS,
    MISSING,
    Engine,
    cas_token,
    check_expire,
    check_ignored,
    check_noreply,
    gets_instead,
)
from memring.engine.health import NodeState
from memring.engine.hints import Hint
from memring.engine.ops import Call, Op
from memring.engine.versions import (
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
    MemringError,
    NodeUnavailable,
    ServerError,
)
from memring.hashring import Node

__all__ = ["SingleEngine"]

log = logging.getLogger("memring")

Item = tuple[bytes, int]


class SingleEngine(Engine):
    """One copy of every key (see the module docstring)."""

    # ------------------------------------------------------------------
    # routing
    def _pair(self, kb: bytes) -> tuple[Node, Node | None]:
        pair = self.ring.nodes_for(kb, 2)
        return pair[0], pair[1] if len(pair) > 1 else None

    def _route(self, kb: bytes, default: Any,
               up: Callable[[Node], Op[Any]],
               down: Callable[[Node, Node], Op[Any]],
               warm: Callable[[Node], Op[Any]] | None = None,
               failed: MemringError | None = None) -> Op[Any]:
        """Run one single-key operation wherever ``kb`` lives now.

        ``up(home)``, ``down(failover node, home)``, ``warm(home)`` (default:
        ``up``). ``failed``: the face's fast path already called home and got
        this error (its health is recorded).
        """
        home = self.ring.node_for(kb)
        mode = self.failover.mode
        if failed is not None:
            if not isinstance(failed, NodeUnavailable):
                raise failed
            if mode == "fail":
                return self.unavailable(failed, default)
            if not self.health.is_down(home):
                raise failed  # not down yet (failure_threshold > 1): not failed over
        last: NodeUnavailable | None = None
        for _ in range(len(self.ring) + 1):
            state = self.health.state(home)
            try:
                if state is NodeState.UP:
                    return (yield from up(home))
                if state is NodeState.DOWN:
                    if mode == "fail":
                        return self.unavailable(
                            NodeUnavailable("node is down", node=home, key=kb), default)
                    f = self.failover_node(kb, home)
                    self.health.record_failover(home)
                    return (yield from down(f, home))
                return (yield from (warm or up)(home))
            except NodeUnavailable as exc:
                last = exc
                if mode == "fail":
                    return self.unavailable(exc, default)
                if exc.node is None or not self.health.is_down(exc.node):
                    raise
        assert last is not None
        raise last

    def _trusted(self, home: Node, st: Stored) -> bool:
        """May a warming ``home``'s item be believed with nothing to compare it to?"""
        return version_ms(st.version) > self.health.record(home).trust_after_ms

    # ------------------------------------------------------------------
    # reads
    def _read(self, kb: bytes, failed: MemringError | None = None
              ) -> Op[tuple[Stored | None, Node | None]]:
        """The key's current item (None: a miss) and the node it came from."""

        def up(home: Node) -> Op[tuple[Stored | None, Node | None]]:
            if self.verify_reads:
                return (yield from self._read_both(kb, home, False))
            raw = yield from self.one(home, "get", kb)
            return (None if raw is None else self.stored(raw, kb, home)), home

        def down(f: Node, home: Node) -> Op[tuple[Stored | None, Node | None]]:
            raw = yield from self.one(f, "get", kb)
            return (None if raw is None else self.stored(raw, kb, f)), f

        def warm(home: Node) -> Op[tuple[Stored | None, Node | None]]:
            return (yield from self._read_both(kb, home, True))

        got: tuple[Stored | None, Node | None] = yield from self._route(
            kb, (None, None), up, down, warm, failed)
        return got

    def _read_both(self, kb: bytes, home: Node, warming: bool
                   ) -> Op[tuple[Stored | None, Node | None]]:
        """Read home and the node after it at once; the newer wins and is moved home."""
        _, partner = self._pair(kb)
        if partner is None or self.health.is_down(partner):
            raw = yield from self.one(home, "get", kb)
            st = None if raw is None else self.stored(raw, kb, home)
            if warming and st is not None and st.kind is Kind.VALUE and not self._trusted(
                    home, st):
                return None, home  # the newer copy may be on the node that is down
            return st, home
        r_partner, r_home = yield [Call(partner, "get", (kb,)), Call(home, "get", (kb,))]
        for r in (r_home, r_partner):
            if isinstance(r, MemringError):
                raise r
        mine = None if r_home is None else self.stored(r_home, kb, home)
        theirs = None if r_partner is None else self.stored(r_partner, kb, partner)
        best = newest(mine, theirs)
        if best is not None and best is theirs and (mine is None or best.version > mine.version):
            try:  # move it home (best effort: the read has its answer)
                if (yield from self._put(home, kb, best)):
                    self.counters["read_repairs"] += 1
            except MemringError as exc:
                log.debug("moving %r home to %s failed: %s", kb, home.label, exc)
            return best, partner
        return best, home

    def get(self, key: str | bytes, default: Any = None) -> Op[Any]:
        """The value of ``key``, or ``default`` on a miss."""
        kb = self.key(key)
        st, node = yield from self._read(kb)
        return self.live_value(st, kb, default, node)

    def get_kb(self, kb: bytes, default: Any, failed: MemringError | None = None) -> Op[Any]:
        """:meth:`get` of a checked key, after the face's fast path ``failed``."""
        st, node = yield from self._read(kb, failed)
        return self.live_value(st, kb, default, node)

    def gets(self, key: str | bytes, default: Any = None,
             cas_default: Any = None) -> Op[tuple[Any, Any]]:
        """``(value, cas_token)``, or ``(default, cas_default)`` on a miss."""
        kb = self.key(key)

        def up(home: Node) -> Op[Any]:
            return (yield from self.one(home, "gets_many", [kb])).get(kb)

        def down(f: Node, home: Node) -> Op[Any]:
            return (yield from up(f))

        def warm(home: Node) -> Op[Any]:
            yield from self._settle_key(kb, home)
            return (yield from up(home))

        got = yield from self._route(kb, None, up, down, warm)
        if got is None:
            return default, cas_default
        node = self.ring.node_for(kb)
        value = self.value(kb, got[0], MISSING, node)
        return (default, cas_default) if value is MISSING else (value, got[1])

    def _settle_key(self, kb: bytes, home: Node) -> Op[None]:
        """Before a read-modify-write at a warming home: move a newer copy home first."""
        _, partner = self._pair(kb)
        if partner is None or self.health.is_down(partner):
            return
        raw = yield from self.one(partner, "get", kb)
        if raw is not None:
            st = self.stored(raw, kb, partner)
            if (yield from self._put(home, kb, st)):
                self.counters["settled"] += 1

    # ------------------------------------------------------------------
    # writes
    def set(self, key: str | bytes, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> Op[bool]:
        """Store ``value``. True once a node has acknowledged it."""
        kb, item, expire, noreply = self._check_store(key, value, expire, noreply, flags)
        ok = yield from self.set_kb(kb, item, expire, self.hlc.now())
        return bool(self.replied(noreply, ok))

    def set_kb(self, kb: bytes, item: Item, expire: int, version: int,
               failed: MemringError | None = None) -> Op[bool]:
        """Store a checked key's serialized item at ``version``.

        A value that is expired already (``expire < 0``, or a Unix time past:
        Django's ``timeout=0``) is a delete: it leaves a tombstone, so no older
        copy elsewhere can come back in its place.
        """
        now = self.clock.time()
        abs_expiry = absolute_expiry(expire, now)
        if abs_expiry and abs_expiry <= now:
            return (yield from self._delete_kb(kb, version))

        def up(home: Node) -> Op[bool]:
            return bool((yield from self.one(home, "set", kb, encode(item, version, abs_expiry),
                                             expire)))

        def down(f: Node, home: Node) -> Op[bool]:
            st = Stored(Kind.VALUE, version, item, abs_expiry, True)
            return bool((yield from self._write_copy(f, home, kb, st)))

        def warm(home: Node) -> Op[bool]:
            st = Stored(Kind.VALUE, version, item, abs_expiry, False)
            return bool((yield from self._warm_write(
                kb, home, "set", (kb, encode(item, version, abs_expiry), expire), st)))

        return bool((yield from self._route(kb, False, up, down, warm, failed=failed)))

    def _copy_raw(self, st: Stored) -> Item:
        """``st`` as a copy on a node that does not own its key."""
        if st.kind is Kind.VALUE and relative_expiry(st.expiry, self.clock.time()) >= 0:
            return encode(st.item, st.version, st.expiry, copy=True)
        return tombstone(st.version, copy=True)

    def _cover(self, kb: bytes, st: Stored) -> Op[Call | None]:
        """The CAS that replaces an older copy of ``kb`` on the node after its warming
        home by ``st``, or None: clients that still see home down read that node."""
        _, partner = self._pair(kb)
        if partner is None or self.health.is_down(partner):
            return None
        got = (yield from self.one(partner, "meta_many", [kb])).get(kb)
        if got is None:
            return None
        current = self.stored(got[0], kb, partner)
        if not current.copy or current.version >= st.version:
            return None
        return Call(partner, "cas", (kb, self._copy_raw(st), got[1], self.failover.failover_ttl))

    def _warm_write(self, kb: bytes, home: Node, method: str, args: tuple[Any, ...],
                    st: Stored) -> Op[Any]:
        """A write at a warming home, with any older copy of the key on the node after
        it replaced in the same round trip (see :meth:`_cover`)."""
        cover = yield from self._cover(kb, st)
        results = yield [Call(home, method, args)] + ([cover] if cover is not None else [])
        if isinstance(results[0], MemringError):
            raise results[0]
        return results[0]

    def _covered(self, kb: bytes, st: Stored) -> Op[None]:
        """After a read-modify-write at a warming home: replace an older copy (best effort)."""
        try:
            cover = yield from self._cover(kb, st)
            if cover is not None:
                yield [cover]
        except MemringError as exc:
            log.debug("replacing the copy of %r failed: %s", kb, exc)

    def _write_copy(self, f: Node, home: Node, kb: bytes, st: Stored,
                    cas: bytes | None = None, add: bool = False) -> Op[bool | None]:
        """Store ``st`` on failover node ``f`` as a copy for ``home``; hint it.

        ``set`` it, or ``add`` it, or swap it in by CAS token ``cas``; False
        if the server refused (another write got there first).
        """
        raw = self._copy_raw(st)
        ttl = self.failover.failover_ttl
        if cas is not None:
            ok = yield from self.one(f, "cas", kb, raw, cas, ttl)
        else:
            ok = yield from self.one(f, "add" if add else "set", kb, raw, ttl)
        if not ok:
            refused: bool | None = ok
            return refused
        self.counters["failover_writes"] += 1
        yield from self._copied(home, f, kb, st.version)
        return True

    def _copied(self, home: Node, f: Node, kb: bytes, version: int) -> Op[None]:
        """Record that ``kb`` has a copy on ``f``; settle it now if ``home`` just returned.

        The hint is taken after the copy is written and the state read after
        the hint: either the handoff takes this hint (and finds the copy), or
        home was back before the hint was recorded and this call settles it.
        """
        self.hints.add(home, kb, version, f)
        if not self.health.is_down(home):
            left = yield from self._handoff_batch(home, [(kb, Hint(version, f))])
            if left:
                self._due(home, 0.0)
            else:
                self.hints.discard(home, kb, version)

    def delete(self, key: str | bytes, noreply: bool | None = None) -> Op[bool]:
        """Delete ``key`` (leaving a tombstone). True if it held a value."""
        kb = self.key(key)
        noreply = check_noreply(noreply)
        existed = yield from self._delete_kb(kb, self.hlc.now())
        return bool(self.replied(noreply, existed))

    def _delete_kb(self, kb: bytes, version: int) -> Op[bool]:
        """Leave a tombstone for ``kb`` at ``version``; True if it held a value."""
        mark = tombstone(version)
        tomb_ttl = self.failover.tombstone_ttl
        ops = [("get", (kb,)), ("set", (kb, mark, tomb_ttl))]

        def existed(old: Any, stored: Any, node: Node) -> bool:
            if isinstance(stored, Exception):
                raise stored
            return (old is not None and not isinstance(old, Exception)
                    and self.stored(old, kb, node).kind is Kind.VALUE)

        def up(home: Node) -> Op[bool]:
            old, stored = yield from self.one(home, "batch", ops)
            return existed(old, stored, home)

        def down(f: Node, home: Node) -> Op[bool]:
            st = Stored(Kind.TOMBSTONE, version, (b"", 0), 0, True)
            return bool((yield from self._write_copy(f, home, kb, st)))

        def warm(home: Node) -> Op[bool]:
            st = Stored(Kind.TOMBSTONE, version, (b"", 0), 0, False)
            old, stored = yield from self._warm_write(kb, home, "batch", (ops,), st)
            return existed(old, stored, home)

        return bool((yield from self._route(kb, False, up, down, warm)))

    def _rmw(self, node: Node, kb: bytes, mutate: mutations.Mutation, copy_for: Node | None,
             cover: bool = False) -> Op[Any]:
        """An atomic read-modify-write of ``kb`` on ``node`` (a CAS loop).

        ``copy_for``: ``node`` holds ``kb`` as a failover copy for that home.
        ``cover``: ``node`` is a warming home: replace an older copy elsewhere after.
        """
        for _ in range(CAS_ATTEMPTS):
            got = (yield from self.one(node, "meta_many", [kb])).get(kb)
            now = self.clock.time()
            if got is None:
                kind, plain, abs_expiry, cas = None, (b"", 0), 0, None
            else:
                st = self.stored(got[0], kb, node)
                kind, plain, cas = st.kind, st.item, got[1]
                # A copy's own expiry is in its trailer; an owner's is memcached's TTL.
                abs_expiry = st.expiry if st.copy else _expiry_of(got[2], now)
            result, new_item, new_abs = mutate(kind, plain, abs_expiry)
            if new_item is None:
                return result
            version = self.hlc.now()
            if copy_for is not None:
                st = Stored(Kind.VALUE, version, new_item, new_abs, True)
                ok = yield from self._write_copy(node, copy_for, kb, st, cas, add=cas is None)
            else:
                rel = relative_expiry(new_abs, now)
                if rel >= 0:
                    new = Stored(Kind.VALUE, version, new_item, new_abs, False)
                    raw = encode(new_item, version, new_abs)
                else:  # expired at once: it is a delete
                    new = Stored(Kind.TOMBSTONE, version, (b"", 0), 0, False)
                    raw, rel = tombstone(version), self.failover.tombstone_ttl
                if cas is None:
                    ok = yield from self.one(node, "add", kb, raw, rel)
                else:
                    ok = yield from self.one(node, "cas", kb, raw, cas, rel)
                if ok and cover:
                    yield from self._covered(kb, new)
            if ok:
                return result
        raise ServerError(f"too much contention on {kb!r}", node=node, key=kb)

    def _mutate(self, kb: bytes, default: Any, mutate: mutations.Mutation) -> Op[Any]:
        """A read-modify-write of ``kb`` wherever it lives now."""

        def up(home: Node) -> Op[Any]:
            return (yield from self._rmw(home, kb, mutate, None))

        def down(f: Node, home: Node) -> Op[Any]:
            return (yield from self._rmw(f, kb, mutate, home))

        def warm(home: Node) -> Op[Any]:
            yield from self._settle_key(kb, home)
            return (yield from self._rmw(home, kb, mutate, None, cover=True))

        return (yield from self._route(kb, default, up, down, warm))

    def add(self, key: str | bytes, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> Op[bool]:
        """Store ``value`` only if ``key`` has no value. True if stored."""
        kb, item, expire, noreply = self._check_store(key, value, expire, noreply, flags)
        new_abs = absolute_expiry(expire, self.clock.time())

        def up(home: Node) -> Op[bool]:
            version = self.hlc.now()
            if (yield from self.one(home, "add", kb, encode(item, version, new_abs), expire)):
                return True
            # A tombstone (a deleted key) is missing too.
            return bool((yield from self._rmw(home, kb, mutations.add(item, new_abs), None)))

        def down(f: Node, home: Node) -> Op[bool]:
            return bool((yield from self._rmw(f, kb, mutations.add(item, new_abs), home)))

        def warm(home: Node) -> Op[bool]:
            yield from self._settle_key(kb, home)
            return bool((yield from self._rmw(home, kb, mutations.add(item, new_abs), None,
                                              cover=True)))

        ok = yield from self._route(kb, False, up, down, warm)
        return bool(self.replied(noreply, ok))

    def replace(self, key: str | bytes, value: Any, expire: int = 0,
                noreply: bool | None = None, flags: int | None = None) -> Op[bool]:
        """Store ``value`` only if ``key`` has a value. True if stored."""
        kb, item, expire, noreply = self._check_store(key, value, expire, noreply, flags)
        new_abs = absolute_expiry(expire, self.clock.time())
        ok = yield from self._mutate(kb, False, mutations.replace(item, new_abs))
        return bool(self.replied(noreply, ok))

    def _concat(self, key: str | bytes, value: Any, noreply: Any, append: bool) -> Op[bool]:
        kb = self.key(key)
        noreply = check_noreply(noreply)
        data = self.concat_data(kb, value)
        mutate = mutations.concat(data, append, lambda joined, f: self.serialize(kb, joined, f))
        return bool(self.replied(noreply, (yield from self._mutate(kb, False, mutate))))

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
        result: int | None = yield from self._mutate(kb, None, mutations.arith(value, incr))
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
        """Give ``key`` a new expiry. True if the key exists."""
        kb = self.key(key)
        expire = check_expire(expire)
        noreply = check_noreply(noreply)
        new_abs = absolute_expiry(expire, self.clock.time())

        def up(home: Node) -> Op[bool]:
            return (yield from self.touch_owner(home, kb, expire))

        def down(f: Node, home: Node) -> Op[bool]:
            return bool((yield from self._rmw(f, kb, mutations.retouch(new_abs), home)))

        def warm(home: Node) -> Op[bool]:
            yield from self._settle_key(kb, home)
            return (yield from up(home))

        return bool(self.replied(noreply, (yield from self._route(kb, False, up, down, warm))))

    def cas(self, key: str | bytes, value: Any, cas: Any, expire: int = 0,
            noreply: bool | None = False, flags: int | None = None) -> Op[bool | None]:
        """Store ``value`` if the key's CAS token is still ``cas``.

        True if stored, False if the value changed since ``gets``, None if
        the key is gone.
        """
        kb, item, expire, noreply = self._check_store(key, value, expire, noreply, flags)
        token = cas_token(cas)
        now = self.clock.time()
        abs_expiry = absolute_expiry(expire, now)

        def up(home: Node) -> Op[bool | None]:
            raw = encode(item, self.hlc.now(), abs_expiry)
            ok: bool | None = yield from self.one(home, "cas", kb, raw, token, expire)
            if ok is False:  # a deleted key holds a tombstone: it is gone
                got = yield from self.one(home, "get", kb)
                if got is None or self.stored(got, kb, home).kind is Kind.TOMBSTONE:
                    return None
            return ok

        def down(f: Node, home: Node) -> Op[bool | None]:
            st = Stored(Kind.VALUE, self.hlc.now(), item, abs_expiry, True)
            return (yield from self._write_copy(f, home, kb, st, token))

        def warm(home: Node) -> Op[bool | None]:
            yield from self._settle_key(kb, home)
            version = self.hlc.now()
            ok: bool | None = yield from self.one(
                home, "cas", kb, encode(item, version, abs_expiry), token, expire)
            if ok:
                yield from self._covered(kb, Stored(Kind.VALUE, version, item, abs_expiry, False))
            elif ok is False:
                got = yield from self.one(home, "get", kb)
                if got is None or self.stored(got, kb, home).kind is Kind.TOMBSTONE:
                    return None
            return ok

        result = yield from self._route(kb, False, up, down, warm)
        return True if noreply else result

    # ------------------------------------------------------------------
    # multi-key: keys grouped by node, nodes asked at once
    def get_many(self, keys: Iterable[str | bytes], gets: bool = False) -> Op[dict[Any, Any]]:
        """The values of ``keys`` that have one, as a dict keyed like ``keys``.

        ``gets=True`` answers as :meth:`gets_many` (pymemcache's ``HashClient``)."""
        if gets_instead(gets):
            return (yield from self.gets_many(keys))
        by_kb = self.keys(keys)
        if not by_kb:
            return {}
        if self.verify_reads:
            groups: dict[Node, list[bytes]] = {}
            other = list(by_kb)
        else:
            groups, other = self.up_groups(by_kb)
        out: dict[Any, Any] = {}
        failed: dict[bytes, Exception] = {}
        calls = [Call(node, "get_many", (kbs,)) for node, kbs in groups.items()]
        results = yield calls
        for call, got in zip(calls, results, strict=True):
            kbs = call.args[0]
            if isinstance(got, MemringError):
                self._group_failure(call.node, got, kbs, other, failed)
                continue
            self._collect(got, by_kb, call.node, out, failed)
        if other:
            yield from self._get_slow(other, by_kb, out, failed)
        return self.finish_many("get_many", out, failed, by_kb)

    get_multi = get_many

    def _get_slow(self, kbs: list[bytes], by_kb: Mapping[bytes, Any], out: dict[Any, Any],
                  failed: dict[bytes, Exception]) -> Op[None]:
        """Keys whose home is not up: one batch per failover node for down homes."""
        batches: dict[Node, list[bytes]] = defaultdict(list)
        slow: list[bytes] = []
        for kb in kbs:
            home = self.ring.node_for(kb)
            if (not self.verify_reads and self.failover.mode == "next"
                    and self.health.is_down(home)):
                try:
                    batches[self.failover_node(kb, home)].append(kb)
                except ClusterError as exc:
                    failed[kb] = exc
                    continue
                self.health.record_failover(home)
            else:  # warming or verified (two reads each), or Failover("fail")
                slow.append(kb)
        calls = [Call(node, "get_many", (batch,)) for node, batch in batches.items()]
        results = yield calls
        for call, got in zip(calls, results, strict=True):
            if isinstance(got, MemringError):
                slow.extend(call.args[0])  # the failover node failed too: walk on per key
                continue
            self._collect(got, by_kb, call.node, out, failed)
        for kb in slow:
            try:
                st, node = yield from self._read(kb)
                value = self.live_value(st, kb, MISSING, node)
            except MemringError as exc:
                failed[kb] = exc
                continue
            if value is not MISSING:
                out[by_kb[kb]] = value

    def gets_many(self, keys: Iterable[str | bytes]) -> Op[dict[Any, tuple[Any, Any]]]:
        """``{key: (value, cas_token)}`` for the keys that have a value."""
        by_kb = self.keys(keys)
        groups, other = self.up_groups(by_kb)
        out: dict[Any, tuple[Any, Any]] = {}
        failed: dict[bytes, Exception] = {}
        calls = [Call(node, "gets_many", (kbs,)) for node, kbs in groups.items()]
        results = yield calls
        for call, got in zip(calls, results, strict=True):
            if isinstance(got, MemringError):
                self._group_failure(call.node, got, call.args[0], other, failed)
                continue
            for kb, (raw, token) in got.items():
                try:
                    value = self.value(kb, raw, MISSING, call.node)
                except MemringError as exc:
                    failed[kb] = exc
                    continue
                if value is not MISSING:
                    out[by_kb[kb]] = (value, token)
        for kb in other:
            try:
                value, token = yield from self.gets(by_kb[kb], MISSING)
            except MemringError as exc:
                failed[kb] = exc
                continue
            if value is not MISSING:
                out[by_kb[kb]] = (value, token)
        return self.finish_many("gets_many", out, failed, by_kb)

    def set_many(self, values: Mapping[str | bytes, Any], expire: int = 0,
                 noreply: bool | None = None, flags: int | None = None) -> Op[list[Any]]:
        """Store many values; returns the keys that failed to store (empty on success)."""
        by_kb, items = self.serialize_many(values, flags)
        expire = check_expire(expire)
        check_noreply(noreply)
        version = self.hlc.now()
        now = self.clock.time()
        abs_expiry = absolute_expiry(expire, now)
        groups, other = self.up_groups(items)
        not_stored: list[Any] = []
        failed: dict[bytes, Exception] = {}
        if abs_expiry and abs_expiry <= now:  # expired already: a delete (see set_kb)
            calls = [Call(node, "set_many", (dict.fromkeys(kbs, tombstone(version)),
                                             self.failover.tombstone_ttl))
                     for node, kbs in groups.items()]
        else:
            calls = [Call(node, "set_many",
                          ({kb: encode(items[kb], version, abs_expiry) for kb in kbs}, expire))
                     for node, kbs in groups.items()]
        results = yield calls
        for call, got in zip(calls, results, strict=True):
            if isinstance(got, MemringError):
                self._group_failure(call.node, got, list(call.args[0]), other, failed)
            else:
                not_stored.extend(by_kb[kb] for kb in got)
        for kb in other:
            try:
                if not (yield from self.set_kb(kb, items[kb], expire, version)):
                    not_stored.append(by_kb[kb])
            except MemringError as exc:
                failed[kb] = exc
        if failed and self.failover.return_default:
            not_stored.extend(by_kb[kb] for kb in failed)
        return list(self.finish_many("set_many", not_stored, failed, by_kb))

    set_multi = set_many

    def delete_many(self, keys: Iterable[str | bytes], noreply: bool | None = None) -> Op[bool]:
        """Delete many keys. True (as pymemcache returns) unless a node failed."""
        by_kb = self.keys(keys)
        check_noreply(noreply)
        version = self.hlc.now()
        mark = tombstone(version)
        groups, other = self.up_groups(by_kb)
        failed: dict[bytes, Exception] = {}
        ttl = self.failover.tombstone_ttl
        calls = [Call(node, "set_many", (dict.fromkeys(kbs, mark), ttl))
                 for node, kbs in groups.items()]
        results = yield calls
        for call, got in zip(calls, results, strict=True):
            if isinstance(got, MemringError):
                self._group_failure(call.node, got, list(call.args[0]), other, failed)
        for kb in other:
            try:
                yield from self.delete(by_kb[kb])
            except MemringError as exc:
                failed[kb] = exc
        self.finish_many("delete_many", True, failed, by_kb)
        return not failed

    delete_multi = delete_many

    # ------------------------------------------------------------------
    # a returning node: handoff, keep-alive (Invariant S)
    def _handoff_batch(self, home: Node, batch: Sequence[tuple[bytes, Hint]]
                       ) -> Op[list[tuple[bytes, Hint]]]:
        """Settle one batch of hints on ``home``; returns the hints to try again."""
        holders: dict[Node, list[bytes]] = defaultdict(list)
        for kb, hint in batch:
            holders[hint.holder].append(kb)
        kbs = [kb for kb, _ in batch]
        calls = [Call(home, "meta_many", (kbs,))]
        calls += [Call(node, "meta_many", (keys,)) for node, keys in holders.items()]
        results = yield calls
        at_home = results[0]
        if isinstance(at_home, MemringError):
            raise at_home
        copies: dict[bytes, Any] = {}
        unreachable: set[bytes] = set()
        for call, got in zip(calls[1:], results[1:], strict=True):
            if isinstance(got, MemringError):
                unreachable.update(call.args[0])
            else:
                copies.update(got)
        now = self.clock.time()
        ops: list[tuple[str, tuple[Any, ...]]] = []
        planned: list[tuple[bytes, Hint, bool]] = []
        keep: list[tuple[bytes, Hint]] = []
        done: list[bytes] = []  # settled at home (or home was newer): retire their copies
        for kb, hint in batch:
            mine = at_home.get(kb)
            current = None if mine is None else self.stored(mine[0], kb, home)
            cas = None if mine is None else mine[1]
            copy_raw = copies.get(kb)
            if kb in unreachable or copy_raw is None:
                # The copy is out of reach or gone: home's older value must not be
                # read as current. A tombstone just older than the lost write
                # hides it, and still loses to that write if its node returns.
                if kb in unreachable:
                    keep.append((kb, hint))
                if current is None:
                    continue  # nothing at home to hide
                new = Stored(Kind.TOMBSTONE, hint.version - 1, (b"", 0), 0, False)
                hole = True
            else:
                new = self.stored(copy_raw[0], kb, hint.holder)
                hole = False
            self._plan_settle(home, kb, hint, new, current, cas, hole, now, ops, planned, done)
        yield from self._settle_batch(home, batch, ops, planned, keep, done, copies)
        return keep


def _expiry_of(ttl: int, now: float) -> int:
    return expiry_from_ttl(ttl, now)
