"""The consistent-hash ring: placement only, no I/O."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator

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

__all__ = ["DEFAULT_VNODES", "HashRing"]

#: Virtual points per unit of weight in murmur3 mode. Chosen by the sweep in
#: ``bench/vnode_sweep.py`` (see bench/RESULTS.md): the smallest count whose
#: peak/mean load over 1M random keys stays <= 1.10 at N=10 and <= 1.15 at N=100.
DEFAULT_VNODES = 400


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

    Complexity: ``node_for`` is O(log P) for P points and allocates nothing
    but the key's bytes; ``nodes_for(key, n)`` walks clockwise from there and
    is O(log P + n * P/N) in the worst case, O(log P + n) expected.
    ``add``/``remove`` are O(V log P) in murmur3 mode and O(P log P) in
    ketama mode. Lookups read a plain sorted snapshot array; the ring is safe
    to read from many threads while one thread mutates it (each mutation
    swaps the snapshot in one assignment).
    """

    __slots__ = ("_entries", "_hash", "_key_hash", "_nodes", "_snapshot", "_vnodes")

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
        self._key_hash: Callable[[str | bytes], int] = (
            murmur3_key_hash if hash == "murmur3" else ketama_key_hash
        )
        self._nodes: dict[Node, None] = {}  # insertion-ordered set
        # Mutable side: (point, tie-break label, node) entries for murmur3 mode.
        self._entries: SortedList = SortedList()
        self._snapshot: tuple[list[int], list[Node]] = ([], [])
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
        return len(self._snapshot[0])

    # -- lookups ---------------------------------------------------------
    def key_hash(self, key: str | bytes) -> int:
        """The point of ``key`` on this ring."""
        return self._key_hash(key)

    def node_for(self, key: str | bytes) -> Node:
        """The node that owns ``key``: the first point >= the key's hash, wrapping.

        Raises :class:`LookupError` on an empty ring.
        """
        points, owners = self._snapshot
        if not points:
            raise LookupError("the ring has no nodes")
        i = bisect_left(points, self._key_hash(key))
        return owners[i if i < len(points) else 0]

    def nodes_for(self, key: str | bytes, n: int) -> list[Node]:
        """The preference list: the first ``n`` distinct nodes clockwise from ``key``.

        Returns fewer than ``n`` nodes when the ring has fewer. The first
        element is always ``node_for(key)``.
        """
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an int >= 1, got {n!r}")
        points, owners = self._snapshot
        total = len(points)
        if not total:
            raise LookupError("the ring has no nodes")
        want = min(n, len(self._nodes))
        i = bisect_left(points, self._key_hash(key))
        out: list[Node] = []
        for step in range(total):
            node = owners[(i + step) % total]
            if node not in out:
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
        self._snapshot = (points, owners)

    # -- invariants ------------------------------------------------------
    def _check(self) -> None:
        """Assert every structural invariant (used by the property tests)."""
        points, owners = self._snapshot
        assert len(points) == len(owners)
        assert all(points[i] <= points[i + 1] for i in range(len(points) - 1)), "unsorted"
        assert set(owners) == set(self._nodes), "owners and members differ"
        assert all(0 <= p < 1 << 64 for p in points)
        if self._hash == "murmur3":
            self._entries._check()
            assert len(self._entries) == len(points)
            assert len(points) == sum(self._vnodes * n.weight for n in self._nodes)
            for i in range(len(points) - 1):
                if points[i] == points[i + 1]:  # tie-break is the label
                    assert owners[i].label <= owners[i + 1].label
        labels = [n.label for n in self._nodes]
        assert len(labels) == len(set(labels)), "duplicate labels"
