"""One client shared by the threads of a web server."""

from __future__ import annotations

import threading
import time

import pytest

from memring import Failover, MemringError, MultiKeyError, PoolExhausted

pytestmark = pytest.mark.integration

THREADS = 8
ROUNDS = 1500  # each round: set, get, and every 4th round a get_many (~3,400 calls)


def test_threads_sharing_one_client_each_read_their_own_values(client, ns) -> None:
    errors: list[BaseException] = []
    wrong: list[str] = []
    done = [0] * THREADS
    start = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        try:
            keys = [f"{ns}:t{t}:k{i}" for i in range(50)]
            start.wait()
            for r in range(ROUNDS):
                key = keys[r % len(keys)]
                value = {"t": t, "r": r, "pad": "p" * (r % 300)}
                if not client.set(key, value):
                    wrong.append(f"set {key} returned false")
                got = client.get(key)
                if got != value:
                    wrong.append(f"get {key}: {got!r} != {value!r}")
                if r % 4 == 3:
                    window = [keys[(r - j) % len(keys)] for j in range(4)]
                    many = client.get_many(window)
                    for j, k in enumerate(window):
                        expect = (t, r - j)
                        seen = many.get(k)
                        if seen is None or (seen["t"], seen["r"]) != expect:
                            wrong.append(f"get_many {k}: {seen!r}, expected {expect}")
                done[t] += 1
        except BaseException as exc:  # reported by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads)
    assert errors == []
    assert wrong[:5] == []
    assert done == [ROUNDS] * THREADS
    metrics = client.metrics()
    assert all(n["errors"] == 0 and n["state"] == "up" for n in metrics["nodes"].values())


def test_threads_while_nodes_restart(fresh_cluster, make_client, ns) -> None:
    """Restarts under load: only memring errors reach callers, and no stale value."""
    # failover_ttl=2, not 1: memcached's clock ticks once a second, so an item
    # stored with expire=1 can vanish at once (a copy must outlive the test's steps).
    client = make_client(fresh_cluster, failover=Failover("next", failover_ttl=2))
    unexpected: list[BaseException] = []
    stale: list[str] = []
    expected_errors: list[MemringError] = []
    stop = threading.Event()

    def worker(t: int) -> None:
        latest: dict[str, int] = {}
        i = 0
        while not stop.is_set():
            key = f"{ns}:t{t}:{i % 40}"
            try:
                if client.set(key, i):
                    latest[key] = i
                got = client.get(key)
                if got is not None and got != latest.get(key):
                    stale.append(f"{key}: read {got}, last wrote {latest.get(key)}")
                if i % 5 == 0:
                    keys = [f"{ns}:t{t}:{j}" for j in range(10)]
                    for k, v in client.get_many(keys).items():
                        if v != latest.get(k):
                            stale.append(f"{k}: get_many read {v}, last wrote {latest.get(k)}")
            except MemringError as exc:
                expected_errors.append(exc)
            except BaseException as exc:  # reported by the main thread
                unexpected.append(exc)
            i += 1

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    try:
        for r in range(6):
            time.sleep(0.25)
            fresh_cluster[r % len(fresh_cluster)].restart()
        time.sleep(0.25)
    finally:
        stop.set()
        for th in threads:
            th.join(timeout=30)
    assert [f"{type(e).__name__}: {e}" for e in unexpected] == []
    assert stale == []
    # With Failover("next") and the default threshold of 1, a restart is
    # absorbed: the first failure fails the call over.
    assert [str(e) for e in expected_errors] == []


def test_a_full_pool_fails_the_call_and_keeps_every_other_connection(
        cluster, make_client, keys_on, ns) -> None:
    """Past max_pool_size pymemcache's pool refuses; a multi-key call still
    reads every other node's reply and gives its connection back."""
    client = make_client(cluster, max_pool_size=1)
    full, other = cluster.nodes[0], cluster.nodes[1]
    keys = keys_on(client, other, 2, f"{ns}:o") + keys_on(client, full, 2, ns)  # other first
    assert client.set_many(dict.fromkeys(keys, "v")) == []
    pools = {node: client._transports[node]._pool for node in (full, other)}
    held = pools[full].get()  # another thread's call in flight, say
    try:
        with pytest.raises(MultiKeyError) as caught:
            client.get_many(keys)
        assert len(pools[other].free) == len(pools[other]) == 1  # given back, none in use
        # the full node's keys failed with a typed error; the other node's were read
        failed = caught.value.failed
        assert set(failed) == set(keys[2:])
        assert all(isinstance(e, PoolExhausted) and isinstance(e, RuntimeError)
                   and "Too many" in str(e) for e in failed.values())
        assert caught.value.results == dict.fromkeys(keys[:2], "v")
        assert client.health()[full.label].state.value == "up"  # not the node's fault
    finally:
        pools[full].release(held)
    assert client.get_many(keys) == dict.fromkeys(keys, "v")
