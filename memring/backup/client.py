"""Dual-write backup mode: every key on two nodes, so losing any one loses nothing.

The two *owners* of a key are the first two nodes of its preference list that
are not down. With every node up they are the key's primary and backup; when
one of them is down, the next node on the ring stands in.

Stored format: every value carries its absolute expiry (the same 8-byte
trailer as failover copies, see :mod:`memring.client.copies`), so a repair or
a read-modify-write gives the second copy the very same expiry as the
first. Deletes write *tombstones* on both owners (they live
``failover_ttl`` seconds), so a concurrent read-repair can never bring a
deleted key back.

Reads go to the primary; on a miss they read the backup and repair the
primary with ``add`` (which can't overwrite a newer write). A node that
returns after an outage is *warming*: reads skip it and go to the other
owner, which saw every write of the outage, and its keys are settled (CAS)
from that owner — so a node that hung never wins with old data (Invariant S).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from memring.client import copies
from memring.client.client import CAS_ATTEMPTS, Client, _cas_token, _check_expire
from memring.client.copies import Kind
from memring.client.health import NodeState
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

_MISSING = object()
Mutation = Callable[["Kind | None", Item, int], "tuple[Any, Item | None, int]"]


class BackupClient(Client):
    """A :class:`~memring.Client` that keeps two copies of every key.

    Same constructor and API as :class:`~memring.Client`; the failover
    policy must be ``"next"`` (its ``failover_ttl`` caps copies written to a
    stand-in node and the life of tombstones).

    Costs: twice the memory and twice the write traffic of the single-copy
    client; writes go to both owners concurrently, so their latency is that
    of the slower of two nodes. Reads cost one round trip (two on a miss).

    Semantics across the two copies:

    * ``set``/``set_many``: stored on both owners; acknowledged when both
      stored it, or one did and the other is known down (a *degraded* write,
      counted in ``metrics()["degraded_writes"]``).
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

    # -- placement -------------------------------------------------------
    def owners(self, key: str | bytes) -> list[Node]:
        """The nodes that hold ``key`` now, in read order."""
        return self._read_order(self._owners(self._key(key)))

    def _owners(self, kb: bytes) -> list[Node]:
        pair = self._ring.nodes_for(kb, 2)
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

    def _home_pair(self, kb: bytes) -> list[Node]:
        return self._ring.nodes_for(kb, 2)

    # -- writes ----------------------------------------------------------
    def _write_calls(self, kb: bytes, owners: list[Node], item: Item,
                     abs_expiry: int) -> list[tuple[Node, str, tuple[Any, ...]]]:
        """One ``set`` per owner; a stand-in gets a capped copy and a hint."""
        now = self._clock.time()
        home = self._home_pair(kb)
        calls = []
        for node in owners:
            cap = None if node in home else self._failover.failover_ttl
            if item is copies.TOMBSTONE:
                stored, rel = item, self._failover.failover_ttl
            else:
                stored = copies.encode_copy(item, abs_expiry)
                rel = copies.relative_expiry(abs_expiry, now, cap)
                if rel < 0:
                    stored, rel = copies.TOMBSTONE, self._failover.failover_ttl
            calls.append((node, "set", (kb, stored, rel)))
        for node in home:
            if self._health.is_down(node):
                self._hint(node, kb)
        return calls

    def _acknowledged(self, kb: bytes, calls: list[tuple[Node, str, tuple[Any, ...]]],
                      results: list[Any]) -> bool:
        """Apply the ack rule to one key's writes; raise if it is not acknowledged."""
        stored = [r is True for r in results]
        if all(stored):
            return True
        errors = [r for r in results if isinstance(r, MemringError)]
        unreachable_down = all(
            isinstance(r, NodeUnavailable) and self._health.is_down(node)
            for (node, _, _), r in zip(calls, results, strict=True) if r is not True)
        if any(stored) and unreachable_down:
            self._counters["degraded_writes"] += 1
            return True
        if errors:
            raise errors[0]
        return False  # the server refused to store (NOT_STORED)

    def _replicate(self, kb: bytes, item: Item, abs_expiry: int) -> bool:
        for _ in range(len(self._ring)):
            owners = self._owners(kb)
            calls = self._write_calls(kb, owners, item, abs_expiry)
            results = self._fan_out(calls)
            try:
                return self._acknowledged(kb, calls, results)
            except NodeUnavailable:
                if not all(self._health.is_down(n) for (n, _, _), r in
                           zip(calls, results, strict=True) if isinstance(r, NodeUnavailable)):
                    raise
        raise ClusterError(f"could not store {kb!r}: nodes keep failing")

    def _set_item(self, kb: bytes, item: Item, expire: int, noreply: bool | None) -> bool:
        ok = self._replicate(kb, item, copies.absolute_expiry(expire, self._clock.time()))
        return True if (noreply or (noreply is None and self._default_noreply)) else ok

    def delete(self, key: str | bytes, noreply: bool | None = None) -> bool:
        kb = self._key(key)
        existed = self._read(kb, repair=False) is not None
        self._replicate(kb, copies.TOMBSTONE, 0)
        return True if noreply else existed

    # -- reads -----------------------------------------------------------
    def _read(self, kb: bytes, repair: bool = True) -> Item | None:
        """The key's plain item, from the primary, else the backup (repairing the primary)."""
        for _ in range(len(self._ring)):
            order = self._read_order(self._owners(kb))
            try:
                return self._read_from(kb, order, repair)
            except NodeUnavailable as exc:
                if exc.node is None or not self._health.is_down(exc.node):
                    raise
        raise ClusterError(f"could not read {kb!r}: nodes keep failing")

    def _read_from(self, kb: bytes, order: list[Node], repair: bool) -> Item | None:
        now = self._clock.time()
        first = order[0]
        got = self._call(first, "get_many", [kb]).get(kb)
        if got is not None:
            kind, plain, _ = copies.decode(got, now)
            return plain if kind is Kind.VALUE else None
        if len(order) < 2 or self._health.state(order[1]) is NodeState.WARMING:
            return None  # a warming node's data can't be trusted on its own
        second = order[1]
        got = self._call(second, "get_many", [kb]).get(kb)
        if got is None:
            return None
        kind, plain, abs_expiry = copies.decode(got, now)
        if kind is not Kind.VALUE:
            return None
        if repair and self._health.state(first) is NodeState.UP:
            rel = copies.relative_expiry(abs_expiry, now,
                                         None if first in self._home_pair(kb) else
                                         self._failover.failover_ttl)
            if rel >= 0:
                try:  # add: never overwrites a newer write that got there first
                    if self._call(first, "add", kb, copies.encode_copy(plain, abs_expiry), rel):
                        self._counters["read_repairs"] += 1
                except MemringError:
                    pass  # the read itself succeeded; the repair is best effort
        return plain

    def get(self, key: str | bytes, default: Any = None) -> Any:
        kb = self._key(key)
        item = self._read(kb)
        if item is None:
            return default
        return self._serde.deserialize(self._unprefix(kb), item[0], item[1])

    def gets(self, key: str | bytes, default: Any = None,
             cas_default: Any = None) -> tuple[Any, Any]:
        kb = self._key(key)
        self._read(kb)  # repairs the primary if only the backup has the key
        primary = self._read_order(self._owners(kb))[0]
        got = self._call(primary, "gets_many", [kb]).get(kb)
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
            self._read(kb)  # a key only the backup has is first repaired onto the primary
            order = self._read_order(self._owners(kb))
            primary = order[0]
            got = self._call(primary, "gets_many", [kb]).get(kb)
            now = self._clock.time()
            if got is None:
                kind: Kind | None = None
                plain: Item = copies.TOMBSTONE
                abs_expiry = 0
            else:
                kind, plain, abs_expiry = copies.decode(got[0], now)
            result, new_item, new_abs = mutate(kind, plain, abs_expiry)
            if new_item is None:
                return result
            calls = self._write_calls(kb, order, new_item, new_abs)
            _, _, (k, stored, rel) = calls[0]
            if got is None:
                ok = self._call(primary, "add", k, stored, rel)
            else:
                ok = self._call(primary, "cas", k, stored, got[1], rel)
            if not ok:
                continue
            rest = calls[1:]
            results = [True] + self._fan_out(rest) if rest else [True]
            self._acknowledged(kb, calls, results)
            return result
        raise ServerError(f"too much contention on {kb!r}", key=kb)

    def add(self, key: str | bytes, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> bool:
        kb = self._key(key)
        item = self._serialize(kb, value, flags)
        new_abs = copies.absolute_expiry(_check_expire(expire), self._clock.time())
        return bool(self._rmw_primary(kb, lambda kind, cur, a: (
            (False, None, 0) if kind is Kind.VALUE else (True, item, new_abs))))

    def replace(self, key: str | bytes, value: Any, expire: int = 0,
                noreply: bool | None = None, flags: int | None = None) -> bool:
        kb = self._key(key)
        item = self._serialize(kb, value, flags)
        new_abs = copies.absolute_expiry(_check_expire(expire), self._clock.time())
        return bool(self._rmw_primary(kb, lambda kind, cur, a: (
            (True, item, new_abs) if kind is Kind.VALUE else (False, None, 0))))

    def _concat(self, key: str | bytes, value: Any, noreply: bool | None, method: str) -> bool:
        kb = self._key(key)
        data = value.encode("utf-8") if isinstance(value, str) else (
            value if isinstance(value, bytes) else self._serialize(kb, value)[0])

        def mutate(kind: Kind | None, cur: Item, a: int) -> tuple[Any, Item | None, int]:
            if kind is not Kind.VALUE:
                return False, None, 0
            joined = cur[0] + data if method == "append" else data + cur[0]
            self._serialize(kb, joined, cur[1])  # size check
            return True, (joined, cur[1]), a

        return bool(self._rmw_primary(kb, mutate))

    def _arith(self, key: str | bytes, value: int, incr: bool) -> int | None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
            raise ValueError(f"incr/decr amount must be an int in 0..2**64-1, got {value!r}")
        kb = self._key(key)

        def mutate(kind: Kind | None, cur: Item, a: int) -> tuple[Any, Item | None, int]:
            if kind is not Kind.VALUE:
                return None, None, 0
            try:
                n = int(cur[0])
            except ValueError:
                raise ServerError("cannot increment or decrement non-numeric value",
                                  key=kb) from None
            n = (n + value) % (1 << 64) if incr else max(0, n - value)
            return n, (str(n).encode(), cur[1]), a

        result: int | None = self._rmw_primary(kb, mutate)
        return result

    def touch(self, key: str | bytes, expire: int = 0, noreply: bool | None = None) -> bool:
        kb = self._key(key)
        new_abs = copies.absolute_expiry(_check_expire(expire), self._clock.time())
        return bool(self._rmw_primary(kb, lambda kind, cur, a: (
            (True, cur, new_abs) if kind is Kind.VALUE else (False, None, 0))))

    def cas(self, key: str | bytes, value: Any, cas: Any, expire: int = 0,
            noreply: bool | None = False, flags: int | None = None) -> bool | None:
        kb = self._key(key)
        item = self._serialize(kb, value, flags)
        new_abs = copies.absolute_expiry(_check_expire(expire), self._clock.time())
        token = _cas_token(cas)
        order = self._read_order(self._owners(kb))
        calls = self._write_calls(kb, order, item, new_abs)
        _, _, (k, stored, rel) = calls[0]
        ok: bool | None = self._call(order[0], "cas", k, stored, token, rel)
        if ok and calls[1:]:
            self._acknowledged(kb, calls, [True] + self._fan_out(calls[1:]))
        return True if noreply else ok

    # -- multi-key -------------------------------------------------------
    def get_many(self, keys: Iterable[str | bytes]) -> dict[Any, Any]:
        by_kb = {self._key(k): k for k in keys}
        if not by_kb:
            return {}
        groups: dict[Node, list[bytes]] = defaultdict(list)
        for kb in by_kb:
            groups[self._read_order(self._owners(kb))[0]].append(kb)
        calls = [(node, "get_many", (kbs,)) for node, kbs in groups.items()]
        out: dict[Any, Any] = {}
        slow: list[bytes] = []
        now = self._clock.time()
        for (_, _, (kbs,)), got in zip(calls, self._fan_out(calls), strict=True):
            if isinstance(got, MemringError):
                slow.extend(kbs)
                continue
            for kb in kbs:
                item = got.get(kb)
                if item is None:
                    slow.append(kb)  # miss on the primary: the backup may have it
                    continue
                kind, plain, _ = copies.decode(item, now)
                if kind is Kind.VALUE:
                    out[by_kb[kb]] = self._serde.deserialize(self._unprefix(kb), *plain)
        failed: dict[bytes, Exception] = {}
        for kb in slow:
            try:
                value = self.get(by_kb[kb], _MISSING)
            except MemringError as exc:
                failed[kb] = exc
                continue
            if value is not _MISSING:
                out[by_kb[kb]] = value
        result: dict[Any, Any] = self._finish_many("get_many", out, failed, by_kb)
        return result

    get_multi = get_many

    def gets_many(self, keys: Iterable[str | bytes]) -> dict[Any, tuple[Any, Any]]:
        out: dict[Any, tuple[Any, Any]] = {}
        for key in keys:
            value, token = self.gets(key, _MISSING)
            if value is not _MISSING:
                out[key] = (value, token)
        return out

    def set_many(self, values: Mapping[str | bytes, Any], expire: int = 0,
                 noreply: bool | None = None, flags: int | None = None) -> list[Any]:
        by_kb: dict[bytes, Any] = {}
        items: dict[bytes, Item] = {}
        for key, value in values.items():  # every check before any I/O
            kb = self._key(key)
            by_kb[kb] = key
            items[kb] = self._serialize(kb, value, flags)
        abs_expiry = copies.absolute_expiry(_check_expire(expire), self._clock.time())
        # One set_many per node, all nodes at once.
        per_key: dict[bytes, list[tuple[Node, str, tuple[Any, ...]]]] = {}
        batches: dict[tuple[Node, int], dict[bytes, Item]] = defaultdict(dict)
        for kb, item in items.items():
            per_key[kb] = self._write_calls(kb, self._owners(kb), item, abs_expiry)
            for node, _, (_, stored, rel) in per_key[kb]:
                batches[(node, rel)][kb] = stored
        calls = [(node, "set_many", (batch, rel)) for (node, rel), batch in batches.items()]
        outcome: dict[tuple[Node, bytes], Any] = {}
        for (node, _, (batch, _r)), got in zip(calls, self._fan_out(calls), strict=True):
            refused = set(got) if isinstance(got, list) else set()
            for kb in batch:
                outcome[(node, kb)] = got if isinstance(got, MemringError) else (
                    kb not in refused)
        not_stored: list[Any] = []
        failed: dict[bytes, Exception] = {}
        for kb, kcalls in per_key.items():
            results = [outcome[(node, kb)] for node, _, _ in kcalls]
            try:
                if not self._acknowledged(kb, kcalls, results):
                    not_stored.append(by_kb[kb])
            except NodeUnavailable:
                try:  # the owners changed under us: store this key again
                    if not self._replicate(kb, items[kb], abs_expiry):
                        not_stored.append(by_kb[kb])
                except MemringError as exc:
                    failed[kb] = exc
            except MemringError as exc:
                failed[kb] = exc
        return list(self._finish_many("set_many", not_stored, failed, by_kb))

    set_multi = set_many

    def delete_many(self, keys: Iterable[str | bytes], noreply: bool | None = None) -> bool:
        failed: dict[Any, Exception] = {}
        for key in keys:
            try:
                self.delete(key)
            except MemringError as exc:
                failed[key] = exc
        if failed and not self._failover.return_default:
            raise MultiKeyError(f"delete_many: {len(failed)} keys failed", results=False,
                                failed=failed)
        return not failed

    delete_multi = delete_many

    # -- a returning node (Invariant S) -------------------------------------
    def _settle(self, kb: bytes, home: Node, f: Node) -> None:
        """Make the returning node ``home``'s copy of ``kb`` equal to the other owner's."""
        owners = self._owners(kb)
        if home not in owners:
            return
        others = [n for n in owners if n != home]
        if not others:
            return
        source = others[0]
        for _ in range(CAS_ATTEMPTS):
            mine = self._call(home, "gets_many", [kb]).get(kb)  # token first, then the source
            theirs = self._call(source, "get_many", [kb]).get(kb)
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
                    return
                stored, rel = copies.TOMBSTONE, self._failover.failover_ttl
            if mine is not None and mine[0] == stored:
                return
            if mine is None:
                ok = self._call(home, "add", kb, stored, rel)
            else:
                ok = self._call(home, "cas", kb, stored, mine[1], rel)
            if ok:
                self._counters["settled"] += 1
                return
        raise ServerError(f"could not settle {kb!r}: too much contention", node=home, key=kb)
