"""HashRing API and the hash contract (golden values)."""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left

import pytest

from memring import ConfigError, HashRing, Node
from memring.hashring import DEFAULT_VNODES, parse_node
from memring.hashring.hashes import (
    KETAMA_POINTS_PER_SERVER,
    ketama_key_hash,
    ketama_points,
    ketama_points_per_server,
    murmur3_key_hash,
    murmur3_points,
    to_bytes,
)

THREE = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]
HASHES = ["murmur3", "ketama"]


def reference_owner(ring: HashRing, key: str | bytes) -> Node:
    """Owner computed from scratch: the first point >= the key's hash, wrapping."""
    members = ring.nodes
    if ring.hash == "murmur3":
        entries = sorted((p, n.label, n) for n in members for p in murmur3_points(n, ring.vnodes))
        points = [e[0] for e in entries]
        owners = [e[2] for e in entries]
        h = murmur3_key_hash(key)
    else:
        continuum = sorted(ketama_points(members))
        points = [e[0] for e in continuum]
        owners = [members[e[1]] for e in continuum]
        h = ketama_key_hash(key)
    i = bisect_left(points, h)
    return owners[i % len(points)]


# -- golden values: the hash contract ------------------------------------------


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("6666", 15315718178274635655),
        ("", 0),
        ("a", 9607679276477937801),
        ("session:42", 13185610189202944250),
        ("memcached", 963898150081195918),
        ("h\u00e9llo", 5634419923683204234),
        (b"\xff\x00", 6163071069786142063),
    ],
)
def test_murmur3_key_hash_golden(key: str | bytes, value: int) -> None:
    assert murmur3_key_hash(key) == value
    assert murmur3_key_hash(to_bytes(key)) == value


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("6666", 2164281833),
        ("", 3649838548),
        ("a", 3111502092),
        ("session:42", 3425615685),
        ("memcached", 1357326829),
        ("h\u00e9llo", 1206407358),
        (b"\xff\x00", 2948589792),
    ],
)
def test_ketama_key_hash_golden(key: str | bytes, value: int) -> None:
    assert ketama_key_hash(key) == value
    assert ketama_key_hash(to_bytes(key)) == value


@pytest.mark.parametrize(
    ("weight", "total", "servers", "points"),
    [
        (1, 25, 25, 156),  # float32 rounds 6.4 * 25 down to 159.99...: 39 hashes, 156 points
        (1, 3, 3, 160),
        (1, 1, 1, 160),
        (1, 10, 10, 160),
        (1, 47, 47, 156),
        (1, 100, 100, 156),
        (2, 5, 4, 256),
        (3, 7, 5, 340),
    ],
)
def test_ketama_points_per_server_golden(
    weight: int, total: int, servers: int, points: int
) -> None:
    assert KETAMA_POINTS_PER_SERVER == 160
    assert ketama_points_per_server(weight, total, servers) == points


def test_murmur3_points_golden() -> None:
    # A node's i-th point is the murmur3 hash of "<label>-<i>".
    assert murmur3_points(Node("10.0.0.1"), 3) == [
        15224987210305017491,
        5195715915149316352,
        15657998933940148222,
    ]
    # An explicit name replaces the address; weight multiplies the count.
    assert murmur3_points(Node("10.0.0.1", 11211, 2, "cache-a"), 1) == [
        7665768722856377310,
        299402219485954580,
    ]
    assert murmur3_points(Node("10.0.0.1"), 3)[0] == murmur3_key_hash("10.0.0.1:11211-0")


def test_ketama_points_golden() -> None:
    continuum = ketama_points([Node("10.0.0.1"), Node("10.0.0.2", 11212)])
    assert continuum[:5] == [
        (563378236, 0, 0),
        (920037467, 0, 1),
        (4058903954, 0, 2),
        (1084864719, 0, 3),
        (3477508792, 0, 4),
    ]
    assert len(continuum) == 320
    # The first four points of a server are the four words of md5("<ketama_name>-0").
    digest = hashlib.md5(b"10.0.0.1-0").digest()
    assert [w for w, _, _ in continuum[:4]] == list(struct.unpack("<4I", digest))
    assert continuum[0][0] == ketama_key_hash("10.0.0.1-0")
    assert continuum[160][0] == ketama_key_hash("10.0.0.2:11212-0")


def test_murmur3_placement_golden() -> None:
    ring = HashRing(["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211:2"], vnodes=160)
    placed = {f"session:{i}": ring.node_for(f"session:{i}").label for i in range(12)}
    a, b, c = "10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"
    assert placed == {
        "session:0": c,
        "session:1": c,
        "session:2": b,
        "session:3": b,
        "session:4": c,
        "session:5": c,
        "session:6": c,
        "session:7": b,
        "session:8": c,
        "session:9": c,
        "session:10": c,
        "session:11": c,
    }
    assert [n.label for n in ring.nodes_for("session:0", 3)] == [c, a, b]


