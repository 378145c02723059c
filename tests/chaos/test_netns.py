"""A real network fault: one node's packets vanish, so connects hang instead of being refused.

The test makes its own network namespace and veth pair, runs one memcached
inside it, and pins the host's neighbour entry for it. Taking the
namespace's end of the veth down then drops every packet to that node
silently: a new connection waits for its connect timeout, an established one
for its read timeout (SIGSTOP can only produce the second). Only addresses
inside the namespace are used. Needs root and iproute2 (``ip``); skipped,
with the reason, where the machine does not allow it. The namespace, the
veth pair and the process are removed in ``finally`` by name and PID.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from memring import Client, Failover, HealthPolicy, NodeState, Timeouts
from memring.tools.local import LocalCluster, MemcachedNotFound, find_memcached

pytestmark = pytest.mark.chaos

TIMEOUTS = Timeouts(connect=0.2, read=0.3)
HEALTH = HealthPolicy(backoff_initial=0.1, backoff_max=0.5)
FAILOVER = Failover("next", failover_ttl=3)
#: One connect or one read timeout, and room for scheduling (see memring.tools.chaos).
BOUND = TIMEOUTS.connect + TIMEOUTS.read + 0.25
PORT = 11211


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10,
                          check=check)


@dataclass
class NetnsNode:
    ns: str
    host_if: str
    ns_if: str
    address: str

    @property
    def server(self) -> str:
        return f"{self.address}:{PORT}"

    def drop(self) -> None:
        """From now on every packet to the node vanishes."""
        _ip("-n", self.ns, "link", "set", self.ns_if, "down")

    def restore(self) -> None:
        _ip("-n", self.ns, "link", "set", self.ns_if, "up")


def _why_not() -> str | None:
    if os.geteuid() != 0:
        return "needs root to make a network namespace"
    if shutil.which("ip") is None:
        return "needs iproute2 (the ip command)"
    try:
        find_memcached()
    except MemcachedNotFound as exc:
        return str(exc)
    return None


def _wait_listening(address: str, deadline: float) -> None:
    while True:
        try:
            with socket.create_connection((address, PORT), timeout=0.2):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


@pytest.fixture
def netns_node() -> Iterator[NetnsNode]:
    reason = _why_not()
    if reason is not None:
        print(f"skipped: {reason}")
        pytest.skip(reason)
    tag = f"{os.getpid() % 100000}"
    subnet = 16 + os.getpid() % 200  # 10.231.<subnet>.0/30, inside this test's namespace only
    node = NetnsNode(ns=f"memring-chaos-{tag}", host_if=f"mrc{tag}h", ns_if=f"mrc{tag}n",
                     address=f"10.231.{subnet}.2")
    proc: subprocess.Popen[bytes] | None = None
    try:
        made = _ip("netns", "add", node.ns, check=False)
        if made.returncode != 0:
            reason = f"cannot make a network namespace: {made.stderr.strip()}"
            print(f"skipped: {reason}")
            pytest.skip(reason)
        _ip("link", "add", node.host_if, "type", "veth", "peer", "name", node.ns_if)
        _ip("link", "set", node.ns_if, "netns", node.ns)
        _ip("addr", "add", f"10.231.{subnet}.1/30", "dev", node.host_if)
        _ip("link", "set", node.host_if, "up")
        _ip("-n", node.ns, "addr", "add", f"{node.address}/30", "dev", node.ns_if)
        _ip("-n", node.ns, "link", "set", node.ns_if, "up")
        _ip("-n", node.ns, "link", "set", "lo", "up")
        # A pinned neighbour entry: with the link down, packets are sent and
        # lost rather than failing fast on an ARP miss.
        mac = _ip("-n", node.ns, "-o", "link", "show", node.ns_if).stdout.split(
            "link/ether ")[1].split()[0]
        _ip("neigh", "replace", node.address, "lladdr", mac, "dev", node.host_if,
            "nud", "permanent")
        # "ip netns exec" execs memcached: the PID is memcached's own.
        proc = subprocess.Popen(
            ["ip", "netns", "exec", node.ns, find_memcached(), "-l", node.address, "-p",
             str(PORT), "-U", "0", "-t", "2", "-u", "root"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(node.address, time.monotonic() + 5)
        yield node
    finally:
        if proc is not None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=10)
        _ip("link", "del", node.host_if, check=False)
        _ip("netns", "del", node.ns, check=False)
        assert node.ns not in _ip("netns", "list", check=False).stdout


def _wait_state(client: Client, server: str, state: NodeState, limit: float) -> float:
    start = time.monotonic()
    while client.health()[server].state is not state:
        assert time.monotonic() - start < limit, client.health()[server]
        time.sleep(0.005)
    return time.monotonic() - start


def test_dropped_packets_cost_one_timeout_and_keep_invariant_s(netns_node: NetnsNode) -> None:
    with LocalCluster(2) as cluster:
        servers = [netns_node.server, *cluster.servers]
        client = Client(servers, failover=FAILOVER, timeouts=TIMEOUTS, health=HEALTH)
        # A second client that has never talked to the node: no pooled connection.
        fresh = Client(servers, failover=FAILOVER, timeouts=TIMEOUTS, health=HEALTH)
        try:
            _run(client, fresh, netns_node)
        finally:
            client.close()
            fresh.close()


def _run(client: Client, fresh: Client, node: NetnsNode) -> None:
    home = node.server
    keys = [k for k in (f"net:{i}" for i in range(2000))
            if client.ring.node_for(k).label == home][:40]
    others = [k for k in (f"other:{i}" for i in range(200))
              if client.ring.node_for(k).label != home][:40]
    assert len(keys) == 40 and len(others) == 40
    for k in keys + others:
        assert client.set(k, {"v": 1}, expire=3600)
    kept, updated, deleted = keys[:10], keys[10:25], keys[25:]

    node.drop()
    try:
        # An established connection: the read times out, the call fails over.
        t = time.monotonic()
        assert client.get(kept[0]) is None  # its home is out of reach: a miss, no error
        assert time.monotonic() - t <= BOUND
        assert client.health()[home].state is NodeState.DOWN
        # A new connection: SYNs vanish, the connect times out, the call fails over.
        t = time.monotonic()
        assert fresh.get(kept[1]) is None
        took = time.monotonic() - t
        assert TIMEOUTS.connect * 0.9 <= took <= BOUND, took
        assert "timed out" in (fresh.health()[home].last_error or "")
        # Load from several threads while the node is unreachable.
        errors, slowest = _load(client, keys + others, seconds=1.5)
        assert errors == Counter(), errors
        assert slowest <= BOUND
        # Writes and deletes of its keys go to the failover node at once.
        for k in updated:
            t = time.monotonic()
            assert client.set(k, {"v": 2}, expire=3600)
            assert time.monotonic() - t < 0.1
        for k in deleted:
            client.delete(k)
    finally:
        node.restore()

    back = _wait_state(client, home, NodeState.WARMING, limit=3.0)
    assert back <= HEALTH.backoff_max * (1 + HEALTH.jitter) + 0.5
    for reader in (client, fresh):
        _wait_state(reader, home, NodeState.WARMING, limit=3.0)
        _check_invariant_s(reader, kept, updated, deleted, others)
    # After the warming window the home node alone answers, still right.
    _wait_state(client, home, NodeState.UP, limit=FAILOVER.warming_seconds + 2)
    _check_invariant_s(client, kept, updated, deleted, others)


def _check_invariant_s(client: Client, kept: list[str], updated: list[str],
                       deleted: list[str], others: list[str]) -> None:
    got = client.get_many(kept + updated + deleted + others)
    assert {k: got.get(k) for k in kept + others} == {k: {"v": 1} for k in kept + others}
    assert {k: got.get(k) for k in updated} == {k: {"v": 2} for k in updated}  # not stale
    assert [k for k in deleted if k in got] == []  # not resurrected


def _load(client: Client, keys: list[str], seconds: float) -> tuple[Counter[str], float]:
    errors: Counter[str] = Counter()
    slowest = [0.0]
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def work(offset: int) -> None:
        for i in range(100_000):
            if time.monotonic() > stop:
                return
            t = time.monotonic()
            try:
                client.get(keys[(i + offset) % len(keys)])
            except Exception as exc:
                with lock:
                    errors[type(exc).__name__] += 1
            with lock:
                slowest[0] = max(slowest[0], time.monotonic() - t)

    threads = [threading.Thread(target=work, args=(n * 7,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=seconds + 10)
    return errors, slowest[0]
