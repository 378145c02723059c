"""A node hung with SIGSTOP: bounded waits, then no waits, then recovery.

SIGSTOP keeps the port open: the kernel still accepts connections and
buffers requests, but nothing answers, which is how a wedged server looks.
"""

from __future__ import annotations

import random
import statistics
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from memring import Failover, HealthPolicy, MultiKeyError, NodeState, NodeUnavailable
from tests import faces

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("face", faces.FACES, indirect=True)]

READ_TIMEOUT = 0.3  # conftest.FAST_TIMEOUTS
MARGIN = 0.25  # no call may take longer than READ_TIMEOUT + MARGIN
NO_WAIT = 0.05  # a call for a known-down node's key must not wait at all


class Stopwatch:
    def __init__(self) -> None:
        self.times: list[tuple[str, float]] = []

    def __call__(self, what: str, fn: Callable[[], Any]) -> Any:
        start = time.monotonic()
        try:
            return fn()
        finally:
            self.times.append((what, time.monotonic() - start))

    def raises(self, what: str, fn: Callable[[], Any], exc: type[BaseException]) -> Any:
        try:
            result = self(what, fn)
        except exc as error:
            return error
        pytest.fail(f"{what} did not raise {exc.__name__}: returned {result!r} "
                    f"after {self.times[-1][1]:.3f}s")

    def slowest(self) -> tuple[str, float]:
        return max(self.times, key=lambda t: t[1])


