"""Sweep the murmur3 virtual-node count: peak/mean load over random keys.

For each vnode count, build the ring for N=10 and N=100 equal-weight nodes
named ``10.0.0.{i}:11211`` and place 1,000,000 random keys (fixed seed).
peak/mean is the busiest node's key count over the average count. The
script reports the smallest count meeting peak/mean <= 1.10 at N=10 and
<= 1.15 at N=100, and the smallest from which every larger swept count
meets both too.

Placement is counted per ring point: with the key hashes sorted once, the
keys a point owns are those between the previous point (exclusive) and it
(inclusive), found with two bisections. This equals ``HashRing.node_for``,
which the script checks on a sample of keys for every ring it builds.

``--name-sets S`` repeats the sweep for S-1 further node-name sets
(``10.{s}.0.{i}:11211``) and adds the median and worst peak/mean over all
sets, to show how much the result depends on the particular names.

    python bench/vnode_sweep.py
"""

from __future__ import annotations

import argparse
import platform
import random
import statistics
import sys
import time
from bisect import bisect_left, bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version

from memring.hashring import DEFAULT_VNODES, HashRing, Node, parse_node
from memring.hashring.hashes import murmur3_key_hash, murmur3_points

DEFAULT_COUNTS = (50, 100, 160, 200, 250, 300, 400, 500, 600, 800)
DEFAULT_SIZES = (10, 100)
LIMITS = {10: 1.10, 100: 1.15}
CHECK_SAMPLE = 20_000


@dataclass(frozen=True)
class Load:
    nodes: int
    vnodes: int
    name_set: int
    peak_to_mean: float
    trough_to_mean: float


def node_names(n: int, name_set: int) -> list[str]:
    return [f"10.{name_set}.0.{i}:11211" for i in range(1, n + 1)]


def make_key_hashes(count: int, seed: int) -> tuple[list[str], list[int]]:
    """Random session-like keys (fixed seed) and their sorted murmur3 hashes."""
    rng = random.Random(seed)
    keys = [f"session:{rng.getrandbits(64):016x}" for _ in range(count)]
    hashes = sorted(murmur3_key_hash(k) for k in keys)
    return keys, hashes


def point_table(nodes: Sequence[Node], vnodes: int) -> tuple[list[int], list[Node]]:
    """Sorted ring points and their owners, tie-broken by label as the ring does."""
    entries = sorted((p, n.label, n) for n in nodes for p in murmur3_points(n, vnodes))
    return [e[0] for e in entries], [e[2] for e in entries]


def count_keys(points: list[int], owners: list[Node], hashes: list[int]) -> dict[Node, int]:
    """Keys per node: point j owns the hashes in (points[j-1], points[j]], wrapping."""
    counts = dict.fromkeys(owners, 0)
    below = [bisect_right(hashes, p) for p in points]
    counts[owners[0]] += below[0] + (len(hashes) - below[-1])
    for j in range(1, len(points)):
        counts[owners[j]] += below[j] - below[j - 1]
    return counts


def check_against_ring(
    nodes: Sequence[Node], vnodes: int, points: list[int], owners: list[Node], keys: list[str]
) -> None:
    ring = HashRing(nodes, vnodes=vnodes)
    for key in keys[:CHECK_SAMPLE]:
        i = bisect_left(points, murmur3_key_hash(key))  # first point >= the key's hash
        expected = owners[i if i < len(points) else 0]
        if ring.node_for(key) != expected:
            raise SystemExit(f"sweep model disagrees with HashRing.node_for on {key!r}")


def measure(n: int, vnodes: int, name_set: int, keys: list[str], hashes: list[int]) -> Load:
    nodes = [parse_node(s) for s in node_names(n, name_set)]
    points, owners = point_table(nodes, vnodes)
    check_against_ring(nodes, vnodes, points, owners, keys)
    counts = count_keys(points, owners, hashes)
    assert sum(counts.values()) == len(hashes)
    mean = len(hashes) / n
    return Load(n, vnodes, name_set, max(counts.values()) / mean, min(counts.values()) / mean)


def meets(loads: dict[int, Load]) -> bool:
    return all(loads[n].peak_to_mean <= limit for n, limit in LIMITS.items() if n in loads)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--keys", type=int, default=1_000_000, help="random keys (default 1M)")
    parser.add_argument("--seed", type=int, default=20240601, help="key seed")
    parser.add_argument(
        "--vnodes",
        type=lambda s: [int(x) for x in s.split(",")],
        default=list(DEFAULT_COUNTS),
        help="comma-separated vnode counts",
    )
    parser.add_argument(
        "--name-sets", type=int, default=5, help="node-name sets (the first is 10.0.0.{i})"
    )
    args = parser.parse_args(argv)

    print(
        f"python {platform.python_version()} on {platform.machine()}, mmh3 {version('mmh3')}; "
        f"{args.keys:,} keys, seed {args.seed}; nodes 10.0.0.1..N:11211, equal weights; "
        f"current DEFAULT_VNODES = {DEFAULT_VNODES}"
    )
    started = time.perf_counter()
    keys, hashes = make_key_hashes(args.keys, args.seed)

    loads: dict[int, dict[int, list[Load]]] = {}
    for vnodes in args.vnodes:
        loads[vnodes] = {}
        for n in DEFAULT_SIZES:
            loads[vnodes][n] = [measure(n, vnodes, s, keys, hashes) for s in range(args.name_sets)]
        print(f"  measured vnodes={vnodes}", file=sys.stderr)

    print()
    header = ["vnodes"]
    for n in DEFAULT_SIZES:
        header += [f"N={n} peak/mean", f"N={n} min/mean"]
    header += ["meets"]
    if args.name_sets > 1:
        for n in DEFAULT_SIZES:
            header += [f"N={n} median", f"N={n} worst"]
    print("| " + " | ".join(header) + " |")
    print("|" + "|".join("---:" for _ in header) + "|")
    chosen: list[int] = []
    for vnodes in args.vnodes:
        first = {n: loads[vnodes][n][0] for n in DEFAULT_SIZES}
        ok = meets(first)
        if ok:
            chosen.append(vnodes)
        row = [str(vnodes)]
        for n in DEFAULT_SIZES:
            row += [f"{first[n].peak_to_mean:.3f}", f"{first[n].trough_to_mean:.3f}"]
        row += ["yes" if ok else "no"]
        if args.name_sets > 1:
            for n in DEFAULT_SIZES:
                peaks = [load.peak_to_mean for load in loads[vnodes][n]]
                row += [f"{statistics.median(peaks):.3f}", f"{max(peaks):.3f}"]
        print("| " + " | ".join(row) + " |")

    limits = " and ".join(f"<= {limit:.2f} at N={n}" for n, limit in LIMITS.items())
    print()
    print(f"- criterion: peak/mean {limits} (name set 10.0.0.{{i}})")
    if args.name_sets > 1:
        print(
            f"- median/worst: peak/mean over {args.name_sets} node-name sets "
            f"10.{{s}}.0.{{i}}:11211, s = 0..{args.name_sets - 1}"
        )
    if not chosen:
        print("- no swept vnode count meets the criterion")
        return 1
    stable = next(v for i, v in enumerate(args.vnodes) if all(w in chosen for w in args.vnodes[i:]))
    print(f"- smallest count meeting it: {chosen[0]}")
    print(f"- smallest count from which every larger swept count meets it: {stable}")
    print(f"({time.perf_counter() - started:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
