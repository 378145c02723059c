"""Code written for pymemcache's HashClient works with memring.Client unchanged."""

from __future__ import annotations

import pytest
from pymemcache.serde import pickle_serde

from memring import Client, ConfigError, Failover, HealthPolicy, Timeouts

pytestmark = pytest.mark.integration


class Cart:
    def __init__(self, items: list[str]) -> None:
        self.items = items

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cart) and other.items == self.items


def hashclient_style(servers, **extra) -> Client:
    """The keyword arguments Django's PyMemcacheCache passes, plus the common ones."""
    return Client(servers, connect_timeout=0.2, timeout=0.3, ignore_exc=True,
                  default_noreply=False, allow_unicode_keys=True, serde=pickle_serde,
                  use_pooling=True, no_delay=True, encoding="utf8", **extra)


def test_hashclient_keyword_arguments(cluster, ns) -> None:
    with hashclient_style(cluster.servers, max_pool_size=8) as client:
        assert client.timeouts == Timeouts(connect=0.2, read=0.3)
        assert client.failover == Failover("fail", return_default=True)
        key = f"{ns}:sessión:ü"
        assert client.set(key, Cart(["a", "b"]), expire=60) is True
        assert client.get(key) == Cart(["a", "b"])
        assert client.get(f"{ns}:missing", "dflt") == "dflt"
        assert client.add(key, "x") is False
        assert client.set_many({f"{ns}:{i}": i for i in range(20)}, 60) == []
        assert client.get_many([f"{ns}:{i}" for i in range(20)]) == {
            f"{ns}:{i}": i for i in range(20)}
        assert client.incr(f"{ns}:3", 1) == 4
        assert client.touch(key, 60) is True
        assert client.delete_many([f"{ns}:{i}" for i in range(20)]) is True
        assert client.delete(key) is True
        client.disconnect_all()  # Django's close() calls it


def test_hashclient_style_client_with_a_dead_node_never_raises(fresh_cluster, ns) -> None:
    client = hashclient_style(fresh_cluster.servers)
    try:
        keys = [f"{ns}:{i}" for i in range(40)]
        assert client.set_many(dict.fromkeys(keys, "v")) == []
        dead = fresh_cluster[0]
        lost = [k for k in keys if client.ring.node_for(k) == dead.node]
        dead.kill()
        for k in lost:
            assert client.get(k) is None
            assert client.get(k, "d") == "d"
            assert client.set(k, "w") is False
            assert client.delete(k) is False
            assert client.incr(k, 1) is None
        assert client.get_many(keys) == {k: "v" for k in keys if k not in lost}
        assert sorted(client.set_many(dict.fromkeys(keys, "x"))) == sorted(lost)
    finally:
        client.close()


def test_default_noreply_still_waits_for_the_server(cluster, ns) -> None:
    with Client(cluster.servers, default_noreply=True) as client:
        assert client.set(f"{ns}:k", "v") is True
        assert client.add(f"{ns}:k", "w") is True  # noreply: pymemcache returns True too
        assert client.get(f"{ns}:k") == "v"  # ...but the add was answered NOT_STORED
        assert client.set(f"{ns}:k", "x", noreply=False) is True


@pytest.mark.parametrize("options", [
    {"bogus_option": 1},
    {"hasher": object},
    {"retry_attempts": 2, "health": HealthPolicy()},
    {"serde": pickle_serde, "serializer": lambda k, v: (v, 0)},
    {"timeouts": Timeouts(1.0), "timeout": 0.5},
])
def test_unknown_or_conflicting_options_raise_config_error(cluster, options) -> None:
    with pytest.raises(ConfigError) as info:
        Client(cluster.servers, **options)
    assert isinstance(info.value, ValueError)
