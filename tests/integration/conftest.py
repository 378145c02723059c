"""Fixtures for the integration tests: real memcached processes on loopback.

* ``cluster`` — 4 nodes shared by the whole session. Tests on it use keys
  under their own namespace (``ns``) and never kill or hang its nodes.
* ``fresh_cluster`` — 4 new nodes for one test; fault tests kill, hang and
  restart them. Hung nodes are resumed before they are killed.
* ``client`` — a memring client of ``cluster``, closed after the test;
  ``make_client`` builds more (any cluster, any options) and closes them all.
  They are of the ``face`` the test runs on: ``"sync"``, unless the module
  parametrizes ``face`` (``indirect=True``) to run its tests on both faces
  (``tests/faces.py``).
  Clients of ``fresh_cluster`` default to small timeouts and fast probes;
  clients of ``cluster``, where nothing fails, keep the library defaults, so
  that a slow reply on a busy machine is not taken for a failed node.
* ``raw`` — plain pymemcache clients on one node, to look at what memring
  really stored. Their serde hands back ``(bytes, flags)`` untouched.
* ``ns`` (a key namespace per test), ``keys_on`` (keys homed on a node),
  ``everywhere`` (which nodes hold a key) and ``wire`` (proof that a call
  sent nothing: the bytes each node has read).

A missing memcached binary is an error, not a skip: CI installs it.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
from pymemcache.client.base import Client as PymemcacheClient

from memring import Client, HealthPolicy, Node, Timeouts
from memring.client.transport import raw_serde
from memring.tools.local import LocalCluster, MemcachedNotFound, find_memcached
from tests import faces

#: Timeouts small enough that a hung node costs a test little.
FAST_TIMEOUTS = Timeouts(connect=0.2, read=0.3)
#: Probe a down node soon and often.
FAST_HEALTH = HealthPolicy(backoff_initial=0.1, backoff_max=0.5)
NODES = 4



@pytest.fixture(scope="session")
def memcached_binary() -> str:
    try:
        return find_memcached()
    except MemcachedNotFound as exc:
        pytest.fail(f"the integration tests need a memcached binary: {exc}", pytrace=False)


def _start(binary: str) -> LocalCluster:
    cluster = LocalCluster(NODES, binary=binary)
    try:
        return cluster.start()
    except Exception as exc:
        pytest.fail(f"could not start {NODES} memcached processes: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def cluster(memcached_binary: str) -> Iterator[LocalCluster]:
    c = _start(memcached_binary)
    try:
        yield c
    finally:
        c.stop()


#: The clusters of fault tests now running.
_FAULTY: list[LocalCluster] = []


@pytest.fixture
def fresh_cluster(memcached_binary: str) -> Iterator[LocalCluster]:
    c = _start(memcached_binary)
    _FAULTY.append(c)
    try:
        yield c
    finally:
        _FAULTY.remove(c)
        c.stop()  # resumes hung processes, then SIGKILLs each by PID


@pytest.fixture
def ns() -> str:
    """A key namespace of this test alone."""
    return f"t{uuid.uuid4().hex[:12]}"


@pytest.fixture
def face(request: pytest.FixtureRequest) -> str:
    """The face clients are made of: "sync", or a module's ``indirect`` parameter."""
    return getattr(request, "param", "sync")


@pytest.fixture
def make_client(face: str) -> Iterator[Callable[..., Client]]:
    made: list[Client] = []

    def make(cluster: LocalCluster, **options: Any) -> Client:
        if any(cluster is c for c in _FAULTY):
            options.setdefault("timeouts", FAST_TIMEOUTS)
            options.setdefault("health", FAST_HEALTH)
        c = faces.make(face, cluster.servers, **options)
        made.append(c)
        return c

    yield make
    for c in made:
        c.close()


@pytest.fixture
def client(cluster: LocalCluster, make_client: Callable[..., Client]) -> Client:
    return make_client(cluster)


@pytest.fixture
def raw() -> Iterator[Callable[[Node], PymemcacheClient]]:
    """``raw(node)``: a pymemcache client on that node that returns ``(bytes, flags)``.

    One client (one connection) per node and test.
    """
    made: dict[Node, PymemcacheClient] = {}

    def make(node: Node) -> PymemcacheClient:
        if node not in made:
            made[node] = PymemcacheClient(node.address, serde=raw_serde, connect_timeout=1.0,
                                          timeout=1.0, default_noreply=False)
        return made[node]

    yield make
    for c in made.values():
        c.close()


@pytest.fixture
def keys_on() -> Callable[..., list[str]]:
    """``keys_on(client, node, n, ns, prefix="")``: n keys (unprefixed) homed on ``node``."""

    def find(client: Client, node: Node, n: int, ns: str, prefix: str = "") -> list[str]:
        out = []
        i = 0
        while len(out) < n:
            key = f"{ns}:{i}"
            if client.ring.node_for(prefix + key) == node:
                out.append(key)
            i += 1
        return out

    return find


@pytest.fixture
def everywhere(raw: Callable[[Node], PymemcacheClient]) -> Callable[..., dict[str, Any]]:
    """``everywhere(nodes, key)``: ``{label: raw item}`` of each node holding ``key``."""

    def look(nodes: Sequence[Node], key: bytes) -> dict[str, Any]:
        found = {}
        for node in nodes:
            item = raw(node).get(key)
            if item is not None:
                found[node.label] = item
        return found

    return look


class Wire:
    """Counts the bytes each node has read, to prove a call sent nothing."""

    STATS_COMMAND = len(b"stats\r\n")

    def __init__(self, nodes: Sequence[Node], raw: Callable[[Node], PymemcacheClient]) -> None:
        self._clients = {node: raw(node) for node in nodes}

    def snapshot(self) -> dict[Node, int]:
        return {node: int(c.stats()[b"bytes_read"]) for node, c in self._clients.items()}

    def assert_quiet_since(self, before: dict[Node, int]) -> None:
        after = self.snapshot()
        # Between two snapshots a node reads exactly one "stats" command.
        sent = {n.label: after[n] - before[n] - self.STATS_COMMAND for n in before}
        assert sent == {n.label: 0 for n in before}, f"bytes sent to nodes: {sent}"


@pytest.fixture
def wire(raw: Callable[[Node], PymemcacheClient]) -> Callable[[Sequence[Node]], Wire]:
    return lambda nodes: Wire(nodes, raw)
