"""The asyncio face against real memcached processes, under concurrent tasks.

* Invariant S under load: tasks write, delete and read their own keys
  while one node is hung (SIGSTOP) and resumed and another killed and
  restarted empty. Every read is judged against what the task knows was
  acknowledged: 0 stale reads, 0 resurrected deletes, and after the
  warming window 0 lost outage writes.
* Backup mode loses no key with one node down.
* Cancellation under load: calls are cancelled at random points (before,
  during and after their requests are written, while replies arrive); no
  connection is ever used again after its call was cancelled, and every
  reply read belongs to its own call.

Each test prints its counts (run with ``-s`` to see them).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Any

import pytest

from memring import (
    AsyncBackupClient,
    AsyncClient,
    Failover,
    HealthPolicy,
    MemringError,
    NodeState,
    Timeouts,
)
from memring.aio import transport as aio_transport
from memring.engine.defaults import WARMING_MARGIN
from memring.tools.local import LocalCluster

pytestmark = pytest.mark.integration

FAILOVER_TTL = 3
TIMEOUTS = Timeouts(connect=0.2, read=0.3)
HEALTH = HealthPolicy(backoff_initial=0.1, backoff_max=0.3, jitter=0)
TASKS = 24
KEYS_PER_TASK = 25


@dataclass
class Counts:
    reads: int = 0
    writes: int = 0
    failed_calls: int = 0
    stale: int = 0
    resurrected: int = 0
    lost: int = 0
    #: Nodes that went down and came back, as the clients saw them.
    state_changes: int = 0
    unexpected: list[str] = field(default_factory=list)


class Keys:
    """One task's keys and what a read of each may return besides a miss."""

    def __init__(self, name: str) -> None:
        self.keys = [f"{name}:{i}" for i in range(KEYS_PER_TASK)]
        #: key -> values a read may return (None: the key is deleted)
        self.allowed: dict[str, set[str | None]] = {k: {None} for k in self.keys}
        #: key -> values no read may return any more, and why
        self.gone: dict[str, dict[str, str]] = {k: {} for k in self.keys}
        #: key -> monotonic time of its latest acknowledged set (None: a delete)
        self.acked_at: dict[str, float | None] = dict.fromkeys(self.keys)

    def acked(self, key: str, value: str | None) -> None:
        for old in self.allowed[key] - {value}:
            if old is not None:
                self.gone[key][old] = "deleted" if value is None else "overwritten"
        self.allowed[key] = {value}
        self.acked_at[key] = None if value is None else time.monotonic()

    def judge(self, counts: Counts, key: str, got: Any) -> None:
        counts.reads += 1
        if got is None or got in self.allowed[key]:
            return
        if self.gone[key].get(got) == "deleted":
            counts.resurrected += 1
        else:
            counts.stale += 1


async def worker(client: AsyncClient, model: Keys, counts: Counts, until: float,
                 rng: random.Random) -> None:
    n = 0
    while time.monotonic() < until and n < 5000:
        n += 1
        key = rng.choice(model.keys)
        roll = rng.random()
        try:
            if roll < 0.35:
                value = f"{key}#{n}"
                model.allowed[key].add(value)  # it may land even if the call fails
                counts.writes += 1
                if await client.set(key, value, expire=60):
                    model.acked(key, value)
            elif roll < 0.45:
                await client.delete(key)
                model.acked(key, None)
            else:
                model.judge(counts, key, await client.get(key))
        except MemringError:
            counts.failed_calls += 1  # a hung node's timeout: allowed, and counted
        except Exception as exc:  # noqa: BLE001 - what reaches the caller is the finding
            counts.unexpected.append(repr(exc))
        await asyncio.sleep(0)