# -- construction --------------------------------------------------------------


def test_defaults() -> None:
    ring = HashRing(THREE)
    assert ring.hash == "murmur3"
    assert ring.vnodes == DEFAULT_VNODES
    assert len(ring) == 3
    assert ring.point_count == 3 * DEFAULT_VNODES
    ring._check()


def test_accepts_every_spec_form() -> None:
    ring = HashRing(["10.0.0.1", ("10.0.0.2", 11212), Node("10.0.0.3", 11213, 2), "h:1:1 name"])
    assert ring.nodes == [
        Node("10.0.0.1"),
        Node("10.0.0.2", 11212),
        Node("10.0.0.3", 11213, 2),
        Node("h", 1, 1, "name"),
    ]


@pytest.mark.parametrize("hash_name", ["md5", "MURMUR3", "", "fnv1a_64", None])
def test_bad_hash_name(hash_name: object) -> None:
    with pytest.raises(ConfigError):
        HashRing(THREE, hash=hash_name)  # type: ignore[arg-type]


@pytest.mark.parametrize("vnodes", [0, -1, True, False, 1.5, "160", None])
def test_bad_vnodes(vnodes: object) -> None:
    with pytest.raises(ConfigError):
        HashRing(THREE, vnodes=vnodes)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        HashRing(THREE, vnodes=vnodes)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "specs",
    [
        ["10.0.0.1", "10.0.0.1"],
        ["10.0.0.1", "10.0.0.1:11211"],
        ["10.0.0.1:11211:1", "10.0.0.1:11211:2"],
        ["10.0.0.1 a", "10.0.0.2 a"],
    ],
)
@pytest.mark.parametrize("hash_name", HASHES)
def test_constructor_rejects_duplicates(specs: list[str], hash_name: str) -> None:
    with pytest.raises(ConfigError):
        HashRing(specs, hash=hash_name)


def test_constructor_rejects_bad_specs() -> None:
    with pytest.raises(ConfigError):
        HashRing(["10.0.0.1", "10.0.0.2:notaport"])


def test_vnodes_and_weight_set_the_point_count() -> None:
    ring = HashRing(["10.0.0.1:11211:1", "10.0.0.2:11211:3"], vnodes=7)
    assert ring.point_count == 7 * 4
    ring._check()


def test_ketama_point_count_follows_libmemcached() -> None:
    ring = HashRing(THREE, hash="ketama", vnodes=7)  # vnodes does not apply
    assert ring.point_count == 3 * 160
    nodes = [f"10.0.1.{i}:11211" for i in range(25)]
    assert HashRing(nodes, hash="ketama").point_count == 25 * 156
    ring._check()


def test_repr() -> None:
    ring = HashRing(["10.0.0.1", "10.0.0.2:11212"], vnodes=10)
    assert repr(ring) == (
        "HashRing(['10.0.0.1:11211', '10.0.0.2:11212'], hash='murmur3', vnodes=10)"
    )


# -- lookups -------------------------------------------------------------------


@pytest.mark.parametrize("hash_name", HASHES)
def test_node_for_returns_a_member_deterministically(hash_name: str) -> None:
    ring = HashRing(THREE, hash=hash_name)
    twin = HashRing(THREE, hash=hash_name)
    for i in range(200):
        key = f"user:{i}"
        node = ring.node_for(key)
        assert node in ring
        assert node == ring.node_for(key) == twin.node_for(key)


@pytest.mark.parametrize("hash_name", HASHES)
def test_node_for_matches_reference(hash_name: str) -> None:
    ring = HashRing(["10.0.0.1", "10.0.0.2:11212", "10.0.0.3:11211:2"], vnodes=5, hash=hash_name)
    keys: list[str | bytes] = [f"k{i}" for i in range(3000)]
    keys += [b"\x00", b"\xff" * 8, ""]
    for key in keys:
        assert ring.node_for(key) == reference_owner(ring, key), key


@pytest.mark.parametrize("hash_name", HASHES)
def test_owner_is_first_point_at_or_after_key_hash(hash_name: str) -> None:
    # "<name>-0" hashes exactly onto the node's first point, so with ">=" the
    # node owns that key (with ">" it would go to the next point).
    ring = HashRing(THREE, vnodes=3, hash=hash_name)
    for node in ring:
        name = node.label if hash_name == "murmur3" else node.ketama_name
        assert ring.node_for(f"{name}-0") == node


