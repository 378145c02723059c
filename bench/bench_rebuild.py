"""How fast BackupClient puts a restarted node's copies back, in keys per second.

One run: 4 local memcached nodes, ``--keys`` keys (100-byte values) written
through a BackupClient, then one node SIGKILLed and started again empty;
``wait_redundant()`` returns once every key it co-owns has been copied back
(listed with ``lru_crawler metadump`` on the other nodes, read in pipelined
batches with their remaining TTL, written back with ``add``). Reports the
keys copied, the seconds, and keys/s; medians over ``--runs`` runs.

    python bench/bench_rebuild.py --keys 100000 --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import memring
from memring.tools.local import LocalCluster


def one_run(keys: int) -> tuple[int, float]:
    with LocalCluster(4) as cluster:
        client = memring.BackupClient(cluster.servers)
        try:
            items = [(f"k:{i}", b"v" * 100) for i in range(keys)]
            for i in range(0, keys, 1000):
                assert client.set_many(dict(items[i:i + 1000])) == []
            client.wait_redundant(timeout=120)  # every node rebuilt once: a clean start
            before = client.metrics()["rebuilt_keys"]
            victim = cluster[1]
            victim.kill()
            victim.start()
            start = time.perf_counter()
            client.wait_redundant(timeout=300)
            seconds = time.perf_counter() - start
            copied = client.metrics()["rebuilt_keys"] - before
            lost = sum(1 for k, _ in items if client.get(k) is None)
            assert lost == 0, f"{lost} keys lost"
            return copied, seconds
        finally:
            client.close()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--keys", type=int, default=100_000)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    results = [one_run(args.keys) for _ in range(args.runs)]
    rates = [copied / seconds for copied, seconds in results]
    for copied, seconds in results:
        print(f"copied {copied} keys back in {seconds:.2f} s: {copied / seconds:,.0f} keys/s")
    print(f"median {statistics.median(rates):,.0f} keys/s over {args.runs} runs "
          f"({args.keys} keys on 4 nodes, one restarted)")


if __name__ == "__main__":
    main()
