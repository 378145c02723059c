"""Unix-domain socket nodes, against real memcached processes started with ``-s``."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pymemcache.client.base import Client as PymemcacheClient

from memring import Node, NodeState
from memring.tools.local import LocalCluster, MemcachedProcess
from tests import faces
from tests.faces import both_faces
from tests.integration.conftest import FAST_HEALTH, FAST_TIMEOUTS

pytestmark = pytest.mark.integration


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    # Short: a unix socket's path must fit in 108 bytes.
    with tempfile.TemporaryDirectory(prefix="mr-") as d:
        yield Path(d)


@pytest.fixture
def mixed(memcached_binary: str, socket_dir: Path) -> Iterator[LocalCluster]:
    """Two nodes on unix sockets and one on TCP."""
    cluster = LocalCluster(1, binary=memcached_binary)
    cluster.processes += [MemcachedProcess(binary=memcached_binary,
                                           unix_socket=str(socket_dir / f"m{i}.sock"))
                          for i in range(2)]
    with cluster:
        yield cluster


@both_faces
def test_unix_nodes_are_on_the_ring_like_any_node(mixed: LocalCluster, face: str) -> None:
    unix = [p for p in mixed.processes if p.unix_socket]
    # Both spellings pymemcache and Django accept: "unix:/path" and "/path".
    servers = [mixed.processes[0].node.label, f"unix:{unix[0].unix_socket}",
               str(unix[1].unix_socket)]
    with faces.make(face, servers, timeouts=FAST_TIMEOUTS, health=FAST_HEALTH) as client:
        assert [n.label for n in client.ring.nodes] == [
            mixed.processes[0].node.label, f"unix:{unix[0].unix_socket}",
            f"unix:{unix[1].unix_socket}"]
        keys = [f"k{i}" for i in range(300)]
        assert client.set_many({k: k.encode() for k in keys}) == []
        assert client.get_many(keys) == {k: k.encode() for k in keys}
        homes = {client.ring.node_for(k) for k in keys}
        assert homes == set(client.ring.nodes)
        # Each key is really on its home node's socket.
        for process in unix:
            plain = PymemcacheClient(process.unix_socket, timeout=1.0)
            try:
                mine = [k for k in keys if client.ring.node_for(k) == process.node]
                assert mine and all(plain.get(k) is not None for k in mine[:20])
            finally:
                plain.close()
        assert set(client.health()) == {n.label for n in client.ring.nodes}
        assert all(s.pid for s in client.health().values())


@both_faces
def test_a_killed_unix_node_fails_over_and_comes_back(mixed: LocalCluster, face: str) -> None:
    victim = next(p for p in mixed.processes if p.unix_socket)
    with faces.make(face, mixed.servers, timeouts=FAST_TIMEOUTS,
                    health=FAST_HEALTH) as client:
        keys = [k for k in (f"s{i}" for i in range(400))
                if client.ring.node_for(k) == victim.node][:20]
        victim.kill()
        for k in keys:
            assert client.set(k, b"during") is True
            assert client.get(k) == b"during"
        assert client.health()[victim.node.label].state is NodeState.DOWN
        victim.start()
        assert client.get(keys[0]) == b"during"


@both_faces
def test_backup_client_keeps_two_copies_over_unix_sockets(memcached_binary: str,
                                                          socket_dir: Path, face: str) -> None:
    processes = [MemcachedProcess(binary=memcached_binary,
                                  unix_socket=str(socket_dir / f"b{i}.sock")) for i in range(3)]
    cluster = LocalCluster(1, binary=memcached_binary)
    cluster.processes = processes
    with cluster, faces.make(face, cluster.servers, backup=True, timeouts=FAST_TIMEOUTS,
                             health=FAST_HEALTH) as client:
        assert client.set("session", b"v") is True
        owners = client.owners("session")
        assert len(owners) == 2 and all(isinstance(n, Node) and n.is_unix for n in owners)
        cluster.process_for(owners[0]).kill()
        assert client.get("session") == b"v"


def test_a_unix_socket_process_listens_on_no_tcp_port(memcached_binary: str,
                                                      socket_dir: Path) -> None:
    process = MemcachedProcess(binary=memcached_binary, unix_socket=str(socket_dir / "t.sock"))
    process.start()
    try:
        assert process.node == Node(str(socket_dir / "t.sock"))
        assert "-s" in process._argv() and "-p" not in process._argv()
        assert Path(process.unix_socket or "").is_socket()
    finally:
        process.kill()
    assert not process.running