async def wait_state(clients: list[AsyncClient], node: Any, state: NodeState,
                     timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not all(c._engine.health.state(node) is state for c in clients):
        if time.monotonic() > deadline:
            raise AssertionError(f"{node.label} not {state.value} within {timeout}s")
        await asyncio.sleep(0.02)


def test_invariant_s_under_concurrent_tasks_with_hang_and_kill(fresh_cluster: LocalCluster) -> None:
    async def main() -> Counts:
        clients = [AsyncClient(fresh_cluster.servers,
                               failover=Failover("next", failover_ttl=FAILOVER_TTL),
                               timeouts=TIMEOUTS, health=HEALTH) for _ in range(2)]
        counts = Counts()
        models = [Keys(f"t{i}") for i in range(TASKS)]
        rng = random.Random(17)
        hung, killed = fresh_cluster[0], fresh_cluster[1]
        run_for = 6.0
        until = time.monotonic() + run_for
        tasks = [asyncio.ensure_future(worker(clients[i % 2], m, counts, until,
                                              random.Random(rng.random())))
                 for i, m in enumerate(models)]
        await asyncio.sleep(0.5)
        hung.hang()
        await asyncio.sleep(1.5)
        hung.resume()
        await asyncio.sleep(0.5)
        killed_at = time.monotonic()
        killed.kill()
        await asyncio.sleep(1.5)
        await asyncio.to_thread(killed.restart)
        await asyncio.gather(*tasks)
        # After the warming window every write acknowledged since the kill is home.
        await wait_state(clients, killed.node, NodeState.UP,
                         FAILOVER_TTL + WARMING_MARGIN + 3.0)
        await asyncio.sleep(0.3)
        for c in clients:
            for m in models:
                got = await c.get_many(m.keys)
                for key in m.keys:
                    m.judge(counts, key, got.get(key))
                    at = m.acked_at[key]
                    if key not in got and at is not None and at > killed_at:
                        counts.lost += 1
        for c in clients:
            counts.state_changes += sum(n["state_changes"]
                                        for n in c.metrics()["nodes"].values())
            await c.close()
        return counts

    counts = asyncio.run(main())
    print(counts)
    assert counts.reads > 1000 and counts.writes > 500
    assert counts.state_changes >= 4  # each client saw both faults (down, then back)
    assert counts.unexpected == []
    assert (counts.stale, counts.resurrected, counts.lost) == (0, 0, 0), counts


def test_backup_loses_no_key_with_one_node_down(fresh_cluster: LocalCluster) -> None:
    async def main() -> tuple[int, int]:
        async with AsyncBackupClient(fresh_cluster.servers, timeouts=TIMEOUTS,
                                     health=HEALTH) as client:
            keys = [f"b:{i}" for i in range(2000)]
            assert await client.set_many({k: k for k in keys}) == []
            fresh_cluster[2].kill()
            got: dict[str, Any] = {}
            for i in range(0, len(keys), 250):
                got.update(await client.get_many(keys[i:i + 250]))
            single = [await client.get(k) for k in keys[:200]]
            lost = sum(1 for k in keys if got.get(k) != k)
            return lost, sum(1 for k, v in zip(keys, single, strict=False) if v != k)

    lost, lost_single = asyncio.run(main())
    print(f"backup, one node of 4 down: {lost} of 2000 lost (get_many), {lost_single} of 200 (get)")
    assert (lost, lost_single) == (0, 0)


def test_calls_cancelled_at_random_points_never_leave_a_connection_out_of_step(
        fresh_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch) -> None:
    reused: list[int] = []
    original = aio_transport.Connection.request

    def watched(self: aio_transport.Connection, *args: Any) -> Any:
        if self.closed:
            reused.append(id(self))
        return original(self, *args)

    monkeypatch.setattr(aio_transport.Connection, "request", watched)

    async def main() -> dict[str, int]:
        stats = {"calls": 0, "cancelled": 0, "completed": 0, "wrong": 0, "errors": 0}
        async with AsyncClient(fresh_cluster.servers, max_pool_size=8) as client:
            values = {f"c:{i}": f"c:{i}=" + "x" * (i % 7 * 300) for i in range(200)}
            assert await client.set_many(values) == []
            keys = list(values)
            rng = random.Random(5)

            async def one(kind: int, batch: list[str]) -> None:
                if kind == 0:
                    got = await client.get(batch[0])
                    stats["wrong"] += got != values[batch[0]]
                elif kind == 1:
                    await client.set(batch[0], values[batch[0]])
                else:
                    many = await client.get_many(batch)
                    stats["wrong"] += many != {k: values[k] for k in batch}

            async def load(seed: int) -> None:
                r = random.Random(seed)
                for _ in range(150):
                    batch = r.sample(keys, r.choice([1, 1, 5, 40]))
                    call = asyncio.ensure_future(one(r.randrange(3), batch))
                    stats["calls"] += 1
                    if r.random() < 0.4:
                        await asyncio.sleep(r.choice([0, 0, 0.0001, 0.0005, 0.002]))
                        call.cancel()
                    try:
                        await call
                        stats["completed"] += 1
                    except asyncio.CancelledError:
                        stats["cancelled"] += 1
                    except MemringError:
                        stats["errors"] += 1

            await asyncio.gather(*(load(rng.randrange(1 << 30)) for _ in range(32)))
            closed = sum(t.closed_on_cancel for t in client._transports.values())
            stats["closed_on_cancel"] = closed
            stats["reused_after_cancel"] = len(reused)
            # Every pooled connection is open and ready for a call.
            stats["bad_idle"] = sum(1 for t in client._transports.values()
                                    for conn in t._idle if conn.closed)
            # And the client still answers right.
            check = await client.get_many(keys)
            stats["wrong"] += check != values
        return stats

    stats = asyncio.run(main())
    print(stats)
    assert stats["cancelled"] > 500 and stats["completed"] > 1000
    assert stats["closed_on_cancel"] > 100  # many were cancelled in the middle of a call
    assert stats["reused_after_cancel"] == 0
    assert stats["wrong"] == 0 and stats["errors"] == 0 and stats["bad_idle"] == 0
