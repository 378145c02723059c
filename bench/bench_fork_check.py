"""What a per-call fork check costs: ``os.getpid()`` against a plain attribute check.

Usage::

    python bench/bench_fork_check.py [--runs N] [--calls N] [--seed N] [--markdown]

A client can notice a fork in two ways. The naive one compares the pid it
was made in with ``os.getpid()`` on every call; the other is
``os.register_at_fork`` (``memring._fork``), which resets the client in the
child once, so a call checks nothing, or at most an attribute. This
measures each guard as it would sit on a call's hot path, a method of a
pool-like object that returns its connection:

``none``
    no check: the fork hook alone (what memring does).
``flag``
    ``if self._forked:``, an attribute the hook would set.
``generation``
    ``if self._generation != _fork._generation:``, a connection stamp
    compared with the module's fork counter.
``getpid``
    ``if self._pid != os.getpid():``, the naive per-call check.
``getpid (bound)``
    the same with ``os.getpid`` bound to a module global, its cheapest form.

Each run times ``--calls`` calls of every variant, in an order shuffled by
the seeded RNG (so drift of the machine spreads over all of them), after a
warm-up; ns per call is the run's time divided by the calls. The cost of a
guard is its ns per call minus ``none``'s in the same run. min / median /
max over the runs are printed; the medians are the result. For scale, a
memring ``get`` on loopback costs about 20,000 ns (bench/RESULTS.md:
51,171 ops/s on one CPU).
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

from memring import _fork

_getpid = os.getpid


class Pool:
    """The state a guard reads, and one method per guard."""

    def __init__(self) -> None:
        self._conn = object()
        self._forked = False
        self._generation = _fork.generation()
        self._pid = os.getpid()

    def _reset(self) -> None:  # never taken here: the benchmark does not fork
        raise AssertionError("forked")

    def none(self) -> object:
        return self._conn

    def flag(self) -> object:
        if self._forked:
            self._reset()
        return self._conn

    def generation(self) -> object:
        if self._generation != _fork._generation:
            self._reset()
        return self._conn

    def getpid(self) -> object:
        if self._pid != os.getpid():
            self._reset()
        return self._conn

    def getpid_bound(self) -> object:
        if self._pid != _getpid():
            self._reset()
        return self._conn


VARIANTS: dict[str, Callable[[Pool], Callable[[], object]]] = {
    "none": lambda p: p.none,
    "flag": lambda p: p.flag,
    "generation": lambda p: p.generation,
    "getpid": lambda p: p.getpid,
    "getpid (bound)": lambda p: p.getpid_bound,
}


def time_calls(call: Callable[[], object], n: int) -> float:
    """ns per call of ``call`` over ``n`` calls (the loop unrolled 10x)."""
    loops = range(n // 10)
    gc.disable()
    try:
        start = time.perf_counter_ns()
        for _ in loops:
            call(); call(); call(); call(); call()  # noqa: E702
            call(); call(); call(); call(); call()  # noqa: E702
        elapsed = time.perf_counter_ns() - start
    finally:
        gc.enable()
    return elapsed / (len(loops) * 10)


def measure(runs: int, calls: int, seed: int) -> dict[str, list[float]]:
    """ns per call of every variant, one value per run."""
    rng = random.Random(seed)
    pool = Pool()
    bound = {name: make(pool) for name, make in VARIANTS.items()}
    for call in bound.values():  # warm-up
        time_calls(call, calls // 10)
    out: dict[str, list[float]] = {name: [] for name in bound}
    for _ in range(runs):
        order = list(bound)
        rng.shuffle(order)
        for name in order:
            out[name].append(time_calls(bound[name], calls))
    return out


def report(results: dict[str, list[float]], markdown: bool) -> str:
    base = results["none"]
    rows = []
    for name, ns in results.items():
        extra = [a - b for a, b in zip(ns, base, strict=True)]
        rows.append((name, min(ns), statistics.median(ns), max(ns), statistics.median(extra)))
    if markdown:
        lines = ["| guard | ns/call min | median | max | cost over `none`, median |",
                 "|---|---:|---:|---:|---:|"]
        lines += [f"| {n} | {lo:.1f} | {med:.1f} | {hi:.1f} | {cost:+.1f} ns |"
                  for n, lo, med, hi, cost in rows]
    else:
        lines = [f"{'guard':<16}{'min':>8}{'median':>8}{'max':>8}   cost over none (median)"]
        lines += [f"{n:<16}{lo:>8.1f}{med:>8.1f}{hi:>8.1f}   {cost:+.1f} ns"
                  for n, lo, med, hi, cost in rows]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2_000_000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--markdown", action="store_true")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.calls < 10:
        parser.error("--runs must be >= 1 and --calls >= 10")
    print(f"Python {sys.version.split()[0]}, {args.runs} runs of {args.calls:,} calls, "
          f"seed {args.seed}; ns per call")
    print(report(measure(args.runs, args.calls, args.seed), args.markdown))
    return 0


if __name__ == "__main__":
    sys.exit(main())
