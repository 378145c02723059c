"""A stored version far ahead of the clock is refused, never observed.

Observing it would carry every later write of the process that far into
the future, where it would outrank every honest write for ever.
"""

from __future__ import annotations

import pytest

from memring import BackupClient, Client, MultiKeyError, SerializationError
from memring.engine.versions import FLAG_VERSIONED, MAX_AHEAD_MS, pack_trailer
from tests.fakes import FakeClock, FakeCluster


def _poison(cluster: FakeCluster, client: Client, key: str, ahead_ms: int) -> None:
    """Put a value whose version is ``ahead_ms`` ahead of the clock on every node."""
    version = (cluster.hlc.wall_ms() + ahead_ms) << 16
    item = (b'"poison"' + pack_trailer(version, 0), 32 | FLAG_VERSIONED)
    for node in cluster.nodes:
        cluster[node].call("set", key.encode(), key.encode(), item, 0)


@pytest.mark.parametrize("kind", [Client, BackupClient])
def test_a_version_a_day_ahead_is_an_undecodable_item_naming_its_node(kind: type[Client]
                                                                     ) -> None:
    clock = FakeClock()
    cluster = FakeCluster(3, clock)
    client = kind(cluster.servers, _transport_factory=cluster.transport_factory, _clock=clock,
                  _background=False, _hlc=cluster.hlc)
    client.set("fine", "ok")
    _poison(cluster, client, "bad", MAX_AHEAD_MS + 60_000)
    before = cluster.hlc.last
    with pytest.raises(SerializationError) as caught:
        client.get("bad")
    assert caught.value.node in cluster.nodes
    assert "ahead" in str(caught.value)
    with pytest.raises(MultiKeyError) as many:
        client.get_many(["fine", "bad"])
    assert many.value.results == {"fine": "ok"}
    assert set(many.value.failed) == {"bad"}
    assert cluster.hlc.last == before  # the clock did not jump
    assert client.set("fine", "later") and client.get("fine") == "later"


def test_a_version_an_hour_ahead_is_still_read() -> None:
    clock = FakeClock()
    cluster = FakeCluster(3, clock)
    client = Client(cluster.servers, _transport_factory=cluster.transport_factory, _clock=clock,
                    _background=False, _hlc=cluster.hlc)
    _poison(cluster, client, "ahead", 3600 * 1000)
    assert client.get("ahead") == "poison"
