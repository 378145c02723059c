"""Throughput of memring's AsyncClient against the asyncio peers, on real local memcached.

Usage::

    python bench/bench_async.py [--quick] [--markdown] [--runs N] [--ops N]
                                [--tasks 1,32,256] [--seed N] [--pin same|split|none]

Needs the ``memcached`` binary on PATH and the peers installed
(``pip install -e '.[bench]'``: emcache, aiomcache).

One process starts 4 memcached processes on loopback (ports chosen at run
time, stopped by PID), pins itself and them (``--pin``, default ``same``:
client and servers on one CPU, so each client's own CPU cost decides, as
``bench_client.py`` judges CPU cost), and measures on one event loop:

``memring``
    :class:`memring.AsyncClient` over the 4 nodes (defaults: failover,
    versioned values, timeouts on every call).
``emcache``
    emcache's cluster client over the same 4 nodes (its own hashing).
``aiomcache``
    aiomcache's client: it talks to one node, so it is measured on one node
    (``aiomcache-1``) and, for the 4-node case, as one client per node with
    keys routed by memring's ring (``aiomcache-routed``).

Every peer runs with its defaults (emcache and aiomcache pool 2 connections
per node; memring's pool grows to 64). Each operation is run at 1, 32 and
256 concurrent tasks (``--tasks``): ``get`` (a hit on a 100-byte value),
``set`` (100 bytes, acknowledged) and ``get_many`` of 100 keys spread over
the nodes (reported as keys/s). Keys, values and orders come from one
seeded RNG; every client first stores its keys and checks it reads them
back; then in each run the clients take turns in a shuffled order. Each
row gives min / median / max over the runs, and the ratios use medians.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiomcache
import emcache
from placement import pin  # bench/placement.py: run as python bench/bench_async.py

import memring
from memring.tools.local import LocalCluster

NODES = 4
VALUE_SIZE = 100
BATCH = 100
OPS = ("get", "set", "get_many")
UNITS = {"get": "ops/s", "set": "ops/s", "get_many": "keys/s"}
#: The goals of the issue, at 32 tasks: (op, peer, ratio memring/peer must reach).
GOALS = (("get", "emcache", 1.0), ("get", "aiomcache-1", 1.5), ("set", "emcache", 1.0),
         ("set", "aiomcache-1", 1.5), ("get_many", "emcache", 1.0))


@dataclass(frozen=True)
class Config:
    runs: int
    ops: int       # single-key calls per client, op and task count, per run
    batches: int   # get_many calls per client and task count, per run
    keys: int
    tasks: tuple[int, ...]
    seed: int


FULL = Config(runs=5, ops=6000, batches=150, keys=5000, tasks=(1, 32, 256), seed=20241117)
QUICK = Config(runs=2, ops=600, batches=20, keys=800, tasks=(1, 32), seed=20241117)


# -- the clients, behind one small interface ------------------------------------------
class Peer:
    """``get``/``set``/``get_many`` of one client, as coroutines on bytes keys."""

    name: str

    async def get(self, key: bytes) -> Any: ...
    async def set(self, key: bytes, value: bytes) -> Any: ...
    async def get_many(self, keys: list[bytes]) -> dict[bytes, Any]: ...
    async def close(self) -> None: ...


class Memring(Peer):
    name = "memring"

    def __init__(self, cluster: LocalCluster) -> None:
        self.client = memring.AsyncClient(cluster.servers)
        self.get = self.client.get  # type: ignore[method-assign]
        self.get_many = self.client.get_many  # type: ignore[method-assign]
        self.close = self.client.close  # type: ignore[method-assign]

    async def set(self, key: bytes, value: bytes) -> Any:
        return await self.client.set(key, value)


class Emcache(Peer):
    name = "emcache"

    @classmethod
    async def make(cls, cluster: LocalCluster) -> Emcache:
        self = cls()
        self.client = await emcache.create_client(
            [emcache.MemcachedHostAddress(n.host, n.port) for n in cluster.nodes])
        return self

    async def get(self, key: bytes) -> Any:
        item = await self.client.get(key)
        return None if item is None else item.value

    async def set(self, key: bytes, value: bytes) -> Any:
        await self.client.set(key, value)
        return True

    async def get_many(self, keys: list[bytes]) -> dict[bytes, Any]:
        return {k: item.value for k, item in (await self.client.get_many(keys)).items()}

    async def close(self) -> None:
        await self.client.close()


class Aiomcache(Peer):
    """aiomcache on one node, or one client per node routed by memring's ring."""

    def __init__(self, cluster: LocalCluster, routed: bool) -> None:
        nodes = cluster.nodes if routed else cluster.nodes[:1]
        self.name = "aiomcache-routed" if routed else "aiomcache-1"
        self.ring = memring.HashRing(nodes)
        self.clients = {n: aiomcache.Client(n.host, n.port) for n in nodes}
        self.single = None if routed else self.clients[nodes[0]]

    def _for(self, key: bytes) -> Any:
        return self.single or self.clients[self.ring.node_for(key)]

    async def get(self, key: bytes) -> Any:
        return await self._for(key).get(key)

    async def set(self, key: bytes, value: bytes) -> Any:
        return await self._for(key).set(key, value)

    async def get_many(self, keys: list[bytes]) -> dict[bytes, Any]:
        if self.single is not None:
            values = await self.single.multi_get(*keys)
            return {k: v for k, v in zip(keys, values, strict=True) if v is not None}
        groups = self.ring.group(keys)
        replies = await asyncio.gather(*(self.clients[n].multi_get(*ks)
                                         for n, ks in groups.items()))
        return {k: v for ks, vs in zip(groups.values(), replies, strict=True)
                for k, v in zip(ks, vs, strict=True) if v is not None}

    async def close(self) -> None:
        for c in self.clients.values():
            await c.close()


