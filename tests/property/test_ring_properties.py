"""Properties of the hash ring (hypothesis).

murmur3 mode: removing a node moves exactly its keys, adding one moves keys
only onto it, the preference list is distinct and starts at the owner, each
node's share of keys tracks its weight share, and placement is the same in
every process. ketama mode: the preference list is distinct and placement is
a deterministic function of the member list.
"""

from __future__ import annotations

import json
import math
import os
import random
import subprocess
import sys
from bisect import bisect_left
from collections import Counter
from collections.abc import Callable

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from memring import HashRing, Node
from memring.hashring.hashes import ketama_key_hash, ketama_points, murmur3_key_hash, murmur3_points

SETTINGS = settings(
    deadline=None,
    max_examples=50,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Standard deviations allowed between a node's observed key share and its
# weight share. A node's arc is skewed (Gamma-like) for few points, so the
# bound is wide: the chance of a false alarm is below 3e-6 for a node with 8
# points and 2e-8 for one with 50. Yet a ring that sends every key to one
# node fails it at every corner of the strategy space
# (see test_share_check_rejects_broken_rings).
SIGMAS = 7.0

specs = st.builds(
    "10.{}.{}.{}:{}".format,
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(0, 255),
    st.integers(1024, 65535),
)
# Draw the size first so large rings are as likely as small ones.
node_sets = st.integers(2, 60).flatmap(
    lambda n: st.lists(specs, min_size=n, max_size=n, unique=True)
)
vnode_counts = st.integers(8, 200)
seeds = st.integers(0, 2**32 - 1)
odd_keys = st.lists(st.text(max_size=20) | st.binary(max_size=20), max_size=20)


def make_keys(seed: int, count: int) -> list[str]:
    rng = random.Random(seed)
    return [f"key:{rng.getrandbits(64):016x}" for _ in range(count)]


def share_sigma(p: float, points: int, keys: int) -> float:
    """Standard deviation of a node's observed key share.

    A node holding m of M uniformly placed points owns an arc distributed as
    Beta(m, M - m) (variance p(1-p)/(M+1), p = m/M); counting K random keys
    adds binomial noise p(1-p)/K.
    """
    var = p * (1 - p) / (points + 1) + p * (1 - p) / keys
    return math.sqrt(var)


def share_violations(
    counts: Counter[Node], ring: HashRing, keys: int, sigmas: float = SIGMAS
) -> list[str]:
    """Nodes whose share of ``keys`` is implausible for their weight share."""
    total_weight = sum(n.weight for n in ring)
    points = ring.vnodes * total_weight
    out = []
    for node in ring:
        p = node.weight / total_weight
        observed = counts.get(node, 0) / keys
        bound = sigmas * share_sigma(p, points, keys)
        if abs(observed - p) > bound:
            out.append(f"{node}: share {observed:.4f}, expected {p:.4f} +- {bound:.4f}")
    return out


def reference_lookup(ring: HashRing) -> Callable[[str | bytes], Node]:
    """Owner lookup rebuilt from scratch: the first point >= the key's hash, wrapping."""
    members = ring.nodes
    key_hash: Callable[[str | bytes], int]
    if ring.hash == "murmur3":
        entries = sorted((p, n.label, n) for n in members for p in murmur3_points(n, ring.vnodes))
        points, owners = [e[0] for e in entries], [e[2] for e in entries]
        key_hash = murmur3_key_hash
    else:
        continuum = sorted(ketama_points(members))
        points, owners = [e[0] for e in continuum], [members[e[1]] for e in continuum]
        key_hash = ketama_key_hash

    def owner(key: str | bytes) -> Node:
        return owners[bisect_left(points, key_hash(key)) % len(points)]

    return owner


def reference_preferences(ring: HashRing, key: str | bytes, n: int) -> list[Node]:
    """The first ``n`` distinct nodes clockwise from the key's point, rebuilt from scratch."""
    entries = sorted((p, node.label, node) for node in ring.nodes
                     for p in murmur3_points(node, ring.vnodes))
    start = bisect_left([e[0] for e in entries], murmur3_key_hash(key))
    out: list[Node] = []
    for step in range(len(entries)):
        node = entries[(start + step) % len(entries)][2]
        if node not in out:
            out.append(node)
    return out[:n]


# -- murmur3: membership changes -------------------------------------------------


@SETTINGS
@given(
    nodes=node_sets,
    vnodes=vnode_counts,
    seed=seeds,
    extra=odd_keys,
    pick=st.integers(0, 10**6),
)
def test_removing_a_node_moves_exactly_its_keys(
    nodes: list[str], vnodes: int, seed: int, extra: list[str | bytes], pick: int
) -> None:
    ring = HashRing(nodes, vnodes=vnodes)
    ring._check()
    keys: list[str | bytes] = [*make_keys(seed, 3000), *extra]
    before = {k: ring.nodes_for(k, 3) for k in keys}
    victim = ring.nodes[pick % len(nodes)]

    ring.remove(victim)
    ring._check()

    moved = 0
    for key in keys:
        old = before[key]
        now = ring.node_for(key)
        if old[0] == victim:
            moved += 1
            # Its keys go to the next node of their preference list, which is
            # where failover sends them too.
            assert now == old[1]
        else:
            assert now == old[0]
        survivors = [n for n in old if n != victim]
        assert ring.nodes_for(key, len(survivors)) == survivors

    # The victim's share of keys is about its share of the weight, 1/N.
    p = 1 / len(nodes)
    sample = len(keys) - len(extra)
    moved_sample = sum(1 for k in keys[:sample] if before[k][0] == victim)
    bound = SIGMAS * share_sigma(p, vnodes * len(nodes), sample)
    assert abs(moved_sample / sample - p) <= bound
    assert moved >= 1 or moved_sample == 0


@SETTINGS
@given(nodes=node_sets, vnodes=vnode_counts, seed=seeds, extra=odd_keys, new=specs)
def test_adding_a_node_moves_keys_only_onto_it(
    nodes: list[str], vnodes: int, seed: int, extra: list[str | bytes], new: str
) -> None:
    ring = HashRing(nodes, vnodes=vnodes)
    if new in ring:
        return
    keys: list[str | bytes] = [*make_keys(seed, 3000), *extra]
    before = {k: ring.nodes_for(k, 3) for k in keys}

    added = ring.add(new)
    ring._check()

    for key in keys:
        now = ring.node_for(key)
        assert now in (before[key][0], added)
        # The new node slots into the old preference list; the rest keep their order.
        prefs = ring.nodes_for(key, 4)
        assert [n for n in prefs if n != added][:3] == before[key]

    ring.remove(added)
    ring._check()
    assert all(ring.nodes_for(k, 3) == before[k] for k in keys)


@SETTINGS
@given(
    nodes=node_sets,
    vnodes=vnode_counts,
    keys=st.lists(st.text() | st.binary(), min_size=1, max_size=30),
    n=st.integers(1, 64),
)
def test_nodes_for_is_distinct_and_starts_at_the_owner(
    nodes: list[str], vnodes: int, keys: list[str | bytes], n: int
) -> None:
    ring = HashRing(nodes, vnodes=vnodes)
    for key in keys:
        prefs = ring.nodes_for(key, n)
        assert len(prefs) == min(n, len(nodes))
        assert len(set(prefs)) == len(prefs)
        assert prefs[0] == ring.node_for(key)
        assert all(p in ring for p in prefs)
        assert prefs == reference_preferences(ring, key, n)  # n=2 has a shortcut of its own


@SETTINGS
@given(
    nodes=node_sets,
    vnodes=vnode_counts,
    hash_=st.sampled_from(["murmur3", "ketama"]),
    keys=st.lists(st.text() | st.binary(), max_size=40),
)
def test_group_agrees_with_node_for(
    nodes: list[str], vnodes: int, hash_: str, keys: list[str | bytes]
) -> None:
    ring = HashRing(nodes, vnodes=vnodes, hash=hash_)
    groups = ring.group(keys)
    assert [k for group in groups.values() for k in group] == sorted(
        keys, key=lambda k: list(groups).index(ring.node_for(k)))  # stable, by owner
    for node, group in groups.items():
        assert group and all(ring.node_for(k) == node for k in group)


@SETTINGS
@given(nodes=node_sets, vnodes=st.integers(1, 50), seed=seeds)
def test_placement_does_not_depend_on_insertion_order(
    nodes: list[str], vnodes: int, seed: int
) -> None:
    ring = HashRing(nodes, vnodes=vnodes)
    shuffled = list(nodes)
    random.Random(seed).shuffle(shuffled)
    other = HashRing(vnodes=vnodes)
    for spec in shuffled:
        other.add(spec)
    other._check()
    for key in make_keys(seed, 300):
        assert ring.nodes_for(key, 3) == other.nodes_for(key, 3)


# -- murmur3: load shares ----------------------------------------------------------

SHARE_KEYS = 20_000


@SETTINGS
@given(nodes=node_sets, vnodes=st.integers(50, 200), seed=seeds)
def test_each_node_share_is_about_one_over_n(nodes: list[str], vnodes: int, seed: int) -> None:
    ring = HashRing(nodes, vnodes=vnodes)
    counts = Counter(ring.node_for(k) for k in make_keys(seed, SHARE_KEYS))
    assert share_violations(counts, ring, SHARE_KEYS) == []


@SETTINGS
@given(
    weighted=st.integers(2, 30).flatmap(
        lambda n: st.lists(
            st.tuples(specs, st.integers(1, 5)), min_size=n, max_size=n, unique_by=lambda t: t[0]
        )
    ),
    vnodes=st.integers(50, 150),
    seed=seeds,
)
def test_share_tracks_weight(weighted: list[tuple[str, int]], vnodes: int, seed: int) -> None:
    ring = HashRing([f"{spec}:{weight}" for spec, weight in weighted], vnodes=vnodes)
    ring._check()
    counts = Counter(ring.node_for(k) for k in make_keys(seed, SHARE_KEYS))
    assert share_violations(counts, ring, SHARE_KEYS) == []


def test_share_check_rejects_broken_rings() -> None:
    # The bound must have teeth across the whole strategy space: a ring that
    # puts every key on its first node, or one that ignores weights, fails it.
    for n in (2, 3, 10, 60):
        for vnodes in (50, 200):
            ring = HashRing([f"10.0.0.{i}:11211" for i in range(n)], vnodes=vnodes)
            first = Counter({ring.nodes[0]: SHARE_KEYS})
            assert share_violations(first, ring, SHARE_KEYS), (n, vnodes)
    ring = HashRing(["10.0.0.1:11211:1", "10.0.0.2:11211:5"], vnodes=50)
    unweighted = Counter({node: SHARE_KEYS // 2 for node in ring})
    assert share_violations(unweighted, ring, SHARE_KEYS)
    weighted = Counter({ring.nodes[0]: SHARE_KEYS // 6, ring.nodes[1]: SHARE_KEYS * 5 // 6})
    assert share_violations(weighted, ring, SHARE_KEYS) == []


# -- determinism across processes ----------------------------------------------------

FIXED_NODES = [
    "10.0.0.1:11211",
    "10.0.0.2:11211:2",
    "10.0.0.3:11212",
    "[2001:db8::5]:11211",
    "10.0.0.4:11211:3 cache-d",
]

# Run as is in this process and, with a different PYTHONHASHSEED, in a child.
PLACEMENT_CODE = """
import random
from memring import HashRing

def placements(nodes):
    rng = random.Random(7)
    keys = [f"key:{rng.getrandbits(64):016x}" for _ in range(2000)]
    keys += ["", "a", b"a", "h\\u00e9llo", b"\\xff"]
    out = {}
    for name in ("murmur3", "ketama"):
        ring = HashRing(nodes, hash=name)
        out[name] = [[n.label for n in ring.nodes_for(k, 3)] for k in keys]
    return out
"""


def placements_here(nodes: list[str]) -> dict[str, list[list[str]]]:
    namespace: dict[str, object] = {}
    exec(PLACEMENT_CODE, namespace)
    result = namespace["placements"](nodes)  # type: ignore[operator]
    assert isinstance(result, dict)
    return result


def placements_in_subprocess(nodes: list[str], hash_seed: str) -> dict[str, list[list[str]]]:
    script = PLACEMENT_CODE + f"\nimport json\nprint(json.dumps(placements({nodes!r})))\n"
    result = subprocess.run(
        [sys.executable, "-c", script],
        env=dict(os.environ, PYTHONHASHSEED=hash_seed),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    decoded = json.loads(result.stdout)
    assert isinstance(decoded, dict)
    return decoded


def test_placement_is_the_same_in_every_process() -> None:
    here = placements_here(FIXED_NODES)
    for name in ("murmur3", "ketama"):
        assert len(here[name]) == 2005
        assert len({prefs[0] for prefs in here[name]}) == len(FIXED_NODES)
    for hash_seed in ("0", "4242"):
        assert placements_in_subprocess(FIXED_NODES, hash_seed) == here


# -- ketama mode -------------------------------------------------------------------------


@SETTINGS
@given(
    nodes=node_sets,
    keys=st.lists(st.text() | st.binary(), min_size=1, max_size=30),
    n=st.integers(1, 64),
)
def test_ketama_nodes_for_is_distinct_and_starts_at_the_owner(
    nodes: list[str], keys: list[str | bytes], n: int
) -> None:
    ring = HashRing(nodes, hash="ketama")
    ring._check()
    for key in keys:
        prefs = ring.nodes_for(key, n)
        assert len(prefs) == min(n, len(nodes))
        assert len(set(prefs)) == len(prefs)
        assert prefs[0] == ring.node_for(key)


@SETTINGS
@given(nodes=node_sets, seed=seeds, pick=st.integers(0, 10**6))
def test_ketama_placement_is_a_function_of_the_member_list(
    nodes: list[str], seed: int, pick: int
) -> None:
    ring = HashRing(nodes, hash="ketama")
    twin = HashRing(nodes, hash="ketama")
    keys = make_keys(seed, 500)
    assert [ring.nodes_for(k, 2) for k in keys] == [twin.nodes_for(k, 2) for k in keys]
    owner = reference_lookup(ring)
    assert all(ring.node_for(key) == owner(key) for key in keys)

    # After a removal the ring equals a fresh ring of the remaining members.
    victim = ring.nodes[pick % len(nodes)]
    ring.remove(victim)
    ring._check()
    fresh = HashRing([n for n in nodes if n in ring], hash="ketama")
    assert ring.nodes == fresh.nodes
    assert [ring.nodes_for(k, 2) for k in keys] == [fresh.nodes_for(k, 2) for k in keys]


# -- stateful: any sequence of adds and removes ---------------------------------------

POOL = [f"10.1.{i // 4}.{i}:{11211 + i % 3}" for i in range(12)] + ["10.2.0.1:11211:3 heavy"]


class RingMachine(RuleBasedStateMachine):
    """Random adds and removes; the ring must always match a from-scratch model."""

    hash_name = "murmur3"

    def __init__(self) -> None:
        super().__init__()
        self.ring = HashRing(vnodes=8, hash=self.hash_name)
        self.members: list[Node] = []

    @rule(index=st.integers(0, len(POOL) - 1))
    def add(self, index: int) -> None:
        spec = POOL[index]
        if spec in self.ring:
            return
        self.members.append(self.ring.add(spec))
        self.ring._check()

    @precondition(lambda self: self.members)
    @rule(index=st.integers(0, 10**6))
    def remove(self, index: int) -> None:
        node = self.members.pop(index % len(self.members))
        assert self.ring.remove(node) == node
        self.ring._check()

    @precondition(lambda self: self.members)
    @rule(keys=st.lists(st.text(max_size=12) | st.binary(max_size=12), min_size=1, max_size=10))
    def lookups_match_the_model(self, keys: list[str | bytes]) -> None:
        owner = reference_lookup(self.ring)
        for key in keys:
            assert self.ring.node_for(key) == owner(key)
            prefs = self.ring.nodes_for(key, 3)
            assert len(prefs) == min(3, len(self.members)) == len(set(prefs))

    @invariant()
    def membership_matches(self) -> None:
        assert self.ring.nodes == self.members
        assert len(self.ring) == len(self.members)


class KetamaRingMachine(RingMachine):
    hash_name = "ketama"


TestRingMachine = RingMachine.TestCase
TestRingMachine.settings = settings(SETTINGS, max_examples=25, stateful_step_count=20)
TestKetamaRingMachine = KetamaRingMachine.TestCase
TestKetamaRingMachine.settings = settings(SETTINGS, max_examples=25, stateful_step_count=20)