def test_wraps_around_past_the_last_point() -> None:
    ring = HashRing(THREE, vnodes=1)
    points = sorted((p, n) for n in ring for p in murmur3_points(n, 1))
    last_point, first_owner = points[-1][0], points[0][1]
    wrapped = [k for k in (f"w{i}" for i in range(20000)) if murmur3_key_hash(k) > last_point]
    assert wrapped, "no key hashed past the last point"
    for key in wrapped:
        assert ring.node_for(key) == first_owner


@pytest.mark.parametrize("hash_name", HASHES)
def test_str_and_utf8_bytes_keys_agree(hash_name: str) -> None:
    ring = HashRing([f"10.0.0.{i}" for i in range(10)], hash=hash_name)
    assert ring.node_for("a") == ring.node_for(b"a")
    for key in ["a", "session:1", "h\u00e9llo", "\u4f1a\u8bdd", "x" * 250]:
        assert ring.node_for(key) == ring.node_for(key.encode("utf-8"))
        assert ring.nodes_for(key, 3) == ring.nodes_for(key.encode("utf-8"), 3)
        assert ring.key_hash(key) == ring.key_hash(key.encode("utf-8"))


def test_key_hash_uses_the_ring_hash() -> None:
    assert HashRing(THREE).key_hash("6666") == murmur3_key_hash("6666")
    assert HashRing(THREE, hash="ketama").key_hash("6666") == ketama_key_hash("6666")


@pytest.mark.parametrize("key", [1, None, 1.5, ["a"]])
@pytest.mark.parametrize("hash_name", HASHES)
def test_non_str_keys_raise_type_error(key: object, hash_name: str) -> None:
    ring = HashRing(THREE, hash=hash_name)
    with pytest.raises(TypeError):
        ring.node_for(key)  # type: ignore[arg-type]


@pytest.mark.parametrize("hash_name", HASHES)
def test_nodes_for_is_a_distinct_preference_list(hash_name: str) -> None:
    nodes = [f"10.0.0.{i}:11211" for i in range(8)]
    ring = HashRing(nodes, hash=hash_name, vnodes=20)
    for i in range(300):
        key = f"k{i}"
        for n in (1, 2, 3, 8):
            prefs = ring.nodes_for(key, n)
            assert len(prefs) == n
            assert len(set(prefs)) == n
            assert prefs[0] == ring.node_for(key)
            assert all(p in ring for p in prefs)
        # Shorter lists are prefixes of longer ones.
        assert ring.nodes_for(key, 8)[:3] == ring.nodes_for(key, 3)


@pytest.mark.parametrize("hash_name", HASHES)
def test_nodes_for_larger_than_ring(hash_name: str) -> None:
    ring = HashRing(THREE, hash=hash_name)
    prefs = ring.nodes_for("k", 10)
    assert len(prefs) == 3
    assert set(prefs) == set(ring)
    assert prefs[0] == ring.node_for("k")
    assert HashRing(["10.0.0.1"], hash=hash_name).nodes_for("k", 2) == [Node("10.0.0.1")]


@pytest.mark.parametrize("n", [0, -1, True, 1.0, "2", None])
def test_nodes_for_rejects_bad_n(n: object) -> None:
    ring = HashRing(THREE)
    with pytest.raises(ValueError):
        ring.nodes_for("k", n)  # type: ignore[arg-type]


@pytest.mark.parametrize("hash_name", HASHES)
def test_empty_ring_raises_lookup_error(hash_name: str) -> None:
    ring = HashRing(hash=hash_name)
    assert len(ring) == 0
    assert list(ring) == []
    assert ring.point_count == 0
    ring._check()
    with pytest.raises(LookupError):
        ring.node_for("k")
    with pytest.raises(LookupError):
        ring.nodes_for("k", 2)
    with pytest.raises(LookupError):
        ring.group(["k"])


@pytest.mark.parametrize("hash_name", HASHES)
def test_ring_emptied_by_remove_raises_lookup_error(hash_name: str) -> None:
    ring = HashRing(["10.0.0.1"], hash=hash_name)
    ring.remove("10.0.0.1")
    ring._check()
    with pytest.raises(LookupError):
        ring.node_for("k")
    ring.add("10.0.0.2")
    assert ring.node_for("k") == Node("10.0.0.2")


# -- membership and mutation -----------------------------------------------------


