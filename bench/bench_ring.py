"""Ring lookups per second and load balance: memring against its peers, in one run.

For N = 3, 10 and 100 equal-weight nodes (``10.0.0.{i}:11211``) and one set
of random session-like keys (fixed seed), measure:

- lookups/s of the key -> node call on pre-generated ``str`` keys: a warm-up
  pass, then several timed runs, taking turns between implementations so
  that background load hits them alike; min/median/max are reported. The
  clock is this process's CPU time (``--clock wall`` for wall time);
- peak/mean load: the busiest node's key count over the average, on the
  whole key set.

Implementations: memring ``HashRing`` (murmur3 with the default vnodes, and
ketama), uhashring ``HashRing`` (default, and ``hash_fn="ketama"``), and
pymemcache's ``RendezvousHash`` (what ``pymemcache.HashClient`` uses, with its
pure-Python murmur3_32; and the same class given mmh3's C murmur3_32, which
places every key identically). Slow implementations are timed on a prefix
of the key set sized to take about ``--run-seconds`` per run.

    python bench/bench_ring.py
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import random
import statistics
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from importlib.metadata import version

import mmh3
from pymemcache.client.rendezvous import RendezvousHash
from uhashring import HashRing as UHashRing

from memring.hashring import DEFAULT_VNODES, HashRing

Lookup = Callable[[str], Hashable]

SIZES = (3, 10, 100)
BASELINE = "uhashring"
MEMRING = "memring murmur3"


@dataclass(frozen=True)
class Result:
    nodes: int
    name: str
    keys_per_run: int
    rates: list[float]
    peak_to_mean: float

    @property
    def median(self) -> float:
        return statistics.median(self.rates)


def mmh3_murmur3_32(key: str, seed: int) -> int:
    """mmh3's C MurmurHash3_x86_32, unsigned: equal to pymemcache's murmur3_32 on ASCII."""
    return mmh3.hash(key, seed, signed=False)


def implementations(nodes: list[str]) -> dict[str, Lookup]:
    return {
        MEMRING: HashRing(nodes).node_for,
        "memring ketama": HashRing(nodes, hash="ketama").node_for,
        BASELINE: UHashRing(nodes).get_node,
        "uhashring ketama": UHashRing(nodes, hash_fn="ketama").get_node,
        "pymemcache rendezvous": RendezvousHash(list(nodes)).get_node,
        "pymemcache rendezvous + mmh3": RendezvousHash(
            list(nodes), hash_function=mmh3_murmur3_32
        ).get_node,
    }


def make_keys(count: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [f"session:{rng.getrandbits(64):016x}" for _ in range(count)]


CLOCKS: dict[str, Callable[[], float]] = {"cpu": time.process_time, "wall": time.perf_counter}


def timed_pass(lookup: Lookup, keys: Sequence[str], clock: Callable[[], float]) -> float:
    """Lookups per second over one pass (map into a zero-length deque: no per-key Python loop)."""
    gc.disable()
    try:
        start = clock()
        deque(map(lookup, keys), maxlen=0)
        elapsed = clock() - start
    finally:
        gc.enable()
    return len(keys) / elapsed


def warm_up(lookup: Lookup, keys: list[str], run_seconds: float, clock: Callable[[], float]) -> int:
    """Warm up; return how many keys one timed run of about ``run_seconds`` takes."""
    probe = keys[: min(len(keys), 2_000)]
    rate = timed_pass(lookup, probe, clock)
    count = max(len(probe), min(len(keys), int(rate * run_seconds)))
    timed_pass(lookup, keys[:count], clock)
    return count


def peak_to_mean(lookup: Lookup, keys: list[str], n: int) -> float:
    counts = Counter(map(lookup, keys))
    assert sum(counts.values()) == len(keys)
    return max(counts.values()) / (len(keys) / n)


def run(
    sizes: Sequence[int],
    keys: list[str],
    runs: int,
    run_seconds: float,
    clock: Callable[[], float],
) -> list[Result]:
    results = []
    for n in sizes:
        nodes = [f"10.0.0.{i}:11211" for i in range(1, n + 1)]
        impls = implementations(nodes)
        # The mmh3 variant must place exactly as pymemcache's own rendezvous does.
        sample = keys[:500]
        pure, fast = impls["pymemcache rendezvous"], impls["pymemcache rendezvous + mmh3"]
        assert [pure(k) for k in sample] == [fast(k) for k in sample]
        load_of = {name: name for name in impls}
        load_of["pymemcache rendezvous"] = "pymemcache rendezvous + mmh3"
        loads = {name: peak_to_mean(impls[name], keys, n) for name in set(load_of.values())}
        counts = {name: warm_up(lookup, keys, run_seconds, clock) for name, lookup in impls.items()}
        rates: dict[str, list[float]] = {name: [] for name in impls}
        for _ in range(runs):
            for name, lookup in impls.items():
                rates[name].append(timed_pass(lookup, keys[: counts[name]], clock))
        for name in impls:
            results.append(Result(n, name, counts[name], rates[name], loads[load_of[name]]))
    return results


def fmt_rate(rate: float) -> str:
    return f"{rate:,.0f}"


def print_table(results: list[Result]) -> None:
    by_key = {(r.nodes, r.name): r for r in results}
    print(
        "| N | implementation | lookups/s min | lookups/s median | lookups/s max "
        f"| keys/run | peak/mean | median vs {BASELINE} |"
    )
    print("|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        base = by_key[(r.nodes, BASELINE)]
        print(
            f"| {r.nodes} | {r.name} | {fmt_rate(min(r.rates))} | {fmt_rate(r.median)} "
            f"| {fmt_rate(max(r.rates))} | {r.keys_per_run:,} | {r.peak_to_mean:.3f} "
            f"| {r.median / base.median:.2f}x |"
        )
    print()
    for n in sorted({r.nodes for r in results}):
        mine, base = by_key[(n, MEMRING)], by_key[(n, BASELINE)]
        print(
            f"- N={n}: {MEMRING} / {BASELINE} = {mine.median / base.median:.2f}x median/median "
            f"({min(mine.rates) / max(base.rates):.2f}x worst run / best run)"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=200_000, help="key set size")
    parser.add_argument("--seed", type=int, default=20240601, help="key seed")
    parser.add_argument("--runs", type=int, default=7, help="timed runs per implementation")
    parser.add_argument(
        "--run-seconds", type=float, default=0.25, help="target length of one timed run"
    )
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="cpu", help="timer")
    parser.add_argument(
        "--sizes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=list(SIZES),
        help="comma-separated node counts",
    )
    args = parser.parse_args(argv)

    packages = ", ".join(
        f"{p} {version(p)}" for p in ("memring", "mmh3", "uhashring", "pymemcache")
    )
    print(
        f"python {platform.python_version()} ({platform.python_implementation()}) on "
        f"{platform.machine()}, {os.cpu_count()} CPUs; {packages}"
    )
    print(
        f"{args.keys:,} str keys, seed {args.seed}; {args.runs} timed runs after a warm-up, "
        f"{args.clock} clock; memring vnodes={DEFAULT_VNODES}; "
        f"peak/mean over all {args.keys:,} keys"
    )
    print()
    keys = make_keys(args.keys, args.seed)
    print_table(run(args.sizes, keys, args.runs, args.run_seconds, CLOCKS[args.clock]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
