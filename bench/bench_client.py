"""Throughput of memring's client against its peers, on real local memcached nodes.

Usage::

    python bench/bench_client.py [--quick] [--markdown] [--runs N] [--ops N]
                                 [--batches N] [--seed N] [--pin both|same|split|none]

Needs the ``memcached`` binary on PATH and ``pylibmc`` installed
(``pip install -e '.[bench]'``).

One run starts 4 memcached processes on loopback (:class:`memring.tools.local.LocalCluster`,
ports chosen at run time, stopped by PID) and measures, in a single thread,
every client of :data:`CLIENTS` on the same cluster:

``get``
    a hit on a key the client stored itself; ops/s.
``set``
    a 100-byte value, acknowledged by the server; ops/s.
``get_many``
    100 keys spread across the 4 nodes (all hits); reported as keys/s.

Every client waits for the server's reply to a write: pymemcache with
``default_noreply=False``, pylibmc by default (its ``noreply`` behaviour is
not set), memring always. The single-node pymemcache ``Client`` talks to one
node only; it is the floor a cluster client pays on top of. Next to it,
:class:`RoutedClients` (one bare pymemcache ``Client`` per node, keys routed
by memring's ring) shows what spreading round trips over 4 server processes
costs by itself. The peers run with their default options, so pymemcache
has no socket timeouts; memring always has its (connect 0.5 s, read 1 s),
set on the socket as kernel timeouts, which cost nothing per call.

Placement (``--pin``, see :func:`pin`): left to the scheduler, a small VM
flips between "same CPU" and "another CPU" for each round trip, and
throughput swings 2-3x mid-run, so every run pins its processes. By default
the whole benchmark runs twice: with client and servers on one CPU
(``same``: a round trip is a context switch, and each client's own CPU cost
decides), then with the servers on another CPU (``split``: every round trip
pays a cross-CPU wake-up, a little like a network hop, and servers answer in
parallel). Each goal of :data:`GOALS` is judged in the placement it is about.

Keys, values and the order of operations come from one seeded RNG, so every
client does the same work. Each client first stores all its keys (the
warm-up, which also checks that get and get_many read them back), then the
runs follow; inside a run the clients take turns, in a seeded shuffled
order, op by op, so that drift of the machine spreads over all of them. Each
row reports the min / median / max over the runs; the ratios use the medians.

Adding a client is one entry in :data:`CLIENTS`: a name and a factory that
takes the running :class:`LocalCluster` and returns an object with
``get``, ``set`` and ``get_many`` (or pylibmc's ``get_multi``).
"""

from __future__ import annotations

import argparse
import gc
import os
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import pylibmc
from placement import pin  # bench/placement.py: run as python bench/bench_client.py
from pymemcache.client.base import Client as PymemcacheClient
from pymemcache.client.hash import HashClient

import memring
from memring.tools.local import LocalCluster

NODES = 4
VALUE_SIZE = 100
BATCH = 100
OPS = ("get", "set", "get_many")
UNITS = {"get": "ops/s", "set": "ops/s", "get_many": "keys/s"}

Factory = Callable[[LocalCluster], Any]


def _addresses(cluster: LocalCluster) -> list[tuple[str, int]]:
    return [p.address for p in cluster.processes]


