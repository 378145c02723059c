"""The consistent-hash ring: placement only, no I/O."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import NamedTuple, TypeVar

import mmh3
from sortedcontainers import SortedList

from memring.errors import ConfigError
from memring.hashring.hashes import (
    HASHES,
    ketama_key_hash,
    ketama_points,
    murmur3_key_hash,
    murmur3_points,
)
from memring.hashring.node import Node, NodeSpec, parse_node

#: A key type the ring hashes: ``str`` or ``bytes``.
K = TypeVar("K", str, bytes)

__all__ = ["DEFAULT_VNODES", "HashRing"]

#: Virtual points per unit of weight in murmur3 mode. Chosen by the sweep in
#: ``bench/vnode_sweep.py`` (see bench/RESULTS.md): the smallest count whose
#: peak/mean load over 1M random keys stays <= 1.10 at N=10 and <= 1.15 at N=100.
DEFAULT_VNODES = 400

_MASK64 = (1 << 64) - 1
_hash64 = mmh3.hash64  # node_for inlines murmur3_key_hash: one Python call less per lookup

# The bucket table has 4 to 8 buckets per point (2**_TABLE_SPARSITY at least), so
# 78-88% of buckets hold no point and answer a lookup with one list index; it
# has at most 2**_MAX_TABLE_BITS buckets (8 MiB of references).
_TABLE_SPARSITY = 2
_MAX_TABLE_BITS = 20


def _next_other(owners: list[Node]) -> list[Node | None]:
    """For each entry of ``owners`` (wrap-around entry included), the next other node."""
    total = len(owners) - 1  # points; owners[total] is the wrap-around entry
    if total <= 0:
        return []
    out: list[Node | None] = [None] * len(owners)
    nxt_node: Node | None = None
    nxt_other: Node | None = None
    for j in range(2 * total - 1, -1, -1):  # twice round, backwards: the first round warms up
        i = j % total
        node = owners[i]
        other = nxt_node if nxt_node is not None and node is not nxt_node else nxt_other
        if j < total:
            out[i] = other
        nxt_node, nxt_other = node, other
    out[total] = out[0]
    return out


class _Snapshot(NamedTuple):
    """What lookups read; replaced as a whole on every mutation.

    ``owners[i]`` owns ``points[i]``, plus one wrap-around entry
    ``owners[len(points)] == owners[0]``. The key space is cut into
    ``len(table)`` equal buckets by the top bits of the hash
    (``bucket = hash >> shift``); ``table[bucket]`` is the owner of every hash in
    a bucket that holds no point, and ``None`` for a bucket that holds one.
    ``seconds[i]`` is the first owner after ``owners[i]``, clockwise, that is
    another node (``None`` on a one-node ring): a key's backup node.
    """

    points: list[int]
    owners: list[Node]
    table: list[Node | None]
    shift: int
    seconds: list[Node | None]


def _bucket_table(
    points: list[int], owners: list[Node], hash_bits: int
) -> tuple[list[Node | None], int]:
    """The bucket table of sorted ``points`` (see :class:`_Snapshot`) and its shift."""
    if not points:
        return [], hash_bits
    bits = min(_MAX_TABLE_BITS, hash_bits, len(points).bit_length() + _TABLE_SPARSITY)
    shift = hash_bits - bits
    size = 1 << bits
    table: list[Node | None] = [None] * size
    previous = -1  # last bucket seen holding a point
    for i, point in enumerate(points):
        bucket = point >> shift
        if bucket != previous:
            # Buckets strictly between belong to the first point of this one.
            if bucket > previous + 1:
                table[previous + 1 : bucket] = [owners[i]] * (bucket - previous - 1)
            previous = bucket
    if previous + 1 < size:  # past the last point: wrap to the first
        table[previous + 1 :] = [owners[0]] * (size - previous - 1)
    return table, shift


class HashRing:
    """A consistent-hash ring of :class:`Node` objects.

    >>> ring = HashRing(["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"])
    >>> ring.node_for("session:42") in ring
    True
    >>> len(ring.nodes_for("session:42", 2))
    2

    ``hash="murmur3"`` (default) gives every node ``vnodes * weight`` 64-bit
    points that depend on that node alone: removing a node moves exactly its
    keys, adding one moves keys only onto it. ``hash="ketama"`` reproduces the
    libmemcached/twemproxy continuum bit for bit (``vnodes`` does not apply;
    the point counts follow libmemcached's formula, so a membership change
    may also move a few keys between the other nodes, exactly as it does there).

    Complexity: ``node_for`` is O(log P) for P points in the worst case and
    O(1) expected: a bucket table indexed by the top bits of the key's hash
    answers most lookups, a bisection of the sorted points the rest. It
    allocates nothing beyond the hash. ``nodes_for(key, n)`` walks clockwise
    from there and is O(log P + n * P/N) in the worst case, O(log P + n)
    expected. ``add``/``remove`` are O(V log P + P) in murmur3 mode and
    O(P log P) in ketama mode. Lookups read a plain sorted snapshot array; the
    ring is safe to read from many threads while one thread mutates it (each
    mutation swaps the snapshot in one assignment).
    """

    __slots__ = (
        "_entries",
        "_hash",
        "_hash_bits",
        "_key_hash",
        "_murmur3",
        "_nodes",
        "_snapshot",
        "_vnodes",
    )

    def __init__(
        self,
        nodes: Iterable[NodeSpec] = (),
        *,
        vnodes: int = DEFAULT_VNODES,
        hash: str = "murmur3",
    ) -> None:
        if hash not in HASHES:
            raise ConfigError(f"hash must be one of {', '.join(HASHES)}; got {hash!r}")
        if isinstance(vnodes, bool) or not isinstance(vnodes, int) or vnodes < 1:
            raise ConfigError(f"vnodes must be an int >= 1, got {vnodes!r}")
        self._hash = hash
        self._vnodes = vnodes
        self._murmur3 = hash == "murmur3"
        self._key_hash: Callable[[str | bytes], int] = (
            murmur3_key_hash if self._murmur3 else ketama_key_hash
        )
        self._hash_bits = 64 if self._murmur3 else 32
        self._nodes: dict[Node, None] = {}  # insertion-ordered set
        # Mutable side: (point, tie-break label, node) entries for murmur3 mode.
        self._entries: SortedList = SortedList()
        self._snapshot = _Snapshot([], [], [], self._hash_bits, [])
        parsed = [parse_node(n) for n in nodes]
        labels = [n.label for n in parsed]
        if len(set(labels)) != len(labels):
            raise ConfigError("duplicate node in ring")
        for node in parsed:
            self._nodes[node] = None
            if hash == "murmur3":
                self._entries.update((p, node.label, node) for p in murmur3_points(node, vnodes))
        self._rebuild()

    # -- introspection ---------------------------------------------------
    @property
    def hash(self) -> str:
        return self._hash

    @property
    def vnodes(self) -> int:
        return self._vnodes

    @property
    def nodes(self) -> list[Node]:
        """Members in the order they were added."""
        return list(self._nodes)

    def __len__(self) -> int:
        return len(self._nodes)

    def __contains__(self, node: object) -> bool:
        if isinstance(node, (str, tuple)):
            try:
                node = parse_node(node)
            except ConfigError:
                return False
        return node in self._nodes

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self._nodes))

    def __repr__(self) -> str:
        labels = [n.label for n in self._nodes]
        return f"HashRing({labels!r}, hash={self._hash!r}, vnodes={self._vnodes})"

    @property
    def point_count(self) -> int:
        return len(self._snapshot.points)

    # -- lookups ---------------------------------------------------------
    def key_hash(self, key: str | bytes) -> int:
        """The point of ``key`` on this ring."""
        return self._key_hash(key)

    def node_for(self, key: str | bytes) -> Node:
        """The node that owns ``key``: the first point >= the key's hash, wrapping.

        Raises :class:`LookupError` on an empty ring.
        """
        points, owners, table, shift, _ = self._snapshot
        h = _hash64(key)[0] & _MASK64 if self._murmur3 else self._key_hash(key)
        try:
            owner = table[h >> shift]
        except IndexError:
            raise LookupError("the ring has no nodes") from None
        if owner is None:  # the key's bucket holds a point: bisect
            owner = owners[bisect_left(points, h)]
        return owner

    def group(self, keys: Iterable[K]) -> dict[Node, list[K]]:
        """``keys`` by the node that owns each, in their order: :meth:`node_for` for many keys.

        Raises :class:`LookupError` on an empty ring.
        """
        points, owners, table, shift, _ = self._snapshot
        if not points:
            raise LookupError("the ring has no nodes")
        groups: dict[Node, list[K]] = {}
        murmur3, key_hash = self._murmur3, self._key_hash
        for key in keys:
            h = _hash64(key)[0] & _MASK64 if murmur3 else key_hash(key)
            owner = table[h >> shift]
            if owner is None:
                owner = owners[bisect_left(points, h)]
            group = groups.get(owner)
            if group is None:
                groups[owner] = [key]
            else:
                group.append(key)
        return groups

    def nodes_for(self, key: str | bytes, n: int) -> list[Node]:
        """The preference list: the first ``n`` distinct nodes clockwise from ``key``.

        Returns fewer than ``n`` nodes when the ring has fewer. The first
        element is always ``node_for(key)``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        points, owners, _, _, seconds = self._snapshot
        total = len(points)
        if not total:
            raise LookupError("the ring has no nodes")
        want = min(n, len(self._nodes))
        i = bisect_left(points, _hash64(key)[0] & _MASK64 if self._murmur3 else self._key_hash(key))
        if want == 2:  # a key's home pair, as the backup client asks for it on every call
            return [owners[i], seconds[i]]  # type: ignore[list-item]
        out: list[Node] = []
        seen: set[int] = set()  # by identity: the points hold the ring's own Node objects
        for step in range(total):
            node = owners[(i + step) % total]
            if id(node) not in seen:
                seen.add(id(node))
                out.append(node)
                if len(out) == want:
                    break
        return out

    # -- mutation --------------------------------------------------------
    def add(self, node: NodeSpec) -> Node:
        """Add a node; returns the parsed :class:`Node`. Raises ConfigError if present."""
        parsed = parse_node(node)
        if any(m.label == parsed.label for m in self._nodes):
            raise ConfigError(f"node {parsed.label!r} is already in the ring")
        self._nodes[parsed] = None
        if self._hash == "murmur3":
            self._entries.update(
                (p, parsed.label, parsed) for p in murmur3_points(parsed, self._vnodes)
            )
        self._rebuild()
        return parsed

    def remove(self, node: NodeSpec) -> Node:
        """Remove a node; returns it. Raises KeyError if it is not a member."""
        parsed = parse_node(node)
        if parsed not in self._nodes:
            raise KeyError(parsed.label)
        del self._nodes[parsed]
        if self._hash == "murmur3":
            for p in murmur3_points(parsed, self._vnodes):
                self._entries.remove((p, parsed.label, parsed))
        self._rebuild()
        return parsed

    def _rebuild(self) -> None:
        if self._hash == "murmur3":
            points = [e[0] for e in self._entries]
            owners = [e[2] for e in self._entries]
        else:
            members = list(self._nodes)
            entries = sorted(ketama_points(members))
            points = [e[0] for e in entries]
            owners = [members[e[1]] for e in entries]
        owners.extend(owners[:1])  # wrap-around entry
        table, shift = _bucket_table(points, owners, self._hash_bits)
        self._snapshot = _Snapshot(points, owners, table, shift, _next_other(owners))

    # -- invariants ------------------------------------------------------
    def _check(self) -> None:
        """Assert every structural invariant (used by the property tests)."""
        points, owners, table, shift, _ = self._snapshot
        assert len(owners) == len(points) + (1 if points else 0)
        if points:
            assert owners[-1] == owners[0], "wrap-around entry"
        assert all(points[i] <= points[i + 1] for i in range(len(points) - 1)), "unsorted"
        assert set(owners) == set(self._nodes), "owners and members differ"
        assert all(0 <= p < 1 << self._hash_bits for p in points)
        assert len(table) == (1 << (self._hash_bits - shift) if points else 0)
        i = 0  # index of the first point >= the current bucket's start
        for bucket, owner in enumerate(table):
            while i < len(points) and points[i] >> shift < bucket:
                i += 1
            if owner is None:
                assert i < len(points) and points[i] >> shift == bucket, "empty bucket as None"
            else:
                assert i == len(points) or points[i] >> shift > bucket, "bucket with a point"
                assert owner is owners[i], "wrong bucket owner"
        seconds = self._snapshot.seconds
        assert len(seconds) == len(owners)
        if len(self._nodes) < 2:
            assert all(s is None for s in seconds), "a one-node ring has no next node"
        for i, second in enumerate(seconds if len(self._nodes) >= 2 else ()):
            j = (i + 1) % len(points)  # walk clockwise to the first other owner
            while owners[j] is owners[i]:
                j = (j + 1) % len(points)
            assert second is owners[j], "wrong next other node"
        if self._hash == "murmur3":
            self._entries._check()
            assert len(self._entries) == len(points)
            assert len(points) == sum(self._vnodes * n.weight for n in self._nodes)
            for i in range(len(points) - 1):
                if points[i] == points[i + 1]:  # tie-break is the label
                    assert owners[i].label <= owners[i + 1].label
        labels = [n.label for n in self._nodes]
        assert len(labels) == len(set(labels)), "duplicate labels"