async def make_peers(cluster: LocalCluster) -> list[Peer]:
    return [Memring(cluster), await Emcache.make(cluster), Aiomcache(cluster, routed=False),
            Aiomcache(cluster, routed=True)]


# -- the workload ----------------------------------------------------------------------
@dataclass
class Workload:
    keys: list[bytes]
    values: list[bytes]
    order: list[int]
    batches: list[list[bytes]]

    @classmethod
    def make(cls, cfg: Config) -> Workload:
        rng = random.Random(cfg.seed)
        keys = [b"session:%016x" % rng.getrandbits(64) for _ in range(cfg.keys)]
        values = [rng.randbytes(VALUE_SIZE) for _ in range(cfg.keys)]
        order = [rng.randrange(cfg.keys) for _ in range(cfg.ops)]
        batches = [rng.sample(keys, BATCH) for _ in range(cfg.batches)]
        return cls(keys, values, order, batches)

    def of(self, peer: Peer) -> Workload:
        """The same work on keys of ``peer``'s own (each client stores its own format)."""
        prefix = peer.name.encode() + b":"
        return Workload([prefix + k for k in self.keys], self.values, self.order,
                        [[prefix + k for k in b] for b in self.batches])


async def warm_up(peer: Peer, w: Workload) -> None:
    """Store every key; check that get and get_many read them back."""
    expected = dict(zip(w.keys, w.values, strict=True))
    for i in range(0, len(w.keys), 200):
        await asyncio.gather(*(peer.set(k, expected[k]) for k in w.keys[i:i + 200]))
    for k in w.keys[:100]:
        if await peer.get(k) != expected[k]:
            raise RuntimeError(f"{peer.name}: get({k!r}) did not read back")
    for batch in w.batches[:5]:
        got = await peer.get_many(batch)
        if got != {k: expected[k] for k in batch}:
            raise RuntimeError(f"{peer.name}: get_many returned {len(got)} of {len(batch)}")


@dataclass
class Pass:
    """One timed pass: its rate, and microseconds per unit of wall time and of
    this process's CPU time (the client's; with client and servers on one CPU,
    the rest of the wall time is the servers', the kernel's for them, and idle)."""

    rate: float
    wall_us: float
    client_us: float


async def measure(peer: Peer, op: str, tasks: int, w: Workload) -> Pass:
    """One timed pass of ``op`` split over ``tasks`` concurrent tasks."""
    if op == "get_many":
        work: list[Callable[[], Awaitable[Any]]] = [
            (lambda b=b: peer.get_many(b)) for b in w.batches]
        units = BATCH
    elif op == "get":
        work = [(lambda k=w.keys[i]: peer.get(k)) for i in w.order]
        units = 1
    else:
        work = [(lambda k=w.keys[i], v=w.values[i]: peer.set(k, v)) for i in w.order]
        units = 1
    shares = [work[t::tasks] for t in range(tasks)]

    async def one(share: list[Callable[[], Awaitable[Any]]]) -> None:
        for call in share:
            await call()

    gc.collect()
    c0 = time.process_time()
    t0 = time.perf_counter()
    await asyncio.gather(*(one(s) for s in shares))
    wall = time.perf_counter() - t0
    n = len(work) * units
    return Pass(n / wall, wall / n * 1e6, (time.process_time() - c0) / n * 1e6)


async def bench(cfg: Config, log: Callable[[str], None], pin_mode: str
                ) -> tuple[dict[tuple[str, str, int], list[Pass]], str]:
    base = Workload.make(cfg)
    rates: dict[tuple[str, str, int], list[Pass]] = {}
    rng = random.Random(cfg.seed + 1)
    with LocalCluster(NODES) as cluster:
        placement = pin(cluster, pin_mode)
        log(placement)
        peers = await make_peers(cluster)
        work = {p.name: base.of(p) for p in peers}
        try:
            for p in peers:
                await warm_up(p, work[p.name])
            for r in range(cfg.runs):
                t0 = time.perf_counter()
                for tasks in cfg.tasks:
                    for op in OPS:
                        order = list(peers)
                        rng.shuffle(order)
                        for p in order:
                            rate = await measure(p, op, tasks, work[p.name])
                            rates.setdefault((p.name, op, tasks), []).append(rate)
                log(f"run {r + 1}/{cfg.runs}: {time.perf_counter() - t0:.1f}s")
        finally:
            for p in peers:
                await p.close()
    return rates, placement