def wait_for(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            pytest.fail(f"{what}: not within {timeout}s")
        time.sleep(0.01)
    return time.monotonic() - start


def test_hung_node_next_bounded_then_free_then_back(
        fresh_cluster, make_client, keys_on, ns) -> None:
    # failover_ttl=2, not 1: memcached's clock ticks once a second, so an item
    # stored with expire=1 can vanish at once (a copy must outlive the test's steps).
    client = make_client(
        fresh_cluster, failover=Failover("next", failover_ttl=2),
        health=HealthPolicy(failure_threshold=2, backoff_initial=0.1, backoff_max=0.5))
    hung = fresh_cluster[0]
    label = hung.node.label
    mine = keys_on(client, hung.node, 12, ns)
    others = keys_on(client, fresh_cluster[1].node, 4, f"{ns}:o")
    assert client.set_many({k: f"old {k}" for k in mine + others}) == []
    hung.hang()
    clock = Stopwatch()

    # Below the failure threshold every call waits, but at most one read timeout.
    err = clock.raises("get #1", lambda: client.get(mine[0]), NodeUnavailable)
    assert err.node == hung.node
    assert "timed out" in str(err)
    assert client.health()[label].state is NodeState.UP
    # The second timeout marks the node down; this get_many then fails over.
    got = clock("get_many #2", lambda: client.get_many(mine[:3] + others))
    assert got == {k: f"old {k}" for k in others}  # mine: a miss, never a hang
    assert client.health()[label].state is NodeState.DOWN
    what, slowest = clock.slowest()
    assert slowest <= READ_TIMEOUT + MARGIN, (what, slowest)
    assert min(t for _, t in clock.times) >= READ_TIMEOUT * 0.9  # they did time out

    # Down: its keys go to their failover node without waiting.
    fast = Stopwatch()
    for k in mine[1:]:
        assert fast("set", lambda k=k: client.set(k, f"new {k}")) is True
        assert fast("get", lambda k=k: client.get(k)) == f"new {k}"
    assert fast("delete", lambda: client.delete(mine[0])) is True
    assert fast("get_many", lambda: client.get_many(mine + others)) == {
        **{k: f"new {k}" for k in mine[1:]}, **{k: f"old {k}" for k in others}}
    assert fast("set_many", lambda: client.set_many({k: "many" for k in mine[-2:]})) == []
    what, slowest = fast.slowest()
    # Waiting on the hung node would cost a whole read timeout. The bound on the
    # slowest call leaves room for a busy 2-core machine descheduling a process.
    assert slowest < READ_TIMEOUT / 3, (what, slowest, fast.times)
    times = sorted(t for _, t in fast.times)
    assert times[int(len(times) * 0.9)] < NO_WAIT, fast.times
    assert statistics.median(times) < NO_WAIT / 5, fast.times
    assert all(client.route(k) != hung.node for k in mine)

    # SIGCONT: the background probe finds it, it warms up, then it is up again.
    hung.resume()
    states: list[NodeState] = []

    def state() -> NodeState:
        s = client.health()[label].state
        if not states or states[-1] is not s:
            states.append(s)
        return s

    wait_for(lambda: state() is not NodeState.DOWN, 5, "probe brings the node back")
    assert states[-1] is NodeState.WARMING
    # While warming, the outage writes win over the values the node kept (Invariant S).
    assert client.get(mine[0]) is None
    assert client.get_many(mine) == {
        **{k: f"new {k}" for k in mine[1:-2]}, **{k: "many" for k in mine[-2:]}}
    warm_for = wait_for(lambda: state() is NodeState.UP, 4 + 3, "warming ends")
    assert warm_for > 1
    # (The probe in flight when SIGCONT came may bring it back before the first look.)
    assert states in ([NodeState.DOWN, NodeState.WARMING, NodeState.UP],
                      [NodeState.WARMING, NodeState.UP])
    assert client.route(mine[1]) == hung.node
    # Up again: the home node alone answers, with the outage-time values.
    assert client.get(mine[0]) is None
    assert client.get_many(mine) == {
        **{k: f"new {k}" for k in mine[1:-2]}, **{k: "many" for k in mine[-2:]}}

    m = client.metrics()["nodes"][label]
    assert m["timeouts"] >= 2
    assert m["failovers"] > 0
    assert m["state_changes"] >= 3
    assert m["state"] == "up"


def test_hung_node_fail_bounded_then_immediate_then_back(
        fresh_cluster, make_client, keys_on, ns) -> None:
    client = make_client(fresh_cluster, failover=Failover("fail"))  # threshold 1
    hung = fresh_cluster[2]
    label = hung.node.label
    mine = keys_on(client, hung.node, 5, ns)
    assert client.set_many({k: k for k in mine}) == []
    hung.hang()
    clock = Stopwatch()
    err = clock.raises("first", lambda: client.set(mine[0], "x"), NodeUnavailable)
    assert "timed out" in str(err)
    assert clock.times[0][1] <= READ_TIMEOUT + MARGIN
    for k in mine:
        err = clock.raises("down", lambda k=k: client.get(k), NodeUnavailable)
        assert err.node == hung.node
        assert err.key == k.encode()
    down_times = [t for _, t in clock.times[1:]]
    assert max(down_times) < READ_TIMEOUT / 3, down_times
    assert statistics.median(down_times) < NO_WAIT, down_times
    hung.resume()
    wait_for(lambda: client.health()[label].state is NodeState.UP, 5, "back up")
    for k in mine[1:]:
        assert client.get(k) == k
    m = client.metrics()["nodes"][label]
    assert m["timeouts"] >= 1
    assert m["state_changes"] >= 2


def test_two_hung_nodes_cost_one_read_timeout_per_multi_key_call(
        fresh_cluster, make_client, keys_on, ns) -> None:
    """The nodes of one call are waited for together, not one timeout after another."""
    client = make_client(fresh_cluster, failover=Failover("fail"))
    hung = [fresh_cluster[0], fresh_cluster[1]]
    live = [keys_on(client, p.node, 3, f"{ns}:{i}") for i, p in enumerate(fresh_cluster)]
    everything = [k for ks in live for k in ks]
    assert client.set_many({k: k for k in everything}) == []
    for p in hung:
        p.hang()
    clock = Stopwatch()
    err = clock.raises("set_many", lambda: client.set_many({k: "new" for k in everything}),
                       MultiKeyError)
    assert set(err.failed) == set(live[0] + live[1])
    assert clock.times[0][1] >= READ_TIMEOUT * 0.9  # it did wait for them...
    assert clock.times[0][1] <= READ_TIMEOUT + MARGIN, clock.times  # ...together
    for p in hung:
        assert client.health()[p.node.label].state is NodeState.DOWN
    err = clock.raises("get_many", lambda: client.get_many(everything), MultiKeyError)
    assert err.results == {k: "new" for ks in live[2:] for k in ks}
    assert set(err.failed) == set(live[0] + live[1])
    assert clock.times[1][1] < READ_TIMEOUT / 3, clock.times  # down: no wait at all


def test_timed_out_connections_are_never_reused(
        fresh_cluster, make_client, keys_on, ns) -> None:
    """After timeouts, late replies must not be read as the answer to other keys."""
    client = make_client(
        fresh_cluster, failover=Failover("fail"),
        health=HealthPolicy(failure_threshold=10_000, backoff_initial=0.1, backoff_max=0.5))
    hung = fresh_cluster[1]
    keys = keys_on(client, hung.node, 40, ns)
    values = {k: f"value of {k}" for k in keys}
    assert client.set_many(values) == []
    written_late = keys[-1]  # a set that times out may still land when the node resumes
    hung.hang()

    def pending_requests(t: int) -> None:
        for call in (lambda: client.get(keys[t]),
                     lambda: client.get_many(keys[t:t + 5]),
                     lambda: client.gets(keys[t + 1]),
                     lambda: client.incr(keys[t + 2], 1),
                     lambda: client.set(written_late, "late")):
            start = time.monotonic()
            with pytest.raises((NodeUnavailable, MultiKeyError)) as info:
                call()
            if isinstance(info.value, MultiKeyError):
                assert all(isinstance(e, NodeUnavailable) for e in info.value.failed.values())
            assert time.monotonic() - start <= READ_TIMEOUT + MARGIN + 0.2  # 4 threads, 2 cores

    errors: list[BaseException] = []

    def run(target: Callable[[int], None], n: int) -> None:
        def wrap(t: int) -> None:
            try:
                target(t)
            except BaseException as exc:
                errors.append(exc)
        threads = [threading.Thread(target=wrap, args=(t,)) for t in range(n)]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=60)
        assert errors == []

    # Several pooled connections, each with unanswered requests in the server's buffer.
    run(pending_requests, 4)
    assert client.health()[hung.node.label].state is NodeState.UP  # never marked down
    hung.resume()
    expected = dict(values)
    del expected[written_late]

    def reader(t: int) -> None:
        rng = random.Random(t)
        readable = list(expected)
        for _ in range(300):
            k = rng.choice(readable)
            assert client.get(k) == expected[k]
            batch = rng.sample(readable, 6)
            assert client.get_many(batch) == {b: expected[b] for b in batch}
        assert client.get(written_late) in (values[written_late], "late")

    run(reader, 4)
    assert client.metrics()["nodes"][hung.node.label]["timeouts"] >= 4
