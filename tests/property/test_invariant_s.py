"""Invariant S for ``Failover("next")``, checked against a plain dict model.

Two clients share four fake memcached nodes (``tests/fakes.py``) and a fake
clock. Nodes are killed, hung (SIGSTOP: writes sent meanwhile are applied on
resume), resumed and restarted empty, one at a time; or one client alone
loses its link to a node (its requests lost, or applied with their replies
lost), which the other never sees. Meanwhile both clients set, delete and
read keys. A read must return the latest acknowledged value of its key or
a miss: never an older value, never a deleted one.

The state machine's steps: ``set``, ``delete``, ``get`` through either
client (expiry never, long, or around ``failover_ttl``), a burst of outage
writes to the faulty node's keys, ``get_many``/``set_many``/``delete_many``;
``fault`` (hang, kill, kill a hung node, or a restart too fast to notice);
``link_fault`` and ``link_heal``; ``recover`` (resume, applying the writes
the hung node had buffered, or restart empty, each after some more outage
and followed by some time), with or without every client having noticed
the fault; ``advance`` the clock. Faults come in sequence: the next may
strike while a node warms, while a handoff runs, or on the node that holds
the copies.

When must a read be fresh? A single copy cannot show a client a write that
went elsewhere until someone moves it, so:

* while every client sees a fault alike (each has had a call fail on the
  faulty node), every read is checked, after every step, through every
  client whose read cannot change what it knows;
* once clients saw a fault differently (one client's link, or a recovery
  some client never noticed), reads are checked again from ``SETTLE``
  seconds after the fault ends: the bound within which the clients that
  failed over have seen the node back and handed their copies off. A
  stale read, an older value moved over a newer one, or a delete undone
  shows up then.

Then come targeted tests for each bug found here: long outages, expired
copies, a handoff cut short by a second hang, two clients settling the
same key at once, and the issue's scenarios of faults seen differently.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from memring import (
    Client,
    Failover,
    HashRing,
    HealthPolicy,
    MemringError,
    MultiKeyError,
    Node,
    NodeState,
)
from tests import faces
from tests.faces import both_faces
from tests.fakes import FakeClock, FakeCluster, SingleFault
from tests.fakes import tick as fakes_tick

FAILOVER_TTL = 6
BACKOFF_INITIAL = 1.0
BACKOFF_MAX = 3.0
#: Seconds a call to a hung node takes before it times out.
TIMEOUT_COST = 0.3
#: Time moves in steps of at most this; every client probes after each step.
TICK = 0.5
NODES = 4
KEYS_PER_NODE = 2
CLIENTS = 2
#: Few ring points keep building a client cheap; placement does not matter here.
VNODES = 16
#: After a fault clients saw differently ends, reads are fresh again within this:
#: the slowest probe, the return grace, a handoff retry and the time steps.
SETTLE = BACKOFF_MAX + 0.1 + 1.0 + 2 * 0.5


def make_client(cluster: FakeCluster, clock: FakeClock, *, face: str = "sync",
                failover_ttl: int = FAILOVER_TTL, backoff_initial: float = BACKOFF_INITIAL,
                backoff_max: float = BACKOFF_MAX) -> Client:
    return faces.make(
        face, [n.label for n in cluster.nodes],
        failover=Failover("next", failover_ttl=failover_ttl),
        health=HealthPolicy(failure_threshold=1, backoff_initial=backoff_initial,
                            backoff_max=backoff_max, jitter=0),
        vnodes=VNODES, _cluster=cluster, _clock=clock, _hlc=cluster.hlc,
        _background=False,
    )


def keys_by_node(nodes: list[Node], per_node: int) -> dict[Node, list[str]]:
    ring = HashRing(nodes, vnodes=VNODES)
    out: dict[Node, list[str]] = {n: [] for n in nodes}
    for i in itertools.count():
        key = f"key:{i}"
        home = ring.node_for(key)
        if len(out[home]) < per_node:
            out[home].append(key)
        if all(len(v) == per_node for v in out.values()):
            return out
    raise AssertionError("unreachable")


def tick(clock: FakeClock, clients: Sequence[Client], seconds: float) -> None:
    fakes_tick(clock, clients, seconds, TICK)


_NODES = [Node(f"10.0.0.{i + 1}", 11211) for i in range(NODES)]
_KEYS_BY_NODE = keys_by_node(_NODES, KEYS_PER_NODE)
ALL_KEYS = [k for ks in _KEYS_BY_NODE.values() for k in ks]


@dataclass
class KeyModel:
    """What a read of one key may return besides a miss."""

    #: value -> the clock time after which it must no longer be read (None: never expires)
    allowed: dict[str, float | None] = field(default_factory=dict)
    #: how each value left ``allowed``, to explain a failure
    gone: dict[str, str] = field(default_factory=dict)
    #: values overwritten while clients saw a fault differently (value -> its own
    #: expiry): the README's limit lets one come back once every newer value has
    #: expired, since memcached leaves no trace of an expired item
    shadow: dict[str, float | None] = field(default_factory=dict)
    #: values deleted while clients saw a fault differently: shadowed (as above)
    #: once a newer value is written over the delete's tombstone, and has expired
    buried: dict[str, float | None] = field(default_factory=dict)

    def acked_set(self, value: str, deadline: float | None, diverging: bool = False) -> None:
        for v in self.allowed:
            self.gone[v] = f"overwritten by {value!r}"
        if diverging:
            self.shadow.update(self.allowed)
            self.shadow.update(self.buried)
        else:
            self.shadow.clear()
        self.buried.clear()
        self.allowed = {value: deadline}

    def acked_delete(self, diverging: bool = False) -> None:
        for v in self.allowed:
            self.gone[v] = "deleted"
        if diverging:
            self.buried.update(self.shadow)
            self.buried.update(self.allowed)
        else:
            self.buried.clear()
        self.allowed = {}
        self.shadow.clear()

    def maybe_set(self, value: str, deadline: float | None) -> None:
        self.allowed[value] = deadline


#: A key choice: an index into ALL_KEYS, or past its end a key of the faulty node (or
#: of the last one), so that the keys an outage touches are chosen half of the time.
KEY = st.integers(0, 2 * len(ALL_KEYS) - 1)
KEYS = st.lists(KEY, min_size=1, max_size=5)
WHO = st.integers(0, CLIENTS - 1)
#: 0 = never; 100_000 s is long; 3 and 8 s straddle FAILOVER_TTL.
EXPIRE = st.sampled_from([0, 0, 0, 100_000, 3, 8])
#: Seconds to let pass: none, a probe backoff, half a copy's life, longer than one.
LATER = st.sampled_from([0, BACKOFF_MAX, FAILOVER_TTL / 2, 2 * FAILOVER_TTL + 1])


class InvariantS(SingleFault, RuleBasedStateMachine):
    #: The face whose clients the machine drives (tests/faces.py).
    FACE = "sync"

    def __init__(self) -> None:
        super().__init__(NODES, CLIENTS, TIMEOUT_COST,
                         functools.partial(make_client, face=self.FACE))
        assert self.cluster.nodes == _NODES
        self.model: dict[str, KeyModel] = {k: KeyModel() for k in ALL_KEYS}
        self.last_faulty = _NODES[0]
        #: Reads are checked from this clock time on (see the module docstring).
        self.calm_at = 0.0
        #: The node of the last fault only one client saw.
        self.diverged: Node | None = None

    # -- helpers ------------------------------------------------------------
    def _key(self, choice: int) -> str:
        if choice < len(ALL_KEYS):
            return ALL_KEYS[choice]
        return _KEYS_BY_NODE[self.faulty or self.last_faulty][choice % KEYS_PER_NODE]

    def _keys(self, choices: list[int]) -> list[str]:
        return list(dict.fromkeys(self._key(c) for c in choices))

    def _check(self, who: int, key: str, got: object) -> None:
        if not self._calm():
            return  # clients see a fault differently: a single copy can lag (module docstring)
        m = self.model[key]
        if self.shadowed(got, m.allowed, m.shadow):
            return  # the documented limit: every newer value has expired
        if got is not None:  # a miss is always allowed
            self.check_value(who, key, got, self.model[key].allowed, self.model[key].gone)

    # -- data operations ------------------------------------------------------
    @initialize()
    def fill(self) -> None:
        for key in ALL_KEYS:
            value = self._value(key)
            assert self.clients[0].set(key, value) is True
            self.model[key].acked_set(value, None)

    @rule(who=WHO, choice=KEY, expire=EXPIRE)
    def set(self, who: int, choice: int, expire: int) -> None:
        key = self._key(choice)
        value = self._value(key)
        try:
            ok = self.clients[who].set(key, value, expire=expire)
        except MemringError:
            self.model[key].maybe_set(value, self._deadline(expire))
            return
        assert ok is True
        self.model[key].acked_set(value, self._deadline(expire), not self._calm())

    @rule(who=WHO, choice=KEY)
    def delete(self, who: int, choice: int) -> None:
        key = self._key(choice)
        try:
            self.clients[who].delete(key)
        except MemringError:
            return  # the old value may survive or not: both are allowed reads
        self.model[key].acked_delete(not self._calm())

    @precondition(lambda self: self.faulty is not None)
    @rule(who=WHO, writes=st.lists(st.tuples(st.integers(0, KEYS_PER_NODE - 1), EXPIRE,
                                             st.booleans()), min_size=1, max_size=4))
    def outage_writes(self, who: int, writes: list[tuple[int, int, bool]]) -> None:
        """A burst of sets and deletes of the faulty node's keys."""
        for i, expire, delete in writes:
            if delete:
                self.delete(who, len(ALL_KEYS) + i)
            else:
                self.set(who, len(ALL_KEYS) + i, expire)

    @rule(who=WHO, choice=KEY)
    def get(self, who: int, choice: int) -> None:
        key = self._key(choice)
        self._check(who, key, self.clients[who].get(key))

    @rule(who=WHO, choices=KEYS, op=st.sampled_from(["get", "set", "delete"]),
          expire=st.sampled_from([0, 100_000]))
    def many(self, who: int, choices: list[int], op: str, expire: int) -> None:
        """get_many, set_many or delete_many."""
        c, keys = self.clients[who], self._keys(choices)
        failed: dict[object, Exception] = {}
        if op == "get":
            try:
                got = c.get_many(keys)
            except MultiKeyError as exc:
                got = dict(exc.results)  # type: ignore[call-overload]
            assert set(got) <= set(keys)
            for key in keys:
                self._check(who, key, got.get(key))
        elif op == "set":
            values = {k: self._value(k) for k in keys}
            try:
                assert c.set_many(values, expire=expire) == []
            except MultiKeyError as exc:
                failed = exc.failed
            for k, v in values.items():
                if k in failed:
                    self.model[k].maybe_set(v, self._deadline(expire))
                else:
                    self.model[k].acked_set(v, self._deadline(expire), not self._calm())
        else:
            try:
                c.delete_many(keys)
            except MultiKeyError as exc:
                failed = exc.failed
            for k in keys:
                if k not in failed:
                    self.model[k].acked_delete(not self._calm())

    def _calm(self) -> bool:
        """Must reads be fresh now? (See the module docstring.)"""
        return self.link is None and self.clock.time() >= self.calm_at

    @invariant()
    def reads_are_fresh(self) -> None:
        """Every key, read through every client whose reads change nothing.

        A read is checked after every step when it cannot change what the
        clients know: with no node faulty, or through a client that already
        sees the faulty node as down (it asks the failover node only); and
        only when clients see faults alike, or have settled since.
        """
        if not self._calm():
            return
        for who, c in enumerate(self.clients):
            if self.faulty is None or self.sees_down(c, self.faulty):
                for key in ALL_KEYS:
                    self._check(who, key, c.get(key))

    @rule(who=WHO, node=st.sampled_from(_NODES), how=st.sampled_from(["cut", "deaf"]))
    def link_fault(self, who: int, node: Node, how: str) -> None:
        """Client ``who`` alone loses ``node``: a brief pause only it hit, or a partition."""
        if self._one_at_a_time() and self.cut_link(who, node, how):
            self.diverged = node
            self.last_faulty = node
            self.calm_at = float("inf")

    @precondition(lambda self: self.link is not None)
    @rule(after=LATER, then=st.sampled_from(["nothing", "set", "delete"]))
    def link_heal(self, after: float, then: str) -> None:
        """The link is back; ``then`` the other client (which never saw the fault)
        writes the node's keys at once, before the one that failed over has seen the
        node back: the race in which an older copy could be moved over a newer write."""
        assert self.link is not None
        who, node = self.link
        self.heal_link()
        self.calm_at = self.clock.time() + SETTLE
        other = 1 - who
        for i in range(KEYS_PER_NODE):
            if then == "set":
                self.set(other, len(ALL_KEYS) + i, 0)
            elif then == "delete":
                self.delete(other, len(ALL_KEYS) + i)
        tick(self.clock, self.clients, after)

    # -- faults ---------------------------------------------------------------
    @rule(node=st.sampled_from(_NODES), how=st.sampled_from(["hang", "hang", "kill", "bounce"]))
    def fault(self, node: Node, how: str) -> None:
        """hang (SIGSTOP) or kill a node; or restart it so fast that no client notices."""
        server = self.cluster[node]
        if how == "kill" and self.faulty == node and server.state == "hung":
            server.kill()  # SIGKILL a hung process: its buffered writes are lost
        elif not self._one_at_a_time():
            return
        elif how == "bounce":
            if self.may_fault(node):
                server.restart()  # connections are re-opened: just an empty node
        elif self.may_fault(node):
            self.faulty = self.last_faulty = node
            getattr(server, how)()

    def _one_at_a_time(self) -> bool:
        """No fault starts while a client still sees a node down after a fault only it
        saw: for that client the first fault is not over, and two would overlap."""
        return self.diverged is None or not any(
            self.sees_down(c, self.diverged) for c in self.clients)

    @precondition(lambda self: self.faulty is not None)
    @rule(restart=st.sampled_from([False, False, True]), before=LATER, after=LATER,
          everyone=st.booleans())
    def recover(self, restart: bool, before: float, after: float, everyone: bool) -> None:
        """``before`` seconds more of outage; then SIGCONT a hung node (restart=False) or
        start a killed or hung one afresh (empty); then ``after`` seconds pass.

        ``everyone``: every client noticed the fault first; else a client that made
        no call during it never knew (a brief pause only some workers hit).
        """
        assert self.faulty is not None
        server = self.cluster[self.faulty]
        if everyone:
            self.observe()
        elif not all(self.sees_down(c, self.faulty) for c in self.clients):
            self.calm_at = self.clock.time() + before + SETTLE
            self.diverged = self.faulty
        tick(self.clock, self.clients, before)
        if restart or server.state == "dead":
            server.restart()
        else:
            server.resume()
        self.faulty = None
        tick(self.clock, self.clients, after)

    # -- time -------------------------------------------------------------------
    @rule(seconds=st.sampled_from([
        TICK, BACKOFF_INITIAL, BACKOFF_MAX, FAILOVER_TTL / 2, FAILOVER_TTL + 1,
        FAILOVER_TTL + 2.5, 2 * FAILOVER_TTL + 3]))
    def advance(self, seconds: float) -> None:
        """Time passes; every client's prober runs when due (probes, returns, handoff)."""
        tick(self.clock, self.clients, seconds)


