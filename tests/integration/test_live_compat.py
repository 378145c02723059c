"""Code written for pymemcache's HashClient works with memring.Client unchanged."""

from __future__ import annotations

import pytest
from pymemcache.serde import pickle_serde

from memring import (
    Client,
    ConfigError,
    Failover,
    HealthPolicy,
    InvalidArgument,
    NodeState,
    ProtocolError,
    Timeouts,
    UnknownCommandError,
)
from memring.tools.local import MemcachedProcess

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


# -- the methods pymemcache has, on real servers ------------------------------------
def test_cache_memlimit_sets_every_node(fresh_cluster) -> None:
    with Client(fresh_cluster.servers) as client:
        assert client.cache_memlimit(80) is True
        for label, stats in client.stats("settings").items():
            assert stats[b"maxbytes"] == str(80 * 1024 * 1024).encode(), label
        with pytest.raises(InvalidArgument):
            client.cache_memlimit("80")


def test_stats_cachedump_is_read_not_taken_for_garbage(cluster, ns) -> None:
    with Client(cluster.servers) as client:
        client.set(f"{ns}:k", b"v")
        dumps = client.stats("cachedump", "1", "1")
        assert set(dumps) == {n.label for n in client.ring.nodes}
        assert all(s.state is NodeState.UP for s in client.health().values())


def test_raw_command_reads_up_to_the_end_tokens(cluster, ns) -> None:
    with Client(cluster.servers) as client:
        client.set(f"{ns}:raw", b"v")
        versions = client.raw_command("version")
        assert set(versions) == {n.label for n in client.ring.nodes}
        assert all(v.startswith(b"VERSION 1.") for v in versions.values())
        home = client.route(f"{ns}:raw").label
        got = client.raw_command(f"mg {ns}:raw s", end_tokens=b"\r\n")
        assert got[home] == b"HD s13"  # the value and its 12-byte trailer
        assert all(v == b"EN" for label, v in got.items() if label != home)
        items = client.raw_command(b"stats items", b"END\r\n")  # a multi-line reply
        assert b"STAT items:" in items[home]
        with pytest.raises(InvalidArgument):
            client.raw_command("version\r\nflush_all")
        with pytest.raises(UnknownCommandError):
            client.raw_command("no_such_command")
        # The reply goes on past the end tokens: the rest is dropped with its connection.
        assert client.raw_command(f"mg {ns}:raw v")[home] == b"VA 13"
        with Client(cluster.servers, max_item_size=200) as small, pytest.raises(ProtocolError):
            small.raw_command("stats", end_tokens=b"never")  # no end within the size limit
        assert all(s.state is NodeState.UP for s in client.health().values())
        assert client.get(f"{ns}:raw") == b"v"  # every connection still in step


def test_quit_closes_the_idle_connections_and_the_client_goes_on(cluster, ns) -> None:
    with Client(cluster.servers) as client:
        client.set(f"{ns}:q", b"v")
        pools = [t._pool for t in client._transports.values()]
        assert sum(len(p) for p in pools) >= 1
        client.quit()
        assert sum(len(p) for p in pools) == 0
        assert client.get(f"{ns}:q") == b"v"


def test_shutdown_stops_servers_that_allow_it_and_says_when_refused(memcached_binary) -> None:
    allowed = MemcachedProcess(binary=memcached_binary, extra_args=["-A"])
    refusing = MemcachedProcess(binary=memcached_binary)
    try:
        for p in (allowed, refusing):
            p.start()
        with Client([allowed.node.label], timeouts=Timeouts(0.5)) as client:
            client.set("k", b"v")
            client.shutdown()
            assert allowed._proc is not None and allowed._proc.wait(timeout=5) == 0
        with Client([refusing.node.label]) as client:
            with pytest.raises(UnknownCommandError, match="shutdown not enabled"):
                client.shutdown(graceful=True)
            assert refusing.running and client.get("k") is None
    finally:
        allowed.kill()
        refusing.kill()


def test_socket_options_are_on_the_real_connections(cluster, ns) -> None:
    import socket
    import threading
    import time

    from pymemcache.client.base import KeepaliveOpts

    locks: list[object] = []

    def lock_generator() -> object:
        locks.append(threading.Lock())
        return locks[-1]

    with Client(cluster.servers, socket_module=socket, pool_idle_timeout=0.2,
                socket_keepalive=KeepaliveOpts(idle=7, intvl=3, cnt=2),
                lock_generator=lock_generator) as client:
        assert len(locks) == len(cluster.nodes)
        key = f"{ns}:opts"
        client.set(key, b"v")
        pool = client._transports[client.route(key)]._pool
        (conn,) = list(pool.free)
        sock = conn.sock
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 7
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 2
        assert client.get(key) == b"v"
        assert list(pool.free) == [conn]  # reused while fresh
        time.sleep(0.3)
        assert client.get(key) == b"v"
        assert list(pool.free) != [conn] and conn.sock is None  # idle too long: replaced
