"""Backup mode against real memcached processes: two copies of every key.

Losing any one node loses no key, a hung node never serves an old value
when it returns, a restarted node is repaired from its partner, and every
single-key operation keeps both copies equal (see the Backup contract and
Invariant S in the design notes).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from pymemcache.client.base import Client as PymemcacheClient

from memring import (
    BackupClient,
    Failover,
    HealthPolicy,
    Node,
    NodeState,
    ServerError,
    Timeouts,
)
from memring.engine.serde import safe_serde
from memring.engine.versions import Kind, decode
from memring.tools.local import LocalCluster
from tests import faces
from tests.stored import ttl

pytestmark = pytest.mark.integration
#: Tests marked so run on both faces. Left to the sync face, for the time they take: the
#: 20,000-key kill of every node in turn (its async twin, under concurrent tasks, is
#: in test_async.py) and the two scenarios of a second fault while a node warms (the
#: property tests run those on both faces).
both = pytest.mark.parametrize("face", faces.FACES, indirect=True)

TIMEOUTS = Timeouts(connect=0.2, read=0.3)
HEALTH = HealthPolicy(backoff_initial=0.1, backoff_max=0.3, jitter=0)
FAILOVER_TTL = 3
FAILOVER = Failover("next", failover_ttl=FAILOVER_TTL)
#: How long a returning node is warming, plus slack for the prober.
WARMING = FAILOVER.warming_seconds + 1.0

MANY = 20_000
BATCH = 1_000


# -- helpers -----------------------------------------------------------------
@pytest.fixture
def make_backup(face: str) -> Iterator[Callable[..., BackupClient]]:
    """Backup clients of the ``face`` the test runs on (every test runs on both)."""
    made: list[BackupClient] = []

    def make(cluster: LocalCluster, **options: Any) -> BackupClient:
        options.setdefault("timeouts", TIMEOUTS)
        options.setdefault("health", HEALTH)
        options.setdefault("failover", FAILOVER)
        c = faces.make(face, cluster.servers, backup=True, **options)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


def wait_for(what: str, predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def state(client: BackupClient, node: Node) -> NodeState:
    return client.health()[node.label].state


def stored(raw: Callable[[Node], PymemcacheClient], node: Node,
           key: str) -> tuple[Kind, Any, int] | None:
    """What ``node`` really holds for ``key``: (kind, value, absolute expiry), or None."""
    item = raw(node).get(key.encode())
    if item is None:
        return None
    st = decode(item, time.time())
    if st.kind is not Kind.VALUE:
        return st.kind, None, 0
    return st.kind, safe_serde.deserialize(key.encode(), *st.item), st.expiry


def write_all(client: BackupClient, values: dict[str, Any]) -> None:
    items = list(values.items())
    for i in range(0, len(items), BATCH):
        assert client.set_many(dict(items[i:i + BATCH])) == []


@dataclass
class Audit:
    """Reads checked against the expected values (None: deleted)."""

    stale: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def check(self, key: str, expected: Any, got: Any) -> None:
        if got == expected:
            return
        if expected is None:
            self.resurrected.append(key)
        elif got is None:
            self.lost.append(key)
        else:
            self.stale.append(key)

    @property
    def counts(self) -> dict[str, int]:
        return {"stale": len(self.stale), "resurrected": len(self.resurrected),
                "lost": len(self.lost)}


def audit(client: BackupClient, expected: dict[str, Any]) -> Audit:
    """Read every key with ``get`` and with ``get_many``; both must match ``expected``."""
    out = Audit()
    keys = list(expected)
    got_many: dict[str, Any] = {}
    for i in range(0, len(keys), BATCH):
        got_many.update(client.get_many(keys[i:i + BATCH]))
    for key, want in expected.items():
        out.check(key, want, got_many.get(key))
        out.check(key, want, client.get(key))
    return out


def assert_clean(result: Audit, what: str) -> None:
    assert result.counts == {"stale": 0, "resurrected": 0, "lost": 0}, (
        f"{what}: {result.counts}; e.g. stale {result.stale[:5]}, "
        f"resurrected {result.resurrected[:5]}, lost {result.lost[:5]}")


def keys_with(client: BackupClient, keys: Iterable[str], node: Node,
              position: int) -> list[str]:
    """The keys whose owner number ``position`` (0: primary, 1: backup) is ``node``."""
    return [k for k in keys if client.owners(k)[position] == node]


def holders(raw: Callable[[Node], PymemcacheClient], nodes: Sequence[Node],
            key: str) -> dict[Node, tuple[Kind, Any, int]]:
    found = {}
    for node in nodes:
        got = stored(raw, node, key)
        if got is not None:
            found[node] = got
    return found


def assert_copies_equal(client: BackupClient, raw: Callable[[Node], PymemcacheClient],
                        key: str) -> Any:
    """Both owners hold the same value with the same expiry; returns it (None if absent)."""
    primary, backup = client.owners(key)
    assert primary != backup
    a, b = stored(raw, primary, key), stored(raw, backup, key)
    live_a = a if a is not None and a[0] is Kind.VALUE else None
    live_b = b if b is not None and b[0] is Kind.VALUE else None
    assert live_a == live_b, f"{key}: primary {a} != backup {b}"
    return None if live_a is None else live_a[1]


# -- losing one node ---------------------------------------------------------
@pytest.mark.parametrize("victim", range(4))
def test_killing_any_one_node_loses_no_key(fresh_cluster, make_backup, victim: int) -> None:
    client = make_backup(fresh_cluster)
    expected = {f"s:{i}": f"session-{i}" for i in range(MANY)}
    write_all(client, expected)

    fresh_cluster[victim].kill()

    result = audit(client, expected)  # any error reaching us fails the test
    assert_clean(result, f"node {victim} killed")
    assert state(client, fresh_cluster[victim].node) is NodeState.DOWN
    # The dead node was the primary of about a quarter of the keys.
    assert len(keys_with(client, expected, fresh_cluster[victim].node, 0)) == 0


# -- a hung node returns: Invariant S ----------------------------------------
@both
def test_hung_node_returns_without_stale_reads_or_resurrected_deletes(
        fresh_cluster, make_backup, raw) -> None:
    a = make_backup(fresh_cluster)
    b = make_backup(fresh_cluster)
    expected: dict[str, Any] = {f"h:{i}": f"old-{i}" for i in range(2_000)}
    write_all(a, expected)
    victim = fresh_cluster[0]
    node = victim.node
    primary_of = keys_with(a, expected, node, 0)
    backup_of = keys_with(a, expected, node, 1)
    assert len(primary_of) > 200 and len(backup_of) > 200

    victim.hang()
    # Overwrite and delete keys of the hung node through both clients.
    for i, key in enumerate(primary_of[:60]):
        writer = a if i % 2 else b
        assert writer.set(key, f"new-{key}") is True
        expected[key] = f"new-{key}"
    for key in primary_of[60:90]:
        assert b.set(key, f"first-{key}") is True
        assert a.set(key, f"second-{key}") is True
        expected[key] = f"second-{key}"
    batch = {k: f"many-{k}" for k in primary_of[90:150] + backup_of[:40]}
    assert a.set_many(batch) == []
    expected.update(batch)
    for i, key in enumerate(primary_of[150:190] + backup_of[40:60]):
        (a if i % 2 else b).delete(key)
        expected[key] = None
    assert b.delete_many(primary_of[190:220]) is True
    expected.update(dict.fromkeys(primary_of[190:220]))
    assert state(a, node) is NodeState.DOWN and state(b, node) is NodeState.DOWN

    victim.resume()
    wait_for("both clients to see the node back",
             lambda: all(state(c, node) is not NodeState.DOWN for c in (a, b)))
    for who, c in (("a", a), ("b", b)):
        assert_clean(audit(c, expected), f"client {who}, node warming")

    wait_for("the warming window to end",
             lambda: all(state(c, node) is NodeState.UP for c in (a, b)), timeout=WARMING + 5)
    for who, c in (("a", a), ("b", b)):
        assert_clean(audit(c, expected), f"client {who}, after the warming window")
    # The returned node itself holds the outage's writes and deletes now.
    for key in primary_of[:220]:
        got = stored(raw, node, key)
        want = expected[key]
        assert (got[1] if got is not None else None) == want, key


def test_other_owner_dies_while_the_returned_node_warms(fresh_cluster, make_backup,
                                                      raw) -> None:
    """Two faults in a row: p hangs and returns, then its partner s dies while p warms.

    During p's outage its keys went to s and to a stand-in; the stand-in's
    copies must never win over what was written after p returned.
    """
    a = make_backup(fresh_cluster)
    b = make_backup(fresh_cluster)
    p, s = fresh_cluster[0], fresh_cluster[1]
    keys = [k for k in (f"w:{i}" for i in range(4_000))
            if a.ring.nodes_for(k, 2) in ([p.node, s.node], [s.node, p.node])]
    assert len(keys) > 300
    expected: dict[str, Any] = {k: "old" for k in keys}
    write_all(a, expected)

    p.hang()
    outage = keys[:200]
    for i, key in enumerate(outage):
        c = a if i % 2 else b
        if i % 5 == 4:
            assert c.delete(key) is True
            expected[key] = None
        else:
            assert c.set(key, f"outage-{i}") is True
            expected[key] = f"outage-{i}"
    p.resume()
    wait_for("p to be back", lambda: all(state(c, p.node) is NodeState.WARMING for c in (a, b)))

    def handed_off() -> bool:
        return all((stored(raw, p.node, k) or (None, None))[1] == expected[k] for k in outage)

    wait_for("handoff to p", handed_off, timeout=WARMING)
    # While p warms: overwrite and delete keys, outage ones included.
    for i, key in enumerate(keys[100:300]):
        if i % 4 == 3:
            assert a.delete(key) is (expected[key] is not None)
            expected[key] = None
        else:
            assert b.set(key, f"warming-{i}") is True
            expected[key] = f"warming-{i}"

    s.kill()
    for who, c in (("a", a), ("b", b)):
        assert_clean(audit(c, expected), f"client {who}, p warming, s dead")
    wait_for("the warming window to end",
             lambda: all(state(c, p.node) is NodeState.UP for c in (a, b)), timeout=WARMING + 5)
    for who, c in (("a", a), ("b", b)):
        assert_clean(audit(c, expected), f"client {who}, p up, s dead")


# -- a node restarts empty ---------------------------------------------------
@both
def test_node_restarted_empty_is_repaired_on_read(fresh_cluster, make_backup, raw) -> None:
    client = make_backup(fresh_cluster)
    client._engine.queue_rebuild = lambda node, delay=0.0: None  # reads alone must repair it
    expected = {f"r:{i}": {"user": i} for i in range(4_000)}
    write_all(client, expected)
    victim = fresh_cluster[1]
    node = victim.node
    primary_of = keys_with(client, expected, node, 0)
    assert primary_of

    victim.restart()  # between two calls: the client only sees its pooled connections die

    assert client.metrics().get("read_repairs", 0) == 0
    for key in primary_of[:200]:
        assert client.get(key) == expected[key]
        got = stored(raw, node, key)
        assert got is not None and got[1] == expected[key], f"{key} not repaired"
    assert client.metrics()["read_repairs"] >= 200
    # The repaired copy carries the same expiry as the backup's.
    for key in primary_of[:20]:
        assert_copies_equal(client, raw, key)
    assert_clean(audit(client, expected), "node restarted empty")


def test_restarted_node_is_refilled_then_its_partner_may_die(fresh_cluster, make_backup,
                                                            raw) -> None:
    """A node restarts empty; reads while it warms copy its keys back; then a partner dies.

    Read-repair alone fixes only the keys the restarted node is primary of;
    the keys it is the backup of are refilled by reads while it warms.
    """
    client = make_backup(fresh_cluster)
    expected = {f"f:{i}": f"v{i}" for i in range(2_000)}
    write_all(client, expected)
    victim, partner = fresh_cluster[3], fresh_cluster[0]
    backup_of = [k for k in expected
                 if client.ring.nodes_for(k, 2) == [partner.node, victim.node]]
    assert backup_of

    victim.kill()
    assert_clean(audit(client, expected), "node killed")  # the client sees it down
    victim.start()
    wait_for("the node to come back", lambda: state(client, victim.node) is NodeState.WARMING)
    assert_clean(audit(client, expected), "node warming")
    assert client.metrics()["read_repairs"] > 0
    missing = [k for k in backup_of if stored(raw, victim.node, k) is None]
    assert missing == []

    wait_for("the warming window to end",
             lambda: state(client, victim.node) is NodeState.UP, timeout=WARMING + 5)
    partner.kill()
    assert_clean(audit(client, expected), "refilled node up, its partner killed")


@both
def test_restarted_node_is_rebuilt_even_if_no_key_is_read(fresh_cluster, make_backup,
                                                          raw) -> None:
    """A node restarts empty and nobody reads its keys; then a partner dies: nothing is lost.

    Reads can't refill keys nobody reads: the rebuild copies every key the
    restarted node co-owns back from the other owner.
    """
    client = make_backup(fresh_cluster)
    expected = {f"r:{i}": f"v{i}" for i in range(3_000)}
    write_all(client, expected)
    victim, partner = fresh_cluster[1], fresh_cluster[2]
    shared = [k for k in expected
              if set(client.ring.nodes_for(k, 2)) == {victim.node, partner.node}]
    assert shared

    victim.restart()
    for k in expected:  # one write that reaches it: the client learns it restarted
        if victim.node in client.ring.nodes_for(k, 2):
            client.set(k, expected[k])
            break
    wait_for("the rebuild", lambda: client.metrics().get("rebuilt_keys", 0) > 0)
    assert [k for k in shared if stored(raw, victim.node, k) is None] == []
    partner.kill()
    assert_clean(audit(client, expected), "rebuilt node, its partner killed")


@both
def test_node_down_then_restarted_gets_its_outage_keys_back(
        fresh_cluster, make_backup, raw) -> None:
    client = make_backup(fresh_cluster)
    victim = fresh_cluster[2]
    node = victim.node
    keys = [f"d:{i}" for i in range(400)]
    mine = keys_with(client, keys, node, 0) + keys_with(client, keys, node, 1)
    write_all(client, dict.fromkeys(keys, "before"))

    victim.kill()
    # The first write to the dead node finds it down: it is stored on the
    # other owner only, and counted as degraded.
    assert client.set(mine[0], "during") is True
    assert client.metrics()["degraded_writes"] == 1
    assert state(client, node) is NodeState.DOWN
    # Later writes go to two live nodes: the other owner and a stand-in.
    for key in mine[1:]:
        assert client.set(key, "during") is True
        owners = client.owners(key)
        assert node not in owners and len(set(owners)) == 2
        assert set(holders(raw, owners, key)) == set(owners)
    assert client.metrics()["degraded_writes"] == 1

    victim.start()  # empty
    wait_for("the node to come back", lambda: state(client, node) is not NodeState.DOWN)
    expected = {k: ("during" if k in mine else "before") for k in keys}
    assert_clean(audit(client, expected), "restarted node warming")
    # Handoff gave the returning node its outage-time keys back, the
    # degraded write included.
    def missing() -> list[str]:
        return [k for k in mine if (stored(raw, node, k) or (None, None))[1] != "during"]

    wait_for("handoff to the returned node", lambda: not missing(), timeout=WARMING)


# -- every write on two nodes ------------------------------------------------
@both
def test_every_write_reaches_two_distinct_nodes(cluster, make_backup, raw, ns) -> None:
    client = make_backup(cluster)
    keys = [f"{ns}:{i}" for i in range(200)]
    for key in keys[:100]:
        assert client.set(key, key, expire=600) is True
    assert client.set_many({k: k for k in keys[100:]}, expire=600) == []
    now = time.time()
    for key in keys:
        owners = client.owners(key)
        assert owners == client.ring.nodes_for(key, 2)
        assert len(set(owners)) == 2
        found = holders(raw, cluster.nodes, key)
        assert set(found) == set(owners), key
        (k1, v1, e1), (k2, v2, e2) = found.values()
        assert k1 is k2 is Kind.VALUE and v1 == v2 == key
        assert e1 == e2 and now + 590 < e1 <= now + 601
    assert client.metrics().get("degraded_writes", 0) == 0


# -- semantics across the two copies ----------------------------------------
@both
def test_add_never_succeeds_on_one_copy_only(cluster, make_backup, raw, ns) -> None:
    client = make_backup(cluster)
    key = f"{ns}:add"
    assert client.add(key, "first") is True
    assert assert_copies_equal(client, raw, key) == "first"
    assert client.add(key, "second") is False
    assert assert_copies_equal(client, raw, key) == "first"

    # Only the backup has the key (the primary evicted it): add must fail
    # and the primary gets the backup's value back.
    primary, _ = client.owners(key)
    raw(primary).delete(key.encode())
    assert client.add(key, "third") is False
    assert assert_copies_equal(client, raw, key) == "first"

    # After a delete (tombstones on both copies) add succeeds on both.
    assert client.delete(key) is True
    assert client.add(key, "fourth") is True
    assert assert_copies_equal(client, raw, key) == "fourth"
    assert client.get(key) == "fourth"


@both
def test_single_key_operations_behave_like_memcached(cluster, make_backup, raw, ns) -> None:
    """Each operation returns what memcached returns, and the copies stay equal."""
    client = make_backup(cluster)
    ref = PymemcacheClient(cluster[0].address, serde=safe_serde, default_noreply=False,
                           connect_timeout=1.0, timeout=1.0)
    try:
        k = f"{ns}:op"
        r = f"{ns}:ref"

        def both(op: str, *args: Any) -> Any:
            mine = getattr(client, op)(k, *args)
            theirs = getattr(ref, op)(r, *args)
            assert mine == theirs, f"{op}{args}: {mine!r} != memcached's {theirs!r}"
            assert assert_copies_equal(client, raw, k) == ref.get(r), f"after {op}{args}"
            assert client.get(k) == ref.get(r), f"after {op}{args}"
            return mine

        # Missing key.
        both("incr", 1)
        both("decr", 1)
        both("append", "x")
        both("prepend", "x")
        both("replace", "x")
        both("touch", 100)
        both("delete")
        assert client.gets(k) == (None, None) == ref.gets(r)
        # Counters.
        both("set", 100)
        both("incr", 5)
        both("decr", 6)          # 99: memcached pads the shorter number in place
        both("decr", 1000)       # floors at 0
        both("incr", 2**64 - 1)  # wraps around
        both("incr", 1)
        both("set", "text")
        with pytest.raises(ServerError):
            client.incr(k, 1)
        # Concatenation, replace, touch.
        both("append", "-tail")
        both("prepend", "head-")
        both("replace", "replaced")
        both("touch", 100)
        both("add", "not stored")
        # gets / cas.
        value, token = client.gets(k)
        assert value == "replaced" and token is not None
        both("set", "changed")   # the token is stale now
        assert client.cas(k, "mine", token) is False
        assert assert_copies_equal(client, raw, k) == "changed"
        value, token = client.gets(k)
        assert client.cas(k, "mine", token) is True
        assert assert_copies_equal(client, raw, k) == "mine"
        # cas of a deleted key: NOT_FOUND, as memcached answers.
        _, ref_token = ref.gets(r)
        both("delete")
        assert client.cas(k, "late", token) is None
        assert ref.cas(r, "late", ref_token) is None
        assert client.get(k) is None
        both("delete")
        both("add", "again")
        both("add", "again")
    finally:
        ref.close()


@both
def test_expiry_is_the_same_on_both_copies(cluster, make_backup, raw, ns) -> None:
    client = make_backup(cluster)
    key = f"{ns}:exp"
    assert client.set(key, "v", expire=500) is True
    primary, backup = client.owners(key)
    # the expiry the writer gave rides in the value's trailer, and is memcached's
    assert stored(raw, primary, key)[2] == stored(raw, backup, key)[2] > time.time() + 490
    assert 490 <= ttl(primary.address, key) <= 500 and 490 <= ttl(backup.address, key) <= 500
    # memcached's own touch moves both copies' expiry
    assert client.touch(key, 1000) is True
    assert 990 <= ttl(primary.address, key) <= 1000 and 990 <= ttl(backup.address, key) <= 1000
    # A repair onto the primary keeps the backup's expiry (its TTL now, not the trailer's).
    raw(primary).delete(key.encode())
    assert client.get(key) == "v"
    assert abs(ttl(primary.address, key) - ttl(backup.address, key)) <= 2
    # A short expiry ends both copies.
    short = f"{ns}:short"
    assert client.set(short, "v", expire=1) is True
    time.sleep(2.1)
    assert client.get(short) is None
    assert holders(raw, client.owners(short), short) == {}


@both
def test_delete_then_kill_the_primary_is_still_a_miss(fresh_cluster, make_backup,
                                                      raw) -> None:
    client = make_backup(fresh_cluster)
    other = make_backup(fresh_cluster)
    keys = [f"del:{i}" for i in range(40)]
    write_all(client, dict.fromkeys(keys, "v"))
    primary = fresh_cluster.nodes[0]
    doomed = keys_with(client, keys, primary, 0)
    assert doomed
    for key in doomed:
        assert client.delete(key) is True
        _, backup = client.owners(key)
        assert stored(raw, backup, key) == (Kind.TOMBSTONE, None, 0)

    fresh_cluster.process_for(primary).kill()

    for c in (client, other):
        for key in doomed:
            assert c.get(key) is None, key
        assert c.get_many(doomed) == {}
        assert c.get_many(keys) == {k: "v" for k in keys if k not in doomed}


@both
def test_multi_key_calls_across_nodes(cluster, make_backup, raw, ns) -> None:
    client = make_backup(cluster)
    keys = [f"{ns}:{i}" for i in range(120)]
    assert {client.owners(k)[0] for k in keys} == set(cluster.nodes)
    values = {k: {"n": i} for i, k in enumerate(keys)}
    assert client.set_many(values) == []
    assert client.get_many(keys) == values
    assert client.get_multi(keys[:10]) == {k: values[k] for k in keys[:10]}
    for key in keys[::10]:
        assert assert_copies_equal(client, raw, key) == values[key]
    assert client.delete_many(keys[:60]) is True
    assert client.get_many(keys) == {k: values[k] for k in keys[60:]}
    for key in keys[:60:7]:
        assert assert_copies_equal(client, raw, key) is None
        assert {v[0] for v in holders(raw, cluster.nodes, key).values()} == {Kind.TOMBSTONE}
    assert client.gets_many(keys[58:62]).keys() == set(keys[60:62])