class RoutedClients:
    """One bare pymemcache ``Client`` per node, keys routed by memring's ring.

    Not a usable cluster client (no timeouts, no failover, no key checks): it
    shows what a round trip to one of 4 nodes costs on its own, next to the
    single-node ``Client``, which always talks to the same process.
    """

    def __init__(self, cluster: LocalCluster) -> None:
        self.ring = memring.HashRing(cluster.servers)
        self.clients = {p.node: PymemcacheClient(p.address, default_noreply=False)
                        for p in cluster.processes}

    def get(self, key: str) -> Any:
        return self.clients[self.ring.node_for(key)].get(key)

    def set(self, key: str, value: bytes) -> bool:
        return bool(self.clients[self.ring.node_for(key)].set(key, value))

    def get_many(self, keys: list[str]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for node, group in self.ring.group(keys).items():
            out.update(self.clients[node].get_many(group))
        return out

    def close(self) -> None:
        for c in self.clients.values():
            c.close()


#: (name, factory) for every client measured. The first entry is memring's
#: client, which the ratios are computed for.
CLIENTS: list[tuple[str, Factory]] = [
    ("memring Client", lambda c: memring.Client(c.servers)),
    ("pymemcache Client (1 node)",
     lambda c: PymemcacheClient(c[0].address, default_noreply=False)),
    ("pymemcache Client per node, routed", RoutedClients),
    ("pymemcache HashClient",
     lambda c: HashClient(_addresses(c), use_pooling=False, default_noreply=False)),
    ("pymemcache HashClient (use_pooling=True)",
     lambda c: HashClient(_addresses(c), use_pooling=True, default_noreply=False)),
    ("pylibmc Client",
     lambda c: pylibmc.Client(c.servers, behaviors={"ketama_weighted": True,
                                                    "tcp_nodelay": True})),
]
if hasattr(memring, "BackupClient"):
    CLIENTS.append(("memring BackupClient", lambda c: memring.BackupClient(c.servers)))

#: The peers memring's medians are divided by: (label, client name).
RATIOS = [
    ("memring / pymemcache Client", "pymemcache Client (1 node)"),
    ("memring / pymemcache per node", "pymemcache Client per node, routed"),
    ("memring / HashClient", "pymemcache HashClient"),
    ("memring / pylibmc", "pylibmc Client"),
]

#: The issues' goals: (client, op, peer, minimum ratio of medians, placement
#: it is judged in). The client's CPU cost is judged with everything on one
#: CPU, where a round trip is cheap and that cost decides. BackupClient's
#: latency goals (set at most 1.3x the single-copy client's latency, get
#: equal, i.e. within the 5% that medians move from run to run) are judged
#: with the servers on their own CPU: two servers sharing the client's CPU
#: cannot answer at the same time, as two machines do.
GOALS = [
    ("memring Client", "get", "pymemcache Client (1 node)", 0.9, "same"),
    ("memring Client", "get", "pymemcache HashClient", 1.5, "same"),
    ("memring Client", "set", "pymemcache Client (1 node)", 0.9, "same"),
    ("memring Client", "set", "pymemcache HashClient", 1.5, "same"),
    ("memring Client", "get_many", "pymemcache HashClient", 8.0, "same"),
    ("memring Client", "get_many", "pylibmc Client", 0.5, "same"),
    ("memring BackupClient", "set", "memring Client", 1 / 1.3, "split"),
    ("memring BackupClient", "get", "memring Client", 0.95, "split"),
]


@dataclass(frozen=True)
class Config:
    runs: int
    ops: int        # single-key ops per client, per op, per run
    batches: int    # get_many calls per client per run
    keys: int       # distinct keys each client stores
    seed: int


FULL = Config(runs=7, ops=20000, batches=200, keys=10000, seed=20240611)
QUICK = Config(runs=2, ops=300, batches=10, keys=500, seed=20240611)


@dataclass
class Workload:
    """Everything random, drawn once from the seed and shared by all clients."""

    keys: list[str]
    values: list[bytes]
    get_order: list[int]
    set_order: list[int]
    batches: list[list[str]]
    client_orders: list[list[int]] = field(default_factory=list)

    @classmethod
    def make(cls, cfg: Config, n_clients: int) -> Workload:
        rng = random.Random(cfg.seed)
        keys = [f"session:{rng.getrandbits(64):016x}" for _ in range(cfg.keys)]
        values = [rng.randbytes(VALUE_SIZE) for _ in range(cfg.keys)]
        get_order = [rng.randrange(cfg.keys) for _ in range(cfg.ops)]
        set_order = [rng.randrange(cfg.keys) for _ in range(cfg.ops)]
        batches = [rng.sample(keys, BATCH) for _ in range(cfg.batches)]
        orders = []
        for _ in range(cfg.runs):
            order = list(range(n_clients))
            rng.shuffle(order)
            orders.append(order)
        return cls(keys, values, get_order, set_order, batches, orders)


class Ops:
    """One client's bound ``get``/``set``/``get_many``, and its measurements."""

    def __init__(self, name: str, client: Any) -> None:
        self.name = name
        self.client = client
        self.get = client.get
        self.set = client.set
        self.get_many = getattr(client, "get_many", None) or client.get_multi
        self.rates: dict[str, list[float]] = {op: [] for op in OPS}

    def close(self) -> None:
        for method in ("close", "disconnect_all"):
            fn = getattr(self.client, method, None)
            if fn is not None:
                fn()
                return


def warm_up(ops: Ops, w: Workload) -> None:
    """Store every key, then read it all back once (and check it)."""
    for k, v in zip(w.keys, w.values, strict=True):
        if not ops.set(k, v):
            raise RuntimeError(f"{ops.name}: set({k!r}) was not stored")
    expected = dict(zip(w.keys, w.values, strict=True))
    for k in w.keys[:200]:
        if ops.get(k) != expected[k]:
            raise RuntimeError(f"{ops.name}: get({k!r}) did not read back")
    for batch in w.batches:
        got = ops.get_many(batch)
        if len(got) != len(batch) or any(got[k] != expected[k] for k in batch):
            raise RuntimeError(f"{ops.name}: get_many returned {len(got)} of {len(batch)} keys")


def measure(ops: Ops, op: str, w: Workload) -> float:
    """One timed pass of ``op``; returns ops/s (keys/s for get_many)."""
    keys, values = w.keys, w.values
    gc.collect()
    if op == "get":
        get = ops.get
        todo = [keys[i] for i in w.get_order]
        t0 = time.perf_counter()
        for k in todo:
            get(k)
        elapsed = time.perf_counter() - t0
        return len(todo) / elapsed
    if op == "set":
        set_ = ops.set
        todo2 = [(keys[i], values[i]) for i in w.set_order]
        t0 = time.perf_counter()
        for k, v in todo2:
            set_(k, v)
        elapsed = time.perf_counter() - t0
        return len(todo2) / elapsed
    get_many = ops.get_many
    t0 = time.perf_counter()
    for batch in w.batches:
        get_many(batch)
    elapsed = time.perf_counter() - t0
    return len(w.batches) * BATCH / elapsed


def run(cfg: Config, clients: Sequence[tuple[str, Factory]],
        log: Callable[[str], None], pin_mode: str = "same") -> tuple[list[Ops], str]:
    w = Workload.make(cfg, len(clients))
    saved = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    with LocalCluster(NODES) as cluster:
        placement = pin(cluster, pin_mode)
        log(placement)
        all_ops = [Ops(name, factory(cluster)) for name, factory in clients]
        try:
            for ops in all_ops:
                warm_up(ops, w)
            for r in range(cfg.runs):
                t0 = time.perf_counter()
                for op in OPS:
                    for i in w.client_orders[r]:
                        all_ops[i].rates[op].append(measure(all_ops[i], op, w))
                log(f"run {r + 1}/{cfg.runs}: {time.perf_counter() - t0:.1f}s")
        finally:
            for ops in all_ops:
                ops.close()
            if saved is not None:
                os.sched_setaffinity(0, saved)  # the next placement starts from all CPUs
    return all_ops, placement


# -- reporting ----------------------------------------------------------------


def _median(ops: Ops, op: str) -> float:
    return statistics.median(ops.rates[op])


def _fmt(x: float) -> str:
    return f"{x:,.0f}"


def _cell(ops: Ops, op: str) -> str:
    r = ops.rates[op]
    return f"{_fmt(min(r))} / **{_fmt(statistics.median(r))}** / {_fmt(max(r))}"


def _ratio(by_name: dict[str, Ops], client: str, op: str, peer: str) -> float | None:
    if client not in by_name or peer not in by_name:
        return None
    return _median(by_name[client], op) / _median(by_name[peer], op)


def report(all_ops: list[Ops], cfg: Config, markdown: bool, seconds: float,
           placement: str) -> str:
    """The tables of one placement's run."""
    by_name = {o.name: o for o in all_ops}
    ours = all_ops[0].name
    lines: list[str] = []
    if markdown:
        lines += [
            f"{NODES} local memcached nodes, 1 thread, {VALUE_SIZE}-byte values, acknowledged "
            f"writes; {cfg.runs} runs of {cfg.ops} get + {cfg.ops} set + {cfg.batches} "
            f"get_many of {BATCH} keys per client; seed {cfg.seed}; {placement}; "
            f"min / **median** / max; {seconds:.0f} s.",
            "",
            "| client | get (ops/s) | set (ops/s) | get_many x100 (keys/s) |",
            "|---|---:|---:|---:|",
        ]
        for o in all_ops:
            lines.append(f"| {o.name} | " + " | ".join(_cell(o, op) for op in OPS) + " |")
        lines += ["", "| ratio of medians | get | set | get_many |", "|---|---:|---:|---:|"]
        for label, peer in RATIOS:
            if peer in by_name:
                cells = [f"{_ratio(by_name, ours, op, peer):.2f}x" for op in OPS]
                lines.append(f"| {label} | " + " | ".join(cells) + " |")
        return "\n".join(lines)
    width = max(len(o.name) for o in all_ops)
    lines.append(f"{'client':<{width}}  " + "  ".join(
        f"{op + ' ' + UNITS[op] + ' min/med/max':>36}" for op in OPS))
    for o in all_ops:
        lines.append(f"{o.name:<{width}}  " + "  ".join(
            f"{_cell(o, op).replace('**', ''):>36}" for op in OPS))
    lines.append("")
    for label, peer in RATIOS:
        if peer in by_name:
            lines.append(f"{label:<28} " + "  ".join(
                f"{op} {_ratio(by_name, ours, op, peer):.2f}x" for op in OPS))
    lines.append(f"{placement}; {seconds:.0f} s")
    return "\n".join(lines)


def goals(runs: dict[str, list[Ops]], markdown: bool) -> str:
    """Every goal, in every placement run; the verdict is the one of its own placement."""
    modes = list(runs)
    by_mode = {m: {o.name: o for o in ops} for m, ops in runs.items()}
    lines = []
    if markdown:
        lines += ["| goal | " + " | ".join(modes) + " | judged in | verdict |",
                  "|---|" + "---:|" * len(modes) + "---|---|"]
    for client, op, peer, want, judged in GOALS:
        got = {m: _ratio(by_mode[m], client, op, peer) for m in modes}
        if all(g is None for g in got.values()):
            continue
        cells = [f"{g:.3f}x" if g is not None else "-" for g in got.values()]
        mine = got.get(judged)
        verdict = "not run" if mine is None else "met" if mine >= want else "NOT met"
        goal = f"{client} {op} >= {want:.3g}x {peer}"
        if markdown:
            lines.append(f"| {goal} | " + " | ".join(cells) + f" | {judged} | {verdict} |")
        else:
            lines.append(f"{goal}: " + ", ".join(
                f"{m} {c}" for m, c in zip(modes, cells, strict=True))
                + f"; judged in {judged}: {verdict}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a fast smoke run (a few seconds)")
    p.add_argument("--markdown", action="store_true", help="print markdown tables")
    p.add_argument("--runs", type=int, help="timed runs (default 7)")
    p.add_argument("--ops", type=int, help="get and set calls per client per run")
    p.add_argument("--batches", type=int, help="get_many calls per client per run")
    p.add_argument("--seed", type=int)
    p.add_argument("--pin", choices=("both", "same", "split", "none"), default="both",
                   help="CPU placement of client and servers: both = a run with 'same', "
                        "then one with 'split' (default; see pin())")
    args = p.parse_args(argv)
    base = QUICK if args.quick else FULL
    cfg = Config(
        runs=args.runs or base.runs, ops=args.ops or base.ops,
        batches=args.batches or base.batches, keys=base.keys,
        seed=base.seed if args.seed is None else args.seed,
    )

    def log(msg: str) -> None:
        print(msg, file=sys.stderr, flush=True)

    log(f"clients: {', '.join(name for name, _ in CLIENTS)}")
    runs: dict[str, list[Ops]] = {}
    for mode in ("same", "split") if args.pin == "both" else (args.pin,):
        t0 = time.perf_counter()
        runs[mode], placement = run(cfg, CLIENTS, log, mode)
        print(report(runs[mode], cfg, args.markdown, time.perf_counter() - t0, placement))
        print()
    print(goals(runs, args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
