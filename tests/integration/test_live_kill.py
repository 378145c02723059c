"""A node killed with SIGKILL: failover to the next node, or a clear failure."""

from __future__ import annotations

import time

import pytest
from pymemcache.serde import FLAG_TEXT

from memring import Failover, MemringError, MultiKeyError, NodeUnavailable
from memring.engine.base import ITEM_OVERHEAD
from memring.engine.versions import Kind, decode
from tests import faces

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("face", faces.FACES, indirect=True)]


def _spread(client, ns, n=40):
    keys = [f"{ns}:{i}" for i in range(n)]
    assert {client.ring.node_for(k) for k in keys} == set(client.ring.nodes)
    return keys


# -- Failover("next") ------------------------------------------------------------
def test_next_moves_a_dead_nodes_keys_to_the_next_node(
        fresh_cluster, make_client, raw, keys_on, ns) -> None:
    client = make_client(fresh_cluster, failover=Failover("next"))
    dead = fresh_cluster[0]
    home = dead.node
    mine = keys_on(client, home, 12, ns)
    others = [k for k in _spread(client, f"{ns}:o") if client.ring.node_for(k) != home]
    assert client.set_many({k: "before" for k in mine + others}) == []
    dead.kill()

    for k in mine:
        assert client.set(k, f"after {k}") is True
    for k in mine:
        target = client.route(k)
        assert target != home
        assert target == client.ring.nodes_for(k, 2)[1]  # the next node of its list
        copy = decode(raw(target).get(k.encode()), time.time())
        assert copy.copy and copy.item == (f"after {k}".encode(), FLAG_TEXT)
        assert client.get(k) == f"after {k}"
    assert client.get_many(mine + others) == {
        **{k: f"after {k}" for k in mine}, **dict.fromkeys(others, "before")}
    for k in others:  # nothing else moved
        assert client.route(k) == client.ring.node_for(k)
        held = decode(raw(client.route(k)).get(k.encode()), time.time())
        assert not held.copy and held.item == (b"before", FLAG_TEXT)

    status = client.health()[home.label]
    assert status.state.value == "down"
    metrics = client.metrics()["nodes"][home.label]
    assert metrics["failovers"] >= len(mine)
    assert metrics["state_changes"] >= 1


def test_next_every_write_works_on_the_failover_node(
        fresh_cluster, make_client, raw, keys_on, ns) -> None:
    client = make_client(fresh_cluster, encoding="utf-8")
    dead = fresh_cluster[1]
    a, b, c, d, e, f, g = keys_on(client, dead.node, 7, ns)
    dead.kill()
    assert client.set_many({a: 1, b: "two"}) == []
    assert client.get_many([a, b]) == {a: 1, b: "two"}
    assert client.add(c, "new") is True
    assert client.add(c, "again") is False
    assert client.replace(c, "replaced") is True
    assert client.replace(d, "nothing") is False
    assert client.incr(a, 41) == 42
    assert client.decr(a, 100) == 0
    assert client.incr(e, 1) is None
    assert client.append(b, "!") is True
    assert client.prepend(b, "¡") is True
    assert client.touch(b, 100) is True
    assert client.get_many([a, b, c, d, e]) == {a: 0, b: "¡two!", c: "replaced"}
    value, token = client.gets(c)
    assert value == "replaced"
    assert client.cas(c, "cas'd", token) is True
    assert client.cas(c, "stale", token) is False
    assert client.get(c) == "cas'd"
    assert client.delete(c) is True
    assert client.get(c) is None
    target = client.route(c)
    assert decode(raw(target).get(c.encode()), time.time()).kind is Kind.TOMBSTONE  # not nothing
    assert client.delete_many([a, b]) is True
    assert client.get_many([a, b, c]) == {}
    # The largest value memring accepts still fits as a failover copy (trailer, flags).
    def biggest(key: str) -> int:
        return 1024 * 1024 - ITEM_OVERHEAD - len(key.encode())

    assert client.set(f, b"x" * biggest(f)) is True
    assert client.get(f) == b"x" * biggest(f)
    assert client.set(g, "t" * biggest(g)) is True
    assert client.get(g) == "t" * biggest(g)
    assert all(client.route(k) != dead.node for k in (a, b, c, d, e, f, g))


# -- Failover("fail") -------------------------------------------------------------
def test_fail_raises_node_unavailable(fresh_cluster, make_client, keys_on, ns) -> None:
    client = make_client(fresh_cluster, failover=Failover("fail"), key_prefix="p:")
    dead = fresh_cluster[2]
    k = keys_on(client, dead.node, 1, ns, prefix="p:")[0]
    live = [x for x in _spread(client, f"{ns}:o") if client.ring.node_for("p:" + x) != dead.node]
    client.set(k, "v")
    client.set_many(dict.fromkeys(live, "live"))
    dead.kill()
    for call in (lambda: client.get(k), lambda: client.get(k),  # failing, then known down
                 lambda: client.set(k, "v"), lambda: client.delete(k),
                 lambda: client.incr(k, 1), lambda: client.gets(k)):
        with pytest.raises(NodeUnavailable) as info:
            call()
        assert info.value.node == dead.node
        assert info.value.key == b"p:" + k.encode()
        assert isinstance(info.value, ConnectionError)
    assert client.route(k) == dead.node  # "fail" never reroutes
    assert client.get_many(live) == dict.fromkeys(live, "live")  # other nodes unaffected
    assert client.health()[dead.node.label].state.value == "down"


