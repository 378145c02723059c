"""Invariant S against four real memcached processes and two clients.

Each scenario writes N keys, takes down the node that is home to about a
quarter of them (SIGSTOP, or SIGKILL and a restart), overwrites half of that
node's keys and deletes a quarter through the second client while it is
down, brings it back, and reads every key through both clients: while the
node is warming, and again after the warming window. A read that returns an
older value is *stale*, a read that returns a deleted value is *resurrected*;
both must be 0. A miss is always allowed by S, but an outage write that is
missing after the node returns is counted too (*lost*): the handoff must
have moved it home.

Every scenario prints its counts (run with ``-s`` to see them).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from memring import Client, Failover, HealthPolicy, Node, NodeState, Timeouts
from memring.engine.defaults import WARMING_MARGIN
from memring.tools.local import LocalCluster, MemcachedNotFound, find_memcached
from tests import faces

pytestmark = pytest.mark.integration

N = 2000
FAILOVER_TTL = 3
TIMEOUTS = Timeouts(connect=0.2, read=0.3)
HEALTH = HealthPolicy(backoff_initial=0.1, backoff_max=0.3, jitter=0)
#: An outage longer than a failover copy's TTL: the copies must be kept alive.
LONG_OUTAGE = FAILOVER_TTL + 1.0


@pytest.fixture
def four() -> Iterator[LocalCluster]:
    """Four fresh memcached processes, stopped by PID afterwards."""
    try:
        binary = find_memcached()
    except MemcachedNotFound as exc:
        pytest.fail(f"this test needs a memcached binary: {exc}", pytrace=False)
    cluster = LocalCluster(4, binary=binary)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(params=faces.FACES)
def clients(four: LocalCluster, request: pytest.FixtureRequest
            ) -> Iterator[tuple[Client, Client]]:
    """Two clients of one face (each scenario runs on both faces)."""
    made = tuple(
        faces.make(request.param, four.servers,
                   failover=Failover("next", failover_ttl=FAILOVER_TTL),
                   timeouts=TIMEOUTS, health=HEALTH)
        for _ in range(2))
    try:
        yield made  # type: ignore[misc]
    finally:
        for c in made:
            c.close()


@dataclass
class Counts:
    reads: int = 0
    stale: int = 0
    resurrected: int = 0
    lost: int = 0
    misses: int = 0

    def __str__(self) -> str:
        return (f"reads={self.reads} stale={self.stale} resurrected={self.resurrected} "
                f"lost={self.lost} misses={self.misses}")


class World:
    """The keys, the latest acknowledged value of each (None: deleted), and the checks."""

    def __init__(self, a: Client, b: Client) -> None:
        self.a, self.b = a, b
        ns = uuid.uuid4().hex[:8]
        self.keys = [f"{ns}:{i}" for i in range(N)]
        self.latest: dict[str, str | None] = {}
        self.outage_written: dict[int, set[str]] = {}
        self.report: list[str] = []

    def fill(self) -> None:
        values = {k: f"{k}@initial" for k in self.keys}
        assert self.a.set_many(values) == []
        self.latest.update(values)

    def keys_on(self, node: Node) -> list[str]:
        return [k for k in self.keys if self.a.ring.node_for(k) == node]

    def outage_writes(self, keys: list[str], round_: int) -> None:
        """Through the second client: overwrite half of ``keys``, delete a quarter."""
        half, quarter = len(keys) // 2, len(keys) // 4
        sets, deletes = keys[:half], keys[half:half + quarter]
        for i, k in enumerate(sets[: half // 2]):  # one by one ...
            value = f"{k}@outage{round_}.{i}"
            assert self.b.set(k, value) is True
            self.latest[k] = value
        batch = {k: f"{k}@outage{round_}.many" for k in sets[half // 2:]}
        assert self.b.set_many(batch) == []  # ... and in one call
        self.latest.update(batch)
        for k in deletes[: quarter // 2]:
            self.b.delete(k)
            self.latest[k] = None
        assert self.b.delete_many(deletes[quarter // 2:]) is True
        self.latest.update(dict.fromkeys(deletes[quarter // 2:]))
        self.outage_written[round_] = set(sets) | set(deletes)

    def written_in(self, *rounds: int) -> set[str]:
        return set().union(*(self.outage_written[r] for r in rounds))

    def audit(self, phase: str, must_have: set[str]) -> dict[str, Counts]:
        """Read every key through both clients (get_many, and get for the outage keys).

        A miss of a key in ``must_have`` whose latest write is a set counts as lost.
        """
        out = {}
        for name, c in (("A", self.a), ("B", self.b)):
            counts = Counts()
            got: dict[str, object] = {}
            for i in range(0, N, 250):
                got.update(c.get_many(self.keys[i:i + 250]))
            for k in self.keys:
                self._judge(counts, k, got.get(k), must_have)
            for k in sorted(self.written_in(*self.outage_written)):
                self._judge(counts, k, c.get(k), must_have)
            out[name] = counts
            line = f"{phase}: client {name}: {counts}"
            self.report.append(line)
            print(line)
        return out

    def _judge(self, counts: Counts, key: str, got: object, must_have: set[str]) -> None:
        counts.reads += 1
        want = self.latest[key]
        if got is None:
            counts.misses += 1
            if want is not None and key in must_have:
                counts.lost += 1
        elif got != want:
            if want is None:
                counts.resurrected += 1
            else:
                counts.stale += 1


def state_of(c: Client, node: Node) -> NodeState:
    return c.health()[node.label].state


def wait_for(what: str, pred: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {what}")
        time.sleep(0.02)


def observe_down(c: Client, node: Node, keys: list[str]) -> None:
    """Ordinary traffic until ``c`` has had a call fail on ``node`` (all clients observe alike)."""
    for k in keys:
        c.get(k)
        if state_of(c, node) is NodeState.DOWN:
            return
    c.stats()
    assert state_of(c, node) is NodeState.DOWN


def wait_warming(w: World, node: Node) -> None:
    wait_for(f"{node.label} is back (warming) in both clients",
             lambda: all(state_of(c, node) is NodeState.WARMING for c in (w.a, w.b)), 5.0)


def wait_window_over(w: World, node: Node) -> None:
    wait_for(f"{node.label} is up again in both clients",
             lambda: all(state_of(c, node) is NodeState.UP for c in (w.a, w.b)),
             FAILOVER_TTL + WARMING_MARGIN + 3.0)
    time.sleep(0.3)  # past the end of the window by a margin


def assert_clean(results: dict[str, Counts]) -> None:
    for name, counts in results.items():
        assert (counts.stale, counts.resurrected, counts.lost) == (0, 0, 0), (
            f"client {name}: {counts}")


def test_a_hang_resume(four: LocalCluster, clients: tuple[Client, Client]) -> None:
    """SIGSTOP a node for longer than a failover copy lives, write through B, SIGCONT."""
    a, b = clients
    w = World(a, b)
    w.fill()
    node = four.nodes[0]
    home_keys = w.keys_on(node)
    proc = four.process_for(node)
    proc.hang()
    # B's first write times out (and is applied when the node resumes), then fails over
    w.outage_writes(home_keys, 1)
    observe_down(a, node, home_keys[-5:])
    time.sleep(LONG_OUTAGE)
    proc.resume()
    wait_warming(w, node)
    assert_clean(w.audit("a/hang: warming", w.written_in(1)))
    wait_window_over(w, node)
    assert_clean(w.audit("a/hang: after the window", w.written_in(1)))


def test_b_kill_restart(four: LocalCluster, clients: tuple[Client, Client]) -> None:
    """SIGKILL a node, write through B, restart it empty: the outage writes move home."""
    a, b = clients
    w = World(a, b)
    w.fill()
    node = four.nodes[1]
    home_keys = w.keys_on(node)
    proc = four.process_for(node)
    proc.kill()
    observe_down(a, node, home_keys[-5:])
    w.outage_writes(home_keys, 1)
    time.sleep(LONG_OUTAGE)
    proc.start()
    wait_warming(w, node)
    assert_clean(w.audit("b/restart: warming", w.written_in(1)))
    wait_window_over(w, node)
    assert_clean(w.audit("b/restart: after the window", w.written_in(1)))


@pytest.mark.parametrize("second", ["hang", "kill"])
@pytest.mark.parametrize("clients", ["sync"], indirect=True)  # the async face: a and b above
def test_c_flapping(four: LocalCluster, clients: tuple[Client, Client], second: str) -> None:
    """Down, writes, back; down again while warming, writes, back."""
    a, b = clients
    w = World(a, b)
    w.fill()
    node = four.nodes[2]
    home_keys = w.keys_on(node)
    proc = four.process_for(node)
    proc.hang()
    observe_down(a, node, home_keys[-5:])
    w.outage_writes(home_keys, 1)
    proc.resume()
    wait_warming(w, node)
    assert_clean(w.audit(f"c/{second}: first return", w.written_in(1)))
    # down again inside the warming window, and the other half of the keys written
    if second == "hang":
        proc.hang()
    else:
        proc.kill()
    for c in (a, b):
        observe_down(c, node, home_keys[-5:])
    w.outage_writes(home_keys[::-1], 2)
    if second == "hang":
        proc.resume()
    else:
        proc.start()
    wait_warming(w, node)
    # After a restart, first-round writes already settled home died with the
    # process (misses, not stale reads); the second round's must all be there.
    must_have = w.written_in(1, 2) if second == "hang" else w.written_in(2)
    assert_clean(w.audit(f"c/{second}: second return", must_have))
    wait_window_over(w, node)
    assert_clean(w.audit(f"c/{second}: after the window", must_have))