@pytest.mark.parametrize("hash_name", HASHES)
def test_add_remove_len_contains_iter(hash_name: str) -> None:
    ring = HashRing(THREE, hash=hash_name)
    assert len(ring) == 3
    assert list(ring) == [parse_node(s) for s in THREE]
    assert "10.0.0.1:11211" in ring
    assert "10.0.0.1" in ring
    assert ("10.0.0.1", 11211) in ring
    assert Node("10.0.0.1") in ring
    assert "10.0.0.4" not in ring
    assert "10.0.0.1:11212" not in ring
    assert "not a spec:x" not in ring
    assert 42 not in ring

    added = ring.add("10.0.0.4:11212:2")
    assert added == Node("10.0.0.4", 11212, 2)
    assert len(ring) == 4
    assert added in ring
    assert list(ring)[-1] == added
    ring._check()

    removed = ring.remove("10.0.0.1")
    assert removed == Node("10.0.0.1")
    assert len(ring) == 3
    assert "10.0.0.1" not in ring
    assert ring.nodes == [Node("10.0.0.2"), Node("10.0.0.3"), added]
    ring._check()
    for i in range(200):
        assert ring.node_for(f"k{i}") != removed


def test_iter_is_a_snapshot() -> None:
    ring = HashRing(THREE)
    for node in ring:  # mutating while iterating is safe
        ring.remove(node)
    assert len(ring) == 0


@pytest.mark.parametrize(
    "dup", ["10.0.0.1", "10.0.0.1:11211", "10.0.0.1:11211:5", ("10.0.0.1", 11211)]
)
@pytest.mark.parametrize("hash_name", HASHES)
def test_add_duplicate_raises_config_error(dup: object, hash_name: str) -> None:
    ring = HashRing(THREE, hash=hash_name)
    with pytest.raises(ConfigError):
        ring.add(dup)  # type: ignore[arg-type]
    assert len(ring) == 3
    ring._check()


def test_add_duplicate_name_raises_config_error() -> None:
    ring = HashRing(["10.0.0.1:11211:1 cache-a"])
    with pytest.raises(ConfigError):
        ring.add("10.0.0.9:11211:1 cache-a")


def test_add_bad_spec_raises_config_error() -> None:
    ring = HashRing(THREE)
    with pytest.raises(ConfigError):
        ring.add("10.0.0.9:0")
    assert len(ring) == 3


@pytest.mark.parametrize("missing", ["10.0.0.9", "10.0.0.1:11212", Node("10.0.0.1", 11211, 2)])
@pytest.mark.parametrize("hash_name", HASHES)
def test_remove_missing_raises_key_error(missing: object, hash_name: str) -> None:
    ring = HashRing(THREE, hash=hash_name)
    with pytest.raises(KeyError):
        ring.remove(missing)  # type: ignore[arg-type]
    assert len(ring) == 3
    ring._check()


@pytest.mark.parametrize("hash_name", HASHES)
def test_add_then_remove_restores_placement(hash_name: str) -> None:
    ring = HashRing(THREE, hash=hash_name, vnodes=50)
    keys = [f"k{i}" for i in range(2000)]
    before = [ring.node_for(k) for k in keys]
    ring.add("10.0.0.4")
    ring.remove("10.0.0.4")
    ring._check()
    assert [ring.node_for(k) for k in keys] == before


def test_murmur3_placement_ignores_insertion_order() -> None:
    nodes = [f"10.0.0.{i}:11211" for i in range(12)]
    forward = HashRing(nodes, vnodes=30)
    backward = HashRing(reversed(nodes), vnodes=30)
    built = HashRing(vnodes=30)
    for spec in nodes[::2] + nodes[1::2]:
        built.add(spec)
    for i in range(2000):
        key = f"k{i}"
        assert forward.node_for(key) == backward.node_for(key) == built.node_for(key)
        assert forward.nodes_for(key, 3) == backward.nodes_for(key, 3) == built.nodes_for(key, 3)


def test_name_not_address_places_keys() -> None:
    here = HashRing(["10.0.0.1:11211:1 a", "10.0.0.2:11211:1 b", "10.0.0.3:11211:1 c"])
    moved = HashRing(["10.9.9.1:11300:1 a", "10.9.9.2:11300:1 b", "10.9.9.3:11300:1 c"])
    for hash_name in HASHES:
        here = HashRing(here.nodes, hash=hash_name)
        moved = HashRing(moved.nodes, hash=hash_name)
        for i in range(500):
            assert here.node_for(f"k{i}").name == moved.node_for(f"k{i}").name


def test_removing_a_node_moves_only_its_keys() -> None:
    ring = HashRing([f"10.0.0.{i}" for i in range(5)])
    keys = [f"k{i}" for i in range(5000)]
    before = {k: ring.node_for(k) for k in keys}
    victim = ring.remove("10.0.0.2")
    ring._check()
    for k in keys:
        after = ring.node_for(k)
        if before[k] == victim:
            assert after != victim
        else:
            assert after == before[k]