InvariantS.TestCase.settings = settings(
    max_examples=400, stateful_step_count=50, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
test_invariant_s = InvariantS.TestCase

#: The same machine on the asyncio face (fake nodes at its transport seam).
test_invariant_s_async = faces.async_machine(InvariantS, max_examples=150)


# ---------------------------------------------------------------------------
# targeted tests


def _setup(face: str, **kw: object) -> tuple[FakeClock, FakeCluster, list[Client]]:
    clock = FakeClock()
    cluster = FakeCluster(NODES, clock, timeout_cost=TIMEOUT_COST)
    clients = [make_client(cluster, clock, face=face, **kw)  # type: ignore[arg-type]
               for _ in range(CLIENTS)]
    return clock, cluster, clients


def keys_on(node: Node, n: int, prefix: str = "s") -> list[str]:
    """``n`` keys whose home is ``node``."""
    ring = HashRing(_NODES, vnodes=VNODES)
    return [k for k in (f"{prefix}:{i}" for i in range(40 * n)) if ring.node_for(k) == node][:n]


@pytest.mark.parametrize("outage", [1.0, 3 * FAILOVER_TTL])
@both_faces
def test_outage_writes_move_home_after_restart(outage: float, face: str) -> None:
    """Keys written while their node was down are back home once it restarts empty."""
    clock, cluster, clients = _setup(face)
    a, b = clients
    home = _NODES[0]
    keys = keys_on(home, 60)
    for k in keys:
        a.set(k, "before")
    cluster[home].kill()
    expected: dict[str, str | None] = {}
    for i, k in enumerate(keys):
        c = clients[i % 2]
        if i % 4 == 3:
            c.delete(k)
            expected[k] = None
        elif i % 4 != 2:
            c.set(k, f"outage-{i}")
            expected[k] = f"outage-{i}"
        # i % 4 == 2: not written during the outage: lost with the node (a miss)
    assert all(c._engine.health.state(home) is NodeState.DOWN for c in clients)
    tick(clock, clients, outage)
    cluster[home].restart()
    tick(clock, clients, BACKOFF_MAX + TICK)
    assert all(c._engine.health.state(home) is NodeState.WARMING for c in clients)
    for c in clients:
        for k in keys:
            assert c.get(k) == expected.get(k), k
    # every outage write is home now: the failover copies can go
    tick(clock, clients, FAILOVER_TTL + 3)
    assert all(c._engine.health.state(home) is NodeState.UP for c in clients)
    for k in keys:
        item = cluster[home].peek(k.encode())
        if expected.get(k) is not None:
            assert item is not None, f"{k} was not moved home"
    for c in clients:
        for k in keys:
            assert c.get(k) == expected.get(k), k


@pytest.mark.parametrize("outage", [1.0, 3 * FAILOVER_TTL])
@both_faces
def test_hang_then_resume_serves_no_old_value(outage: float, face: str) -> None:
    """A hung node keeps its old values; none of them is read again after it resumes."""
    clock, cluster, clients = _setup(face)
    a, b = clients
    home = _NODES[1]
    keys = keys_on(home, 4)
    for k in keys:
        a.set(k, "old")
    cluster[home].hang()
    b.set(keys[0], "new")     # times out (applied on resume), then fails over
    b.delete(keys[1])
    b.set(keys[2], "newer")
    b.set(keys[2], "newest")
    a.get(keys[3])            # a notices too
    a.set(keys[3], "new")
    a.delete(keys[3])
    assert cluster[home].pending_writes == 1
    tick(clock, clients, outage)
    cluster[home].resume()
    expected = {keys[0]: "new", keys[1]: None, keys[2]: "newest", keys[3]: None}
    for seconds in (0, BACKOFF_MAX + TICK, FAILOVER_TTL + 3):
        tick(clock, clients, seconds)
        for c in clients:
            assert {k: c.get(k) for k in keys} == expected


@both_faces
def test_expired_outage_write_does_not_uncover_the_old_value(face: str) -> None:
    """An outage write that expires reads as a miss, never as the home node's older value."""
    clock, cluster, clients = _setup(face)
    a, b = clients
    home = _NODES[2]
    key = keys_on(home, 1)[0]
    a.set(key, "old")
    cluster[home].hang()
    a.get(key)
    b.get(key)
    a.set(key, "short", expire=3)  # a copy only: a knows the node is down
    assert cluster[home].pending_writes == 0
    tick(clock, clients, 5)
    assert a.get(key) is None
    cluster[home].resume()
    for seconds in (0, BACKOFF_MAX + TICK, FAILOVER_TTL + 3):
        tick(clock, clients, seconds)
        assert [c.get(key) for c in clients] == [None, None]


@both_faces
def test_expired_copy_reads_as_a_tombstone(face: str) -> None:
    """A copy that expires during the warming window does not uncover the older home value.

    a sees the node back first; b, whose next probe is a little later, still
    writes a copy with a short expiry. Once that value expires, its copy
    must still read as a tombstone rather than vanish.
    """
    clock, cluster, clients = _setup(face)
    a, b = clients
    home = _NODES[3]
    key = keys_on(home, 1)[0]
    a.set(key, "old")
    cluster[home].hang()
    a.get(key)
    b.get(key)
    cluster[home].resume()
    tick(clock, [a], BACKOFF_INITIAL + TICK)
    assert a._engine.health.state(home) is NodeState.WARMING
    assert b._engine.health.state(home) is NodeState.DOWN
    assert b.set(key, "short", expire=1) is True
    clock.advance(1.5)  # before b's next probe or keep-alive
    assert [c.get(key) for c in clients] == [None, None]
    for seconds in (BACKOFF_MAX + TICK, FAILOVER_TTL + 3):
        tick(clock, clients, seconds)
        assert [c.get(key) for c in clients] == [None, None]


@both_faces
def test_failed_handoff_keeps_the_hint(face: str) -> None:
    """The node hangs again while a handoff reads it: the key stays hinted.

    Its copy is then kept alive through a second, long outage, and moved home
    when the node returns again.
    """
    clock, cluster, clients = _setup(face)
    a, b = clients
    home = _NODES[1]
    key = keys_on(home, 1)[0]
    a.set(key, "old")
    cluster[home].hang()
    a.get(key)
    b.get(key)
    a.set(key, "new")  # a copy only, hinted by a
    cluster[home].resume()
    # only a has something to hand off; the node hangs again as a reads it
    cluster[home].before("meta_many", cluster[home].hang, key=key.encode())
    tick(clock, clients, BACKOFF_MAX + TICK)
    assert a._engine.health.state(home) is NodeState.DOWN
    b.stats()  # b notices too (if it had seen the node back)
    assert b._engine.health.state(home) is NodeState.DOWN
    tick(clock, clients, 3 * FAILOVER_TTL)
    cluster[home].resume()
    for seconds in (0, BACKOFF_MAX + TICK, FAILOVER_TTL + 3):
        tick(clock, clients, seconds)
        assert [c.get(key) for c in clients] == ["new", "new"]


@both_faces
def test_concurrent_settle_keeps_the_newer_write(face: str) -> None:
    """Two clients settle the same key at once: the newer write home is never undone.

    While client A's handoff moves an outage copy home, client B settles the
    same key and writes a newer value home, between A's reads and A's CAS.
    """
    clock, cluster, clients = _setup(face)
    a, b = clients
    home = _NODES[3]
    key = keys_on(home, 1)[0]
    a.set(key, "old")
    cluster[home].hang()
    a.get(key)                # a read times out: nothing buffered, home is down for a
    b.get(key)
    a.set(key, "outage")      # a copy on the failover node only, hinted by a
    cluster[home].resume()
    tick(clock, [b], BACKOFF_MAX + TICK)   # b is back first (it has no hints)
    assert b._engine.health.state(home) is NodeState.WARMING
    wrote: list[bool] = []

    def b_writes() -> None:
        wrote.append(b.set(key, "newer"))
    # a's handoff has read the copy and the home value; b writes before a's CAS
    cluster[home].before("batch", b_writes)
    tick(clock, [a], BACKOFF_MAX + TICK)   # a comes back and hands the copy off
    assert a._engine.health.state(home) is NodeState.WARMING
    assert wrote == [True]
    for seconds in (0, FAILOVER_TTL + 3):
        tick(clock, clients, seconds)
        assert [c.get(key) for c in clients] == ["newer", "newer"]


@pytest.mark.parametrize("op", ["set", "delete"])
@both_faces
def test_node_returning_during_an_outage_write_still_gets_it_settled(op: str, face: str) -> None:
    """A write decided "home is down" just before the home returned: its copy still moves home.

    The probe runs between the routing decision and the copy's write, so
    the handoff has already run (with nothing to do) when the copy lands.
    """
    clock, cluster, clients = _setup(face)
    a, _ = clients
    home = _NODES[0]
    key = keys_on(home, 1)[0]
    a.set(key, "old")
    cluster[home].hang()
    a.get(key)  # times out: home is down for a
    cluster[home].resume()
    f = a.ring.nodes_for(key, 2)[1]
    def comes_back() -> None:  # two answers, the grace apart
        a._run(a._engine._probe(home))
        clock.advance(1.0)
        a._run(a._engine._probe(home))

    cluster[f].before("set", comes_back, key=key.encode())
    if op == "set":
        a.set(key, "new")
    else:
        a.delete(key)
    assert a.health()[home.label].state is NodeState.WARMING
    expected = "new" if op == "set" else None
    for seconds in (0, FAILOVER_TTL + 3):  # during the window, and after it
        tick(clock, clients, seconds)
        assert a.get(key) == expected


@both_faces
def test_add_over_a_settled_delete_succeeds(face: str) -> None:
    """A key deleted during an outage is missing after settling: add() stores it."""
    clock, cluster, clients = _setup(face)
    a, _ = clients
    home = _NODES[3]
    key = keys_on(home, 1)[0]
    a.set(key, "old")
    cluster[home].hang()
    a.get(key)  # times out (a read: nothing buffered); home is down for a
    a.delete(key)  # a tombstone on the failover node; home still holds "old"
    cluster[home].resume()
    while a.health()[home.label].state is not NodeState.WARMING:
        tick(clock, clients, TICK)  # on return, handoff swaps home's "old" for a tombstone
    assert cluster[home].peek(key.encode()) is not None
    assert a.get(key) is None
    assert a.add(key, "added") is True
    assert a.get(key) == "added"
    tick(clock, clients, FAILOVER_TTL + 3)
    assert a.get(key) == "added"
