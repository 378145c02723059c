"""Backup mode (two copies) against a plain dict model, under single-node faults.

Two :class:`~memring.BackupClient` objects share four fake memcached nodes
(``tests/fakes.py``) and a fake clock. Nodes are killed, hung (writes sent
meanwhile are applied on resume), resumed and restarted empty, one at a
time, while both clients set, delete and read keys. Checked on every read:

* **Invariant S** — a read returns the latest acknowledged set (unless it
  expired) or a miss: never an older value, never a deleted one.
* **No loss** — a key whose latest operation was an acknowledged set is
  never a miss while at most one node may lack that value. A node may lack
  it if it was faulty, or seen as not up by a client, when the value was
  written, or if it has been killed, hung or restarted since. Two such
  nodes (say a restart, then the other owner killed) may lose the key.
* No error reaches the caller: one faulty node of four is always survivable.

Clients do not have to see faults alike: one client alone may lose its link
to a node (``link_fault``), and a hung node may resume before a client that
made no call meanwhile ever knew. Reads are checked strictly all the same,
through every client, at every step: a write reaches the key's two owners
as the writer sees them, so the newest write is always among the nodes a
reader asks. A client learns of a fault through a failed call of its own;
time moves in small steps after each of which every client runs its due
probes; and a new fault starts only when no client still sees another node
down (a node that is back but still warming may be hit by the next fault).
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, precondition, rule

from memring import BackupClient, Client, Failover, HashRing, HealthPolicy, Node, NodeState
from tests import faces
from tests.faces import both_faces
from tests.fakes import FakeClock, FakeCluster, SingleFault
from tests.fakes import tick as fakes_tick

FAILOVER_TTL = 10
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 4.0
#: Seconds a call to a hung node takes before it times out.
TIMEOUT_COST = 0.3
#: Time moves in steps of at most this; every client probes after each step.
TICK = 0.5
NODES = 4
CLIENTS = 2
#: Keys per ordered (primary, backup) pair of nodes.
KEYS_PER_PAIR = 1

_NODES = [Node(f"10.0.0.{i + 1}", 11211) for i in range(NODES)]


def make_client(cluster: FakeCluster, clock: FakeClock, face: str = "sync") -> BackupClient:
    return faces.make(
        face, [n.label for n in cluster.nodes], backup=True,
        failover=Failover("next", failover_ttl=FAILOVER_TTL),
        health=HealthPolicy(failure_threshold=1, backoff_initial=BACKOFF_INITIAL,
                            backoff_max=BACKOFF_MAX, jitter=0),
        _cluster=cluster, _clock=clock, _hlc=cluster.hlc, _background=False,
    )


def keys_by_pair(nodes: list[Node], per_pair: int) -> dict[tuple[Node, Node], list[str]]:
    """``per_pair`` keys for every ordered (primary, backup) pair of nodes."""
    ring = HashRing(nodes)
    out: dict[tuple[Node, Node], list[str]] = {
        (a, b): [] for a in nodes for b in nodes if a != b}
    for i in itertools.count():
        key = f"key:{i}"
        p, b = ring.nodes_for(key, 2)
        if len(out[(p, b)]) < per_pair:
            out[(p, b)].append(key)
        if all(len(v) == per_pair for v in out.values()):
            return out
    raise AssertionError("unreachable")


_KEYS_BY_PAIR = keys_by_pair(_NODES, KEYS_PER_PAIR)
ALL_KEYS = [k for ks in _KEYS_BY_PAIR.values() for k in ks]
KEYS_OF = {n: [k for (p, b), ks in _KEYS_BY_PAIR.items() if n in (p, b) for k in ks]
           for n in _NODES}


def tick(clock: FakeClock, clients: Sequence[Client], seconds: float) -> None:
    fakes_tick(clock, clients, seconds, TICK)


@dataclass
class KeyModel:
    """What a read of one key may return, and whether a miss would be a loss."""

    #: value -> the clock time after which it must no longer be read (None: never expires)
    allowed: dict[str, float | None] = field(default_factory=dict)
    #: how each value left ``allowed``, to explain a failure
    gone: dict[str, str] = field(default_factory=dict)
    #: the value of the latest operation if it was an acknowledged set, else None
    latest: str | None = None
    #: nodes that may lack ``latest``
    exposed: set[Node] = field(default_factory=set)
    #: values overwritten while clients saw a fault differently (see SingleFault.shadowed)
    shadow: dict[str, float | None] = field(default_factory=dict)
    #: the earliest time ``latest`` may expire: its expiry counted from when the set
    #: was sent (a call that met a timeout acknowledges it later)
    earliest: float | None = None

    def acked_set(self, value: str, deadline: float | None, exposed: set[Node],
                  diverging: bool = False, earliest: float | None = None) -> None:
        for v in self.allowed:
            self.gone[v] = f"overwritten by {value!r}"
        if diverging:
            self.shadow.update(self.allowed)
        else:
            self.shadow.clear()
        self.allowed = {value: deadline}
        self.latest = value
        self.exposed = set(exposed)
        self.earliest = deadline if earliest is None else earliest

    def acked_delete(self) -> None:
        for v in self.allowed:
            self.gone[v] = "deleted"
        self.allowed = {}
        self.shadow.clear()
        self.latest = None


class BackupMachine(SingleFault, RuleBasedStateMachine):
    #: The face whose clients the machine drives (tests/faces.py).
    FACE = "sync"

    def __init__(self) -> None:
        super().__init__(NODES, CLIENTS, TIMEOUT_COST,
                         functools.partial(make_client, face=self.FACE))
        assert self.cluster.nodes == _NODES
        self.model: dict[str, KeyModel] = {k: KeyModel() for k in ALL_KEYS}

    # -- helpers ------------------------------------------------------------
    def _unhealthy(self) -> set[Node]:
        """Nodes that a write made now may not reach, or reach with old data around it."""
        out = {n for n in _NODES if self.cluster[n].state != "up"}
        for c in self.clients:
            out |= {n for n in _NODES if c._engine.health.state(n) is NodeState.DOWN}
        return out

    def _fault(self, node: Node) -> None:
        for m in self.model.values():
            m.exposed.add(node)

    def _check(self, who: int, key: str, got: object) -> None:
        m = self.model[key]
        if got is None:
            if m.latest is None or len(m.exposed) > 1:
                return
            deadline = m.earliest
            if deadline is not None and self.clock.time() >= deadline - 1:
                return  # memcached's whole-second clock may have expired it already
            raise AssertionError(
                f"lost: client {who} missed {key!r}, latest set {m.latest!r}; nodes that "
                f"may lack it: {sorted(n.label for n in m.exposed)}")
        if not self.shadowed(got, m.allowed, m.shadow):
            self.check_value(who, key, got, m.allowed, m.gone)

    def _diverging(self) -> bool:
        """Do the clients see the nodes differently (a fault only some of them saw)?"""
        return self.link is not None or any(
            self.sees_down(a, n) != self.sees_down(b, n)
            for a in self.clients for b in self.clients for n in _NODES)

    # -- data operations ------------------------------------------------------
    @initialize()
    def fill(self) -> None:
        values = {k: self._value(k) for k in ALL_KEYS}
        assert self.clients[0].set_many(values) == []
        for key, value in values.items():
            self.model[key].acked_set(value, None, set())

    @rule(who=st.integers(0, CLIENTS - 1), key=st.sampled_from(ALL_KEYS),
          expire=st.sampled_from([0, 0, 0, 100_000, 4, 12, 25]))
    def set(self, who: int, key: str, expire: int) -> None:
        value = self._value(key)
        exposed = self._unhealthy()
        earliest = self._deadline(expire)
        ok = self.clients[who].set(key, value, expire=expire)  # no error may reach us
        assert ok is True
        self.model[key].acked_set(value, self._deadline(expire), exposed | self._unhealthy(),
                                  self._diverging(), earliest)

    def _hot(self) -> list[str]:
        """Keys of the faulty node and of nodes some client does not see up."""
        nodes = {self.faulty} if self.faulty is not None else set()
        for c in self.clients:
            nodes |= {n for n in _NODES if c._engine.health.state(n) is not NodeState.UP}
        return sorted({k for n in nodes for k in KEYS_OF[n]})

    @precondition(lambda self: self._hot())
    @rule(who=st.integers(0, CLIENTS - 1), data=st.data())
    def set_hot(self, who: int, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(self._hot()))
        self.set(who, key, data.draw(st.sampled_from([0, 0, 100_000, 4, 12])))

    @precondition(lambda self: self._hot())
    @rule(who=st.integers(0, CLIENTS - 1), data=st.data())
    def delete_hot(self, who: int, data: st.DataObject) -> None:
        self.delete(who, data.draw(st.sampled_from(self._hot())))

    @precondition(lambda self: self._hot())
    @rule()
    def get_hot(self) -> None:
        for who in range(CLIENTS):
            for key in self._hot():
                self.get(who, key)

    @rule(who=st.integers(0, CLIENTS - 1), key=st.sampled_from(ALL_KEYS))
    def delete(self, who: int, key: str) -> None:
        self.clients[who].delete(key)
        self.model[key].acked_delete()

    @rule(who=st.integers(0, CLIENTS - 1), key=st.sampled_from(ALL_KEYS))
    def get(self, who: int, key: str) -> None:
        self._check(who, key, self.clients[who].get(key))

    @rule(who=st.integers(0, CLIENTS - 1))
    def get_all(self, who: int) -> None:
        for key in ALL_KEYS:
            self.get(who, key)

    @rule(who=st.integers(0, CLIENTS - 1),
          keys=st.lists(st.sampled_from(ALL_KEYS), min_size=1, max_size=6, unique=True))
    def get_many(self, who: int, keys: list[str]) -> None:
        got = self.clients[who].get_many(keys)
        assert set(got) <= set(keys)
        for key in keys:
            self._check(who, key, got.get(key))

    @rule(who=st.integers(0, CLIENTS - 1),
          keys=st.lists(st.sampled_from(ALL_KEYS), min_size=1, max_size=6, unique=True))
    def gets_many(self, who: int, keys: list[str]) -> None:
        got = self.clients[who].gets_many(keys)
        assert set(got) <= set(keys)
        for key in keys:
            self._check(who, key, got[key][0] if key in got else None)

    @rule(who=st.integers(0, CLIENTS - 1),
          keys=st.lists(st.sampled_from(ALL_KEYS), min_size=1, max_size=6, unique=True),
          expire=st.sampled_from([0, 100_000]))
    def set_many(self, who: int, keys: list[str], expire: int) -> None:
        values = {k: self._value(k) for k in keys}
        exposed = self._unhealthy()
        assert self.clients[who].set_many(values, expire=expire) == []
        exposed |= self._unhealthy()
        for k, v in values.items():
            self.model[k].acked_set(v, self._deadline(expire), exposed, self._diverging())

    @rule(who=st.integers(0, CLIENTS - 1),
          keys=st.lists(st.sampled_from(ALL_KEYS), min_size=1, max_size=6, unique=True))
    def delete_many(self, who: int, keys: list[str]) -> None:
        assert self.clients[who].delete_many(keys) is True
        for k in keys:
            self.model[k].acked_delete()

    # -- faults ---------------------------------------------------------------
    @rule(node=st.sampled_from(_NODES))
    def kill(self, node: Node) -> None:
        if self.faulty == node and self.cluster[node].state == "hung":
            self.cluster[node].kill()  # SIGKILL a hung process: its buffered writes are lost
            return
        if not self.may_fault(node):
            return
        self.faulty = node
        self._fault(node)
        self.cluster[node].kill()

    @rule(node=st.sampled_from(_NODES))
    def hang(self, node: Node) -> None:
        if not self.may_fault(node):
            return
        self.faulty = node
        self._fault(node)
        self.cluster[node].hang()

    @precondition(lambda self: self.faulty is not None
                  and self.cluster[self.faulty].state == "hung")
    @rule(everyone=st.booleans())
    def resume(self, everyone: bool) -> None:
        """SIGCONT; with ``everyone`` False, a client that made no call during the hang
        never knew of it."""
        assert self.faulty is not None
        if everyone:
            self.observe()
        self.cluster[self.faulty].resume()
        self.faulty = None

    @precondition(lambda self: self.faulty is not None)
    @rule()
    def restart(self) -> None:
        assert self.faulty is not None
        self.observe()
        self.cluster[self.faulty].restart()
        self.faulty = None

    @rule(who=st.integers(0, CLIENTS - 1), node=st.sampled_from(_NODES),
          how=st.sampled_from(["cut", "deaf"]))
    def link_fault(self, who: int, node: Node, how: str) -> None:
        """Client ``who`` alone loses ``node`` (a pause only it hit, or a partition);
        the other client never sees it, and must still read the latest value."""
        if self.cut_link(who, node, how):
            self._fault(node)

    @precondition(lambda self: self.link is not None)
    @rule(then=st.sampled_from(["nothing", "set", "delete"]))
    def link_heal(self, then: str) -> None:
        """The link is back; ``then`` the other client writes the node's keys at once,
        before the one that failed over has seen the node back."""
        assert self.link is not None
        who, node = self.link
        self.heal_link()
        for key in KEYS_OF[node]:
            if then == "set":
                self.set(1 - who, key, 0)
            elif then == "delete":
                self.delete(1 - who, key)

    @rule(node=st.sampled_from(_NODES))
    def restart_unnoticed(self, node: Node) -> None:
        """A restart no client notices (its connections are simply re-opened): the node is
        empty. A fault like any other: not while a client still sees another node down."""
        if self.may_fault(node):
            self._fault(node)
            self.cluster[node].restart()

    # -- time -------------------------------------------------------------------
    @rule(seconds=st.sampled_from([
        TICK, BACKOFF_INITIAL, BACKOFF_MAX, FAILOVER_TTL / 2, FAILOVER_TTL - 1, FAILOVER_TTL,
        FAILOVER_TTL + 1, FAILOVER_TTL + 2.5, 2 * FAILOVER_TTL + 3]))
    def advance(self, seconds: float) -> None:
        tick(self.clock, self.clients, seconds)

    @rule()
    def probe(self) -> None:
        for c in self.clients:
            c._tick()


BackupMachine.TestCase.settings = settings(
    max_examples=400, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_backup_state_machine = BackupMachine.TestCase

#: The same machine on the asyncio face (fake nodes at its transport seam).
test_backup_state_machine_async = faces.async_machine(BackupMachine, max_examples=150)


# ---------------------------------------------------------------------------
# targeted tests


def _setup(face: str) -> tuple[FakeClock, FakeCluster, list[BackupClient]]:
    clock = FakeClock()
    cluster = FakeCluster(NODES, clock, timeout_cost=TIMEOUT_COST)
    return clock, cluster, [make_client(cluster, clock, face) for _ in range(CLIENTS)]


@pytest.mark.parametrize("victim", _NODES, ids=lambda n: n.label)
@both_faces
def test_killing_any_node_loses_nothing(victim: Node, face: str) -> None:
    clock, cluster, (a, b) = _setup(face)
    keys = [f"k:{i}" for i in range(300)]
    assert a.set_many({k: k for k in keys}) == []
    cluster[victim].kill()
    for c in (a, b):
        assert c.get_many(keys) == {k: k for k in keys}
        assert [c.get(k) for k in keys] == keys


@both_faces
def test_degraded_write_is_hinted_and_handed_off(face: str) -> None:
    """The write that finds an owner dead is stored on the other; the returning node gets it."""
    clock, cluster, (a, b) = _setup(face)
    victim = _NODES[0]
    key = KEYS_OF[victim][0]
    a.set(key, "old")
    cluster[victim].kill()
    assert a.set(key, "new") is True
    assert a.metrics()["degraded_writes"] == 1
    cluster[victim].restart()
    tick(clock, [a, b], BACKOFF_MAX + TICK)
    assert a._engine.health.state(victim) is NodeState.WARMING
    assert cluster[victim].peek(key.encode()) is not None


@both_faces
def test_stand_in_copy_never_outlives_a_newer_write(face: str) -> None:
    """A node hangs and returns; the other owner dies while it warms.

    The stand-in that took the key during the first outage holds an older
    copy; it must not be read once the key has been written again.
    """
    clock, cluster, (a, b) = _setup(face)
    p, s = _NODES[0], _NODES[1]
    key = _KEYS_BY_PAIR[(p, s)][0]
    a.set(key, "v0")
    cluster[p].hang()
    assert a.set(key, "v1") is True          # finds p hung: degraded, on s
    assert a.set(key, "v2") is True          # on s and on the stand-in
    b.get(key)                               # b notices too
    cluster[p].resume()
    tick(clock, [a, b], BACKOFF_MAX + TICK)  # both see p back: warming, handed off
    assert a._engine.health.state(p) is NodeState.WARMING
    assert a.set(key, "v3") is True          # on p and s
    cluster[s].kill()
    for c in (a, b):
        assert c.get(key) == "v3"
    tick(clock, [a, b], FAILOVER_TTL + 3)
    for c in (a, b):
        assert c.get(key) == "v3"


@both_faces
def test_repair_onto_a_stand_in_keeps_the_value_expiry(face: str) -> None:
    """A read repairs a stand-in's tombstone copy with a newer short-lived value.

    Client ``a`` alone cannot reach one owner; it deletes the key (a tombstone
    copy on the stand-in), then ``b``, which sees every node, writes the key
    with a 4 s expiry. ``a``'s next read repairs the stand-in: what it writes
    there must be a copy, whose trailer expiry holds even when ``a``'s
    keepalive extends the copy's life, so the value is not read once expired.
    """
    clock, cluster, (a, b) = _setup(face)
    p, s = _NODES[2], _NODES[1]
    key = _KEYS_BY_PAIR[(p, s)][0]
    a.set(key, "v0")
    a._transports[p].link = "cut"
    assert a.delete(key) is True
    assert a._engine.health.state(p) is NodeState.DOWN
    assert b.set(key, "short", expire=4) is True
    assert a.get(key) == "short"
    assert b.get(key) == "short"
    tick(clock, [a, b], 4.5)
    for c in (a, b):
        assert c.get(key) is None


@both_faces
def test_a_lone_clients_copy_never_outlives_the_others_short_write(face: str) -> None:
    """Client ``a`` alone cannot reach one owner; its read repairs the stand-in with
    the value it finds. ``b``, which sees every node, deletes the key and writes it
    again with a 4 s expiry (both on the home pair only). Once that write expired,
    ``a`` asks the other owner (nothing there) and the stand-in (its old copy):
    the copy stands in for the unreachable owner, so the other owner's miss
    disowns it, and ``a`` reads a miss, not the deleted value.
    """
    clock, cluster, (a, b) = _setup(face)
    p, s = _NODES[0], _NODES[1]
    key = _KEYS_BY_PAIR[(p, s)][0]
    a.set(key, "old")
    a._transports[p].link = "cut"
    assert a.get(key) == "old"                # finds p unreachable: repairs the stand-in
    assert a._engine.health.state(p) is NodeState.DOWN
    stand_in = a._engine.stand_in(key.encode())
    assert stand_in is not None and cluster[stand_in].peek(key.encode()) is not None
    assert b.delete(key) is True
    assert b.set(key, "short", expire=4) is True
    assert b.get(key) == "short"
    tick(clock, [a, b], 4.5)
    assert cluster[stand_in].peek(key.encode()) is not None  # a's copy is still there
    for c in (a, b):
        assert c.get(key) is None
        assert c.get_many([key]) == {}


@both_faces
def test_a_lone_clients_handoff_never_moves_a_disowned_copy_home(face: str) -> None:
    """As above, but ``a``'s link comes back before it reads again: its handoff
    finds the old copy on the stand-in, and nothing on the other owner. It must
    not put the copy onto the returned owner, where every client would read it.
    """
    clock, cluster, (a, b) = _setup(face)
    p, s = _NODES[0], _NODES[1]
    key = _KEYS_BY_PAIR[(p, s)][0]
    a.set(key, "old")
    a._transports[p].link = "cut"
    assert a.get(key) == "old"                # a hint for p: the copy on the stand-in
    assert b.delete(key) is True
    assert b.set(key, "short", expire=4) is True
    tick(clock, [a, b], 4.5)
    a._transports[p].link = None
    tick(clock, [a, b], BACKOFF_MAX + TICK)   # a sees p back, and hands off
    assert a._engine.health.state(p) is NodeState.WARMING
    assert cluster[p].peek(key.encode()) is None
    for c in (a, b):
        assert c.get(key) is None


@both_faces
def test_an_expired_copy_still_hides_the_returned_owners_old_value(face: str) -> None:
    """Disowning is for live value copies only. ``p`` hangs, and both clients see
    it; it resumes with the old value, and before ``b`` has seen it back, ``b``
    writes the key with a 4 s expiry (onto the other owner and the stand-in),
    then loses its link to ``p``, so it never hands off. Once the write
    expired, the other owner holds nothing and the stand-in's copy reads as a
    tombstone: that tombstone must still count, or ``a``, which asks the
    stand-in while ``p`` warms, reads ``p``'s old value again.
    """
    clock, cluster, (a, b) = _setup(face)
    p, s = _NODES[0], _NODES[3]
    key = _KEYS_BY_PAIR[(s, p)][0]
    other = _KEYS_BY_PAIR[(p, _NODES[1])][0]
    assert a.set(key, "old") is True
    cluster[p].hang()
    for c in (a, b):
        assert c.set(other, "x") is True          # each finds p hung (no hint for key)
    cluster[p].resume()
    assert b.set(key, "short", expire=4) is True  # b: on s and the stand-in
    b._transports[p].link = "cut"
    tick(clock, [a, b], 4.5)
    assert a._engine.health.state(p) is NodeState.WARMING
    assert cluster[p].peek(key.encode()) is not None  # p still holds "old"
    assert a.get(key) is None


@both_faces
def test_a_copy_for_the_owner_a_reader_never_saw_away_is_still_read(face: str) -> None:
    """The counterpart: a copy is disowned only by the home node that was written
    beside it. ``b`` writes a new key while one owner hangs (onto the other owner
    and the stand-in); the owner resumes before ``a`` made any call; then ``a``
    alone loses the other owner. ``a`` asks the resumed owner (nothing there:
    it missed the write) and the stand-in: the copy stands in for that very
    owner, so it is believed, and the value is not lost.
    """
    clock, cluster, (a, b) = _setup(face)
    p, s = _NODES[0], _NODES[1]
    key = _KEYS_BY_PAIR[(p, s)][0]
    cluster[p].hang()
    assert b.set(key, "written while p hung") is True
    cluster[p].resume()
    a._transports[s].link = "cut"
    assert a._engine.health.state(p) is NodeState.UP  # a never saw p away
    assert a.get(key) == "written while p hung"
    assert a.get_many([key]) == {key: "written while p hung"}


@both_faces
def test_delete_during_warming_then_other_owner_dies(face: str) -> None:
    clock, cluster, (a, b) = _setup(face)
    p, s = _NODES[2], _NODES[3]
    key = _KEYS_BY_PAIR[(p, s)][0]
    a.set(key, "v0")
    cluster[p].hang()
    assert b.set(key, "v1") is True
    assert b.set(key, "v2") is True
    a.get(key)
    cluster[p].resume()
    tick(clock, [a, b], BACKOFF_MAX + TICK)
    assert a.delete(key) is True
    cluster[s].kill()
    for c in (a, b):
        assert c.get(key) is None


@both_faces
def test_long_outage_keeps_the_partner_copy(face: str) -> None:
    """An outage longer than ``failover_ttl`` loses nothing: the partner keeps its full copy."""
    clock, cluster, (a, b) = _setup(face)
    victim = _NODES[0]
    keys = KEYS_OF[victim]
    for k in keys:
        a.set(k, "before")
    cluster[victim].kill()
    for k in keys[::2]:
        assert b.set(k, "during") is True
    expected = {k: ("during" if i % 2 == 0 else "before") for i, k in enumerate(keys)}
    a.get(keys[1])  # a notices too
    tick(clock, [a, b], 3 * FAILOVER_TTL)
    for c in (a, b):
        assert {k: c.get(k) for k in keys} == expected
    cluster[victim].restart()
    for seconds in (BACKOFF_MAX + TICK, FAILOVER_TTL + 3, 3 * FAILOVER_TTL):
        tick(clock, [a, b], seconds)
        for c in (a, b):
            assert {k: c.get(k) for k in keys} == expected
    # The partner's copy was never cut short; the returned node got the
    # outage writes (handoff) and, as primary, the other keys (read-repair).
    # (A key it is the backup of and that was not written since stays on
    # its primary alone until it is written again.)
    ring = HashRing(_NODES)
    for k in keys:
        home = ring.nodes_for(k, 2)
        (partner,) = [n for n in home if n != victim]
        assert cluster[partner].peek(k.encode()) is not None, k
        if expected[k] == "during" or home[0] == victim:
            assert cluster[victim].peek(k.encode()) is not None, k


@both_faces
def test_warming_restarted_node_answers_when_its_partner_lost_the_key(face: str) -> None:
    """Found by the state machine: written after n3 restarted, then n4 restarts unnoticed.

    The key is on n3 (warming) and no longer on n4: n3 must answer.
    """
    clock, cluster, (a, b) = _setup(face)
    n3, n4 = _NODES[2], _NODES[3]
    keys = _KEYS_BY_PAIR[(n4, n3)] + _KEYS_BY_PAIR[(n3, n4)]
    cluster[n3].kill()
    for c in (a, b):
        c.stats()  # both see n3 down
    cluster[n3].restart()
    tick(clock, [a, b], BACKOFF_INITIAL + 1.0)  # two answers to come back
    assert all(c._engine.health.state(n3) is NodeState.WARMING for c in (a, b))
    for k in keys:
        assert a.set(k, "after") is True
    cluster[n4].restart()  # no client notices
    for c in (a, b):
        assert [c.get(k) for k in keys] == ["after"] * len(keys)


@both_faces
def test_restarted_backup_gets_its_copies_back_when_read(face: str) -> None:
    """A restarted node is refilled by reads while it warms; then its partner may fail."""
    clock, cluster, (a, b) = _setup(face)
    for c in (a, b):
        c._engine.queue_rebuild = lambda node, delay=0.0: None  # type: ignore[method-assign]  # reads alone refill
    victim = _NODES[1]
    keys = [f"r:{i}" for i in range(400)]
    assert a.set_many({k: k for k in keys}) == []
    backup_of = [k for k in keys if a.ring.nodes_for(k, 2)[1] == victim]
    primary_of = [k for k in keys if a.ring.nodes_for(k, 2)[0] == victim]
    assert backup_of and primary_of
    cluster[victim].kill()
    a.stats()
    b.stats()
    tick(clock, [a, b], TICK)
    cluster[victim].restart()
    tick(clock, [a, b], BACKOFF_INITIAL)
    assert a._engine.health.state(victim) is NodeState.WARMING
    assert a.get_many(backup_of[::2]) == {k: k for k in backup_of[::2]}
    assert [a.get(k) for k in backup_of[1::2] + primary_of] == backup_of[1::2] + primary_of
    assert a.metrics()["read_repairs"] == len(backup_of) + len(primary_of)
    assert all(cluster[victim].peek(k.encode()) is not None for k in backup_of + primary_of)
    tick(clock, [a, b], FAILOVER_TTL + 3)
    # A later fault of any other node loses nothing.
    cluster[_NODES[0]].kill()
    for c in (a, b):
        assert c.get_many(keys) == {k: k for k in keys}


@both_faces
def test_restarted_node_is_rebuilt_without_any_read(face: str) -> None:
    """A node restarts empty and no key is read: the rebuild copies back all it co-owns."""
    clock, cluster, (a, b) = _setup(face)
    victim, partner = _NODES[1], _NODES[2]
    keys = [f"q:{i}" for i in range(400)]
    assert a.set_many({k: k for k in keys}) == []
    shared = [k for k in keys if set(a.ring.nodes_for(k, 2)) == {victim, partner}]
    assert shared
    cluster[victim].kill()
    a.stats()
    b.stats()
    cluster[victim].restart()
    while a._engine.health.state(victim) is not NodeState.WARMING:
        tick(clock, [a, b], TICK)
    assert a.metrics()["rebuilt_keys"] + b.metrics().get("rebuilt_keys", 0) >= len(shared)
    assert all(cluster[victim].peek(k.encode()) is not None for k in shared)
    cluster[partner].kill()
    assert a.get_many(shared) == {k: k for k in shared}
