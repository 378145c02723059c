"""A backup-mode rebuild that could not read every key is not done: it tries again.

A node that restarted empty is rebuilt by copying back every key it co-owns
from the key's other owner. If listing a source's keys, reading them or
writing them back fails (a slow node timing out, say), the keys left out
have one copy; a fault of their other owner would then lose them, so such
a rebuild must neither count as done nor leave the marker that tells other
clients (and ``wait_redundant``) it is. A node that goes away mid-rebuild is
rebuilt when it answers again, even if it kept what it held (a hang).
"""

from __future__ import annotations

import pytest

from memring import BackupClient, Failover, HealthPolicy, Node
from memring.engine.rebuild import REBUILD_MARKER, REBUILD_RETRY
from memring.errors import NodeTimeout
from tests.fakes import FakeClock, FakeCluster, tick


def _client(cluster: FakeCluster, clock: FakeClock, failure_threshold: int = 3
            ) -> BackupClient:
    return BackupClient(
        [n.label for n in cluster.nodes], failover=Failover("next"),
        health=HealthPolicy(failure_threshold=failure_threshold, jitter=0),
        _transport_factory=cluster.transport_factory, _clock=clock, _hlc=cluster.hlc,
        _background=False)


def _shared(client: BackupClient, keys: list[str], a: Node, b: Node) -> list[str]:
    return [k for k in keys if set(client.ring.nodes_for(k, 2)) == {a, b}]


@pytest.mark.parametrize("failing", ["add", "dump_keys", "meta_many", "batch"])
def test_a_rebuild_cut_short_is_retried_until_every_key_is_back(failing: str) -> None:
    clock = FakeClock()
    cluster = FakeCluster(4, clock)
    client = _client(cluster, clock)
    keys = [f"k:{i}" for i in range(600)]
    assert client.set_many({k: k for k in keys}) == []
    victim, partner = cluster.nodes[0], cluster.nodes[1]
    shared = _shared(client, keys, victim, partner)
    assert shared

    def time_out() -> None:
        raise NodeTimeout("timed out", node=victim if on_victim else partner)

    # The one call of the rebuild that fails: claiming the victim (its marker),
    # listing the partner's keys, reading them from it, or writing them back.
    on_victim = failing in ("add", "batch")
    (cluster[victim] if on_victim else cluster[partner]).before(failing, time_out)
    cluster[victim].restart()
    engine = client._engine
    client._run(engine.rebuild(victim))

    missing = [k for k in shared if cluster[victim].peek(k.encode()) is None]
    assert missing, "the failing call left keys out"
    assert engine._rebuilds[victim].state == "queued"
    assert cluster[victim].peek(REBUILD_MARKER) is None  # no "done", no stale "running"
    assert victim in engine._rebuild_due

    clock.advance(REBUILD_RETRY)
    client._tick()  # the retry, due now (run inline: no background threads here)
    assert [k for k in shared if cluster[victim].peek(k.encode()) is None] == []
    assert engine._rebuilds[victim].state == "done"
    assert victim not in engine._rebuild_due


def test_a_complete_rebuild_is_done_at_once() -> None:
    clock = FakeClock()
    cluster = FakeCluster(4, clock)
    client = _client(cluster, clock)
    keys = [f"k:{i}" for i in range(300)]
    assert client.set_many({k: k for k in keys}) == []
    victim = cluster.nodes[2]
    cluster[victim].restart()
    copied = client._run(client._engine.rebuild(victim))
    owned = [k for k in keys if victim in client.ring.nodes_for(k, 2)]
    assert copied == len(owned)
    assert client._engine._rebuilds[victim].state == "done"
    assert victim not in client._engine._rebuild_due


@pytest.mark.parametrize("when", ["marker", "batch"])
def test_a_node_that_hangs_mid_rebuild_is_rebuilt_when_it_answers_again(when: str) -> None:
    """The restarted node hangs while being rebuilt (claiming it, or being written
    back), then resumes with what it held: not a restart, so only this client's
    memory of the rebuild it left says that the node still lacks keys. The rebuild
    runs again (over this client's own "running" marker), and redundancy is back."""
    clock = FakeClock()
    cluster = FakeCluster(4, clock)
    client = _client(cluster, clock, failure_threshold=1)
    keys = [f"k:{i}" for i in range(600)]
    assert client.set_many({k: k for k in keys}) == []
    victim = cluster.nodes[0]
    shared = [k for k in keys if victim in client.ring.nodes_for(k, 2)]
    cluster[victim].restart()
    cluster[victim].before("add" if when == "marker" else "batch", cluster[victim].hang)
    engine = client._engine
    client._run(engine.rebuild(victim))
    assert engine.health.is_down(victim)
    assert engine._rebuilds[victim].state == "queued"
    assert [k for k in shared if cluster[victim].peek(k.encode()) is None]

    cluster[victim].resume()
    tick(clock, [client], 5.0, 0.25)  # probed back (same pid: a hang), then rebuilt
    assert not engine.health.is_down(victim)
    assert engine._rebuilds[victim].state == "done"
    assert [k for k in shared if cluster[victim].peek(k.encode()) is None] == []
    assert client.health()[victim.label].redundancy == "complete"