# -- the report ----------------------------------------------------------------------------
def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def report(passes: dict[tuple[str, str, int], list[Pass]], cfg: Config, placement: str,
           seconds: float, markdown: bool) -> str:
    rates = {k: [p.rate for p in ps] for k, ps in passes.items()}
    found = set(name for name, _, _ in rates)
    names = [n for n in ("memring", "emcache", "aiomcache-1", "aiomcache-routed") if n in found]
    versions = (f"python {platform.python_version()}, memring {memring.__version__}, "
                f"emcache {_version('emcache')}, aiomcache {_version('aiomcache')}")
    lines = [f"{versions}; {NODES} memcached nodes on loopback; {placement}; "
             f"{cfg.runs} runs, {cfg.ops} single-key calls and {cfg.batches} get_many of "
             f"{BATCH} keys per client, op and task count; {seconds:.0f} s", ""]
    head = ["op", "tasks", *names, *(f"memring/{n}" for n in names[1:])]
    rows = []
    for op in OPS:
        for tasks in cfg.tasks:
            cells = []
            med = {}
            for n in names:
                xs = rates[(n, op, tasks)]
                med[n] = statistics.median(xs)
                cells.append(f"{_fmt(med[n])} ({_fmt(min(xs))}-{_fmt(max(xs))})")
            ratios = [f"{med['memring'] / med[n]:.2f}x" for n in names[1:]]
            rows.append([f"{op} ({UNITS[op]})", str(tasks), *cells, *ratios])
    if markdown:
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
        for r in [head, *rows]:
            lines.append("  ".join(x.rjust(wd) for x, wd in zip(r, widths, strict=True)))
    lines += ["", "cells: median (min-max) over the runs", ""]
    if 32 in cfg.tasks:
        lines += _cpu_split(passes, names, markdown)
    if 32 in cfg.tasks:
        for op, peer, goal in GOALS:
            ratio = (statistics.median(rates[("memring", op, 32)])
                     / statistics.median(rates[(peer, op, 32)]))
            verdict = "met" if ratio >= goal else "NOT met"
            lines.append(f"- goal {op} at 32 tasks >= {goal:g}x {peer}: {ratio:.2f}x, {verdict}")
    return "\n".join(lines) + "\n"


def _cpu_split(passes: dict[tuple[str, str, int], list[Pass]], names: list[str],
               markdown: bool) -> list[str]:
    """Where the wall time of a unit goes at 32 tasks: the client's CPU and the rest.

    The last column bounds what a client could reach against ``aiomcache-1``
    even at no CPU cost of its own: aiomcache-1's wall time over this
    client's rest (the servers' work it causes, and idle).
    """
    head = ["op", "client", "wall us/unit", "client CPU us/unit", "rest us/unit",
            "bound vs aiomcache-1 at 0 client CPU"]
    rows = []
    for op in OPS:
        ref = statistics.median(p.wall_us for p in passes[("aiomcache-1", op, 32)])
        for n in names:
            ps = passes[(n, op, 32)]
            wall = statistics.median(p.wall_us for p in ps)
            cpu = statistics.median(p.client_us for p in ps)
            rest = statistics.median(p.wall_us - p.client_us for p in ps)
            rows.append([op, n, f"{wall:.2f}", f"{cpu:.2f}", f"{rest:.2f}",
                         f"{ref / rest:.2f}x" if rest > 0 else "-"])
    out = ["At 32 tasks, per unit (op or key), medians over the runs:", ""]
    if markdown:
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|")
        out += ["| " + " | ".join(r) + " |" for r in rows]
    else:
        widths = [max(len(x) for x in col) for col in zip(head, *rows, strict=True)]
        out += ["  ".join(x.rjust(wd) for x, wd in zip(r, widths, strict=True))
                for r in [head, *rows]]
    return [*out, ""]


def _version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(module)
    except PackageNotFoundError:
        return "?"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short smoke run")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--ops", type=int)
    parser.add_argument("--tasks", type=lambda s: tuple(int(x) for x in s.split(",")))
    parser.add_argument("--seed", type=int)
    parser.add_argument("--pin", choices=("same", "split", "none"), default="same")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else FULL
    cfg = Config(runs=args.runs or base.runs, ops=args.ops or base.ops,
                 batches=base.batches, keys=base.keys, tasks=args.tasks or base.tasks,
                 seed=args.seed if args.seed is not None else base.seed)

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    t0 = time.perf_counter()
    try:
        rates, placement = asyncio.run(bench(cfg, log, args.pin))
    finally:
        if saved is not None:
            os.sched_setaffinity(0, saved)
    print(report(rates, cfg, placement, time.perf_counter() - t0, args.markdown), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