def test_fail_with_return_default_acts_like_a_miss(
        fresh_cluster, make_client, keys_on, ns) -> None:
    client = make_client(fresh_cluster, failover=Failover("fail", return_default=True))
    dead = fresh_cluster[3]
    k = keys_on(client, dead.node, 1, ns)[0]
    client.set(k, "v")
    dead.kill()
    assert client.get(k, "default") == "default"
    assert client.get(k) is None
    assert client.gets(k) == (None, None)
    assert client.set(k, "w") is False
    assert client.add(k, "w") is False
    assert client.incr(k, 1) is None
    assert client.metrics()["defaults_returned"] >= 6


def test_get_many_with_a_dead_node(fresh_cluster, make_client, ns) -> None:
    strict = make_client(fresh_cluster, failover=Failover("fail"))
    lenient = make_client(fresh_cluster, failover=Failover("fail", return_default=True))
    keys = _spread(strict, ns)
    values = {k: f"v{i}" for i, k in enumerate(keys)}
    assert strict.set_many(values) == []
    dead = fresh_cluster[0]
    lost = {k for k in keys if strict.ring.node_for(k) == dead.node}
    survivors = {k: v for k, v in values.items() if k not in lost}
    assert lost and survivors
    dead.kill()

    for _ in range(2):  # the call that finds the node dead, then one that knows it
        assert lenient.get_many(keys) == survivors

    for _ in range(2):
        with pytest.raises(MultiKeyError) as info:
            strict.get_many(keys)
        assert info.value.results == survivors
        assert set(info.value.failed) == lost
        assert all(isinstance(e, NodeUnavailable) and e.node == dead.node
                   for e in info.value.failed.values())

    with pytest.raises(MultiKeyError) as info:
        strict.set_many(values)
    assert set(info.value.failed) == lost
    assert sorted(lenient.set_many(values)) == sorted(lost)  # the keys not stored


def test_cluster_commands_with_a_dead_node(fresh_cluster, make_client, ns) -> None:
    client = make_client(fresh_cluster)
    keys = _spread(client, ns)
    client.set_many(dict.fromkeys(keys, "v"))
    dead = fresh_cluster[3]
    dead.kill()
    client.get_many(keys)  # finds the node dead
    live = {n.label for n in fresh_cluster.nodes if n != dead.node}
    assert set(client.stats()) == live
    assert set(client.version()) == live
    assert client.flush_all() is False  # a node that is down was not flushed
    assert client.get_many(keys) == {}


def test_every_node_dead(fresh_cluster, make_client, ns) -> None:
    writer = make_client(fresh_cluster)
    keys = _spread(writer, ns)
    assert writer.set_many(dict.fromkeys(keys, "v")) == []
    for p in fresh_cluster.processes:
        p.kill()
    for failover in (Failover("next"), Failover("fail")):
        client = make_client(fresh_cluster, failover=failover)
        for _ in range(2):  # finding the nodes dead, then knowing it
            with pytest.raises(MemringError):
                client.get(keys[0])
            with pytest.raises(MemringError):
                client.set(keys[0], "v")
            with pytest.raises(MultiKeyError):
                client.get_many(keys)
        assert client.stats() == {}
        assert client.version() == {}
        assert client.flush_all() is False


def test_node_restarted_empty_gets_its_outage_keys_back(
        fresh_cluster, make_client, raw, keys_on, ns) -> None:
    # failover_ttl=2, not 1: memcached's clock ticks once a second, so an item
    # stored with expire=1 can vanish at once (a copy must outlive the test's steps).
    client = make_client(fresh_cluster, failover=Failover("next", failover_ttl=2))
    node = fresh_cluster[1]
    label = node.node.label
    kept, changed, deleted = (keys_on(client, node.node, 12, ns)[i::3] for i in range(3))
    assert client.set_many({k: "before" for k in kept + changed + deleted}) == []
    old_pid = node.pid
    node.kill()
    for k in changed:
        assert client.set(k, f"outage {k}") is True
    for k in deleted:
        assert client.delete(k) is True
    assert client.health()[label].state.value == "down"
    node.start()  # same port, empty
    deadline = time.monotonic() + 5
    while client.health()[label].state.value == "down":
        assert time.monotonic() < deadline, "the probe did not bring the node back"
        time.sleep(0.01)
    status = client.health()[label]
    assert status.pid == node.pid != old_pid
    assert client.get_many(kept + changed + deleted) == {k: f"outage {k}" for k in changed}
    deadline = time.monotonic() + 7
    while client.health()[label].state.value != "up":
        assert time.monotonic() < deadline, "warming did not end"
        time.sleep(0.02)
    # Up again: the outage-time values were moved home (hinted handoff).
    for k in changed:
        moved = decode(raw(node.node).get(k.encode()), time.time())
        assert not moved.copy and moved.item == (f"outage {k}".encode(), FLAG_TEXT)
    assert client.get_many(kept + changed + deleted) == {k: f"outage {k}" for k in changed}
