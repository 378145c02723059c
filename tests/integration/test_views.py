"""Invariant S on real memcached processes when clients see faults differently,
and when faults come one after another.

Each scenario is one of issue #13's, run as a user would meet it:

* **a pause only one client hit**: home node H hangs for a moment while
  client A has calls in flight (A fails over, writes and deletes outage
  keys), and client B makes no call meanwhile (for B nothing happened); H
  resumes; B reads, then writes and deletes the same keys. No acknowledged
  write may be replaced by an older one, no deleted key may come back once
  A has handed off; the stale reads B sees before that are counted and
  their window measured. ``BackupClient``: B must read the latest value
  from the first read. The same runs with A and B in separate processes;
  and with A cut off from H by a proxy while B reaches it.
* **the failover node fails while its partner warms**: H hangs, its keys
  are rewritten (a quarter deleted) through its failover node F, H resumes,
  and F hangs before the copies are home, then is killed and restarted: no
  read may ever return H's older value or a deleted key.
* **both home nodes warming** (``BackupClient``): one of a key's homes hung
  and resumed, the other restarted empty: every key is still found.
* **a rolling restart** (``BackupClient``): each node in turn killed and
  restarted empty, the next only once ``wait_redundant()`` says every key
  has two copies again: no session is lost, and each wait is reported.

Figures are printed (run with ``-s`` to see them).
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from memring import BackupClient, Client, Failover, HealthPolicy, Node, NodeState, Timeouts
from memring.tools.local import LocalCluster
from tests.netfaults import FaultProxy, proxied_node

pytestmark = pytest.mark.integration

FAILOVER_TTL = 3
TIMEOUTS = Timeouts(connect=0.2, read=0.2)
HEALTH = HealthPolicy(backoff_initial=0.05, backoff_max=0.25, jitter=0.1)
#: How long after H answers again a client that failed over may take to have
#: seen it back and handed its copies off: its slowest probe, the return
#: grace, the handoff itself, and room for a busy 2-core machine.
HANDOFF_BOUND = 1.0


def make(cls: type[Client], servers: list[Any], **kw: Any) -> Client:
    return cls(servers, failover=Failover("next", failover_ttl=FAILOVER_TTL, **kw),
               timeouts=TIMEOUTS, health=HEALTH)


@pytest.fixture
def four(memcached_binary: str) -> Iterator[LocalCluster]:
    cluster = LocalCluster(4, binary=memcached_binary)
    cluster.start()
    try:
        yield cluster
    finally:
        cluster.stop()


def keys_of(client: Client, node: Node, n: int) -> list[str]:
    tag = uuid.uuid4().hex[:8]
    out = [k for k in (f"{tag}:{i}" for i in range(60 * n)) if client.ring.node_for(k) == node]
    assert len(out) >= n
    return out[:n]


def wait_until(what: str, pred: Callable[[], bool], limit: float = 10.0) -> float:
    start = time.monotonic()
    while not pred():
        assert time.monotonic() - start < limit, f"timed out waiting for {what}"
        time.sleep(0.01)
    return time.monotonic() - start


@dataclass
class Tally:
    """Reads checked against the acknowledged state of each key (None: deleted)."""

    stale: list[str] = field(default_factory=list)
    resurrected: list[str] = field(default_factory=list)

    def check(self, expected: dict[str, str | None], got: dict[str, Any]) -> None:
        for k, want in expected.items():
            have = got.get(k)
            if have is None or have == want:
                continue
            (self.resurrected if want is None else self.stale).append(k)

    @property
    def bad(self) -> int:
        return len(self.stale) + len(self.resurrected)


def read_all(client: Client, keys: list[str]) -> dict[str, Any]:
    return {k: client.get(k) for k in keys}


# -- a pause only one client hit ---------------------------------------------------------
class Actor:
    """A client in this process, or in a worker process of its own (``remote``)."""

    def __init__(self, cls: type[Client], servers: list[Any], remote: bool, **kw: Any) -> None:
        self.remote = remote
        if remote:
            ctx = multiprocessing.get_context("spawn")
            self.conn, child = ctx.Pipe()
            self.proc = ctx.Process(target=_worker, args=(child, cls, servers, kw), daemon=True)
            self.proc.start()
            child.close()
            assert self.conn.poll(30), "the worker did not start"
            assert self.conn.recv() == "ready"
        else:
            self.client = make(cls, servers, **kw)

    def __call__(self, op: str, *args: Any) -> Any:
        if not self.remote:
            return _do(self.client, op, args)
        self.conn.send((op, args))
        assert self.conn.poll(60), f"the worker did not answer {op}"
        ok, result = self.conn.recv()
        if not ok:
            raise AssertionError(f"worker: {op} raised {result}")
        return result

    def close(self) -> None:
        if self.remote:
            self.conn.send(("quit", ()))
            self.proc.join(10)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)
            self.conn.close()
        else:
            self.client.close()


def _do(client: Client, op: str, args: tuple[Any, ...]) -> Any:
    if op == "write":  # {key: value or None (delete)}
        for k, v in args[0].items():
            if v is None:
                assert client.delete(k) in (True, False)
            else:
                assert client.set(k, v) is True
        return None
    if op == "read":
        return read_all(client, args[0])
    if op == "state":
        return client.health()[args[0]].state.value
    raise ValueError(op)


def _worker(conn: Any, cls: type[Client], servers: list[Any], kw: dict[str, Any]) -> None:
    client = make(cls, servers, **kw)
    conn.send("ready")
    try:
        while True:
            op, args = conn.recv()
            if op == "quit":
                return
            try:
                conn.send((True, _do(client, op, args)))
            except Exception as exc:  # reported to the test, which fails
                conn.send((False, repr(exc)))
    finally:
        client.close()
        conn.close()


def pause_one_client_sees(four: LocalCluster, cls: type[Client], remote: bool,
                          verify: bool = False) -> dict[str, Any]:
    """The issue's scenario: H hangs while A calls and B does not; H resumes; B reads,
    writes and deletes. Returns the counts."""
    kw = {"verify_reads": True} if verify else {}
    a = Actor(cls, four.servers, remote)
    b = Actor(cls, four.servers, remote, **kw)
    probe = make(cls, four.servers)
    try:
        home = four[0]
        keys = keys_of(probe, home.node, 200)
        expected: dict[str, str | None] = {k: f"old {k}" for k in keys}
        a("write", expected)
        b("read", keys)  # B has connections, and nothing odd to see
        home.hang()
        first = {keys[0]: f"new {keys[0]}"}
        a("write", first)  # times out: A fails over (B makes no call)
        assert a("state", home.node.label) == "down"
        outage = {k: f"new {k}" for k in keys[:150]} | dict.fromkeys(keys[150:])
        a("write", outage)  # copies and tombstones on the failover node
        expected.update(outage)
        home.resume()
        answered = time.monotonic()
        assert b("state", home.node.label) == "up"  # B never knew
        early = Tally()
        early.check(expected, b("read", keys))  # before A has seen H back
        stale_until = None
        while time.monotonic() - answered < 3 * HANDOFF_BOUND:
            now = Tally()
            now.check(expected, b("read", keys))
            if now.bad == 0:
                stale_until = time.monotonic() - answered
                break
        # B writes 100 of the keys and deletes the other 100
        later = {k: f"b {k}" for k in keys[:100]} | dict.fromkeys(keys[100:])
        b("write", later)
        expected.update(later)
        wait_until("A to see H back", lambda: a("state", home.node.label) != "down")
        time.sleep(HANDOFF_BOUND)  # A's handoff has run
        after = Tally()
        for reader in (a, b):
            after.check(expected, reader("read", keys))
        lost = sum(1 for k in keys[:100] if probe.get(k) != later[k])
        back = sum(1 for k in keys[100:] if probe.get(k) is not None)
        return {"early stale": early.bad, "stale window": stale_until, "lost writes": lost,
                "resurrected": back, "after": after.bad}
    finally:
        for c in (a, b):
            c.close()
        probe.close()


@pytest.mark.parametrize("remote", [False, True], ids=["threads", "processes"])
def test_a_pause_one_client_hit_loses_no_write_single_copy(four: LocalCluster,
                                                           remote: bool) -> None:
    got = pause_one_client_sees(four, Client, remote)
    print(f"\nClient, {'processes' if remote else 'one process'}: {got}")
    assert got["lost writes"] == 0 and got["resurrected"] == 0 and got["after"] == 0
    # B, which never saw the pause, reads the old values only until A hands off
    assert got["stale window"] is not None and got["stale window"] < HANDOFF_BOUND, got


@pytest.mark.parametrize("remote", [False, True], ids=["threads", "processes"])
def test_a_pause_one_client_hit_is_never_a_stale_read_in_backup_mode(four: LocalCluster,
                                                                      remote: bool) -> None:
    got = pause_one_client_sees(four, BackupClient, remote)
    print(f"\nBackupClient, {'processes' if remote else 'one process'}: {got}")
    # the very first read of every key, before A has seen H back, is already fresh
    assert got["early stale"] == 0 and got["lost writes"] == 0 and got["resurrected"] == 0
    assert got["after"] == 0


def test_verified_reads_remove_the_stale_window_of_a_single_copy(four: LocalCluster) -> None:
    got = pause_one_client_sees(four, Client, False, verify=True)
    print(f"\nClient(verify_reads=True): {got}")
    assert got["early stale"] == 0 and got["lost writes"] == 0 and got["resurrected"] == 0
    assert got["after"] == 0


@pytest.mark.parametrize("cls", [Client, BackupClient], ids=lambda c: c.__name__)
def test_a_client_cut_off_from_a_node_others_reach(four: LocalCluster,
                                                   cls: type[Client]) -> None:
    """A reaches H through a proxy that goes silent; B reaches H directly. Both write."""
    proxies = [FaultProxy(p.address) for p in four]
    try:
        a = make(cls, [proxied_node(p.node, x) for p, x in zip(four, proxies, strict=True)])
        b = make(cls, four.servers)
        home = four[0]
        keys = keys_of(b, home.node, 120)
        expected: dict[str, str | None] = {k: f"old {k}" for k in keys}
        for k, v in expected.items():
            assert b.set(k, v) is True
        proxies[0].blackhole()
        for i, k in enumerate(keys[:60]):  # A writes while it cannot reach H
            if i % 4 == 3:
                assert a.delete(k) in (True, False)
                expected[k] = None
            else:
                assert a.set(k, f"a {k}") is True
                expected[k] = f"a {k}"
        assert a.health()[proxied_node(home.node, proxies[0]).label].state is NodeState.DOWN
        for i, k in enumerate(keys[30:90]):  # B writes too, later, some of the same keys
            if i % 5 == 4:
                assert b.delete(k) in (True, False)
                expected[k] = None
            else:
                assert b.set(k, f"b {k}") is True
                expected[k] = f"b {k}"
        if cls is BackupClient:  # two copies: both read the latest, even now
            for reader in (a, b):
                tally = Tally()
                tally.check(expected, read_all(reader, keys))
                assert tally.bad == 0, (reader, tally)
        proxies[0].heal()
        wait_until("A to see H back", lambda: a.health()[
            proxied_node(home.node, proxies[0]).label].state is not NodeState.DOWN)
        time.sleep(HANDOFF_BOUND)
        for reader in (a, b):
            tally = Tally()
            tally.check(expected, read_all(reader, keys))
            assert tally.bad == 0, (cls.__name__, tally)
            missing = [k for k, v in expected.items() if v is not None and reader.get(k) is None]
            assert missing == [], missing[:5]
        a.close()
        b.close()
    finally:
        for x in proxies:
            x.close()


# -- faults in sequence ---------------------------------------------------------------
@pytest.mark.parametrize("then", ["hang", "kill"])
def test_the_failover_node_fails_while_its_partner_warms(four: LocalCluster, then: str) -> None:
    a, b = make(Client, four.servers), make(Client, four.servers)
    try:
        home, partner = four[0], None
        keys = keys_of(a, home.node, 300)
        expected: dict[str, str | None] = {k: f"old {k}" for k in keys}
        for k, v in expected.items():
            assert a.set(k, v) is True
        home.hang()
        for c in (a, b):
            c.get(keys[0])  # both fail over (observed alike)
        for i, k in enumerate(keys[:300]):
            c = (a, b)[i % 2]
            if i % 4 == 3:
                assert c.delete(k) in (True, False)
                expected[k] = None
            else:
                assert c.set(k, f"new {k}") is True
                expected[k] = f"new {k}"
        partner = four.process_for(a.ring.nodes_for(keys[0], 2)[1])
        home.resume()
        partner.hang()  # before the copies are home
        seen = Tally()
        deadline = time.monotonic() + FAILOVER_TTL + 3
        while time.monotonic() < deadline:  # home warms, then not; the copies are out of reach
            for c in (a, b):
                seen.check(expected, read_all(c, keys[::7]))
        if then == "kill":
            partner.kill()
            partner.start()  # empty: the copies are gone
        else:
            partner.resume()
        deadline = time.monotonic() + FAILOVER_TTL + 3
        while time.monotonic() < deadline:
            for c in (a, b):
                seen.check(expected, read_all(c, keys))
        print(f"\nfailover node {then}: stale={len(seen.stale)} "
              f"resurrected={len(seen.resurrected)}")
        assert seen.bad == 0, seen
    finally:
        if partner is not None and not partner.running:
            partner.start()
        a.close()
        b.close()


def test_both_home_nodes_warming_still_find_every_key(four: LocalCluster) -> None:
    client = make(BackupClient, four.servers)
    try:
        keys = [f"both:{i}" for i in range(3200)]
        for i in range(0, len(keys), 400):
            assert client.set_many({k: k for k in keys[i:i + 400]}) == []
        p0, p1 = four[0], four[1]
        pair = [k for k in keys if set(client.ring.nodes_for(k, 2)) == {p0.node, p1.node}]
        assert len(pair) > 100
        p1.hang()
        client.get(pair[0])  # p1 down; then back, warming (it kept its data)
        p1.resume()
        wait_until("p1 warming", lambda: client.health()[p1.node.label].state
                   is NodeState.WARMING)
        client._engine.queue_rebuild = lambda node, delay=0.0: None  # reads alone, here
        p0.kill()
        assert client.get(pair[0]) == pair[0]  # p0 down: read from p1 and the stand-in
        assert client.health()[p0.node.label].state is NodeState.DOWN
        p0.start()  # empty
        wait_until("p0 back, warming", lambda: client.health()[p0.node.label].state
                   is NodeState.WARMING)
        assert client.health()[p1.node.label].state is NodeState.WARMING  # both, now
        missing = [k for k in pair if client.get(k) != k]
        print(f"\nboth homes warming: {len(missing)} of {len(pair)} keys missing")
        assert missing == []
    finally:
        client.close()


def test_a_rolling_restart_that_waits_for_redundancy_loses_nothing(four: LocalCluster) -> None:
    client = make(BackupClient, four.servers)
    try:
        sessions = {f"session:{i}": f"s{i}" for i in range(5000)}
        other = {f"other:{i}": f"o{i}" for i in range(30000)}
        items = list((sessions | other).items())
        for i in range(0, len(items), 1000):
            assert client.set_many(dict(items[i:i + 1000])) == []
        waits = []
        for proc in four:
            proc.kill()
            proc.start()  # empty
            waits.append(client.wait_redundant(timeout=60))
        lost = [k for k, v in sessions.items() if client.get(k) != v]
        got: dict[str, Any] = {}
        names = list(other)
        for i in range(0, len(names), 1000):  # a call bounded by a 0.2 s read timeout
            got |= client.get_many(names[i:i + 1000])
        lost_other = [k for k, v in other.items() if got.get(k) != v]
        print(f"\nrolling restart: waits {[round(w, 2) for w in waits]} s; "
              f"lost sessions {len(lost)}, other keys {len(lost_other)}; "
              f"rebuilt {client.metrics()['rebuilt_keys']} keys")
        assert lost == [] and lost_other == []
        assert all(s.redundancy == "complete" for s in client.health().values())
    finally:
        client.close()
