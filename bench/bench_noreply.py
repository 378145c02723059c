"""What honouring ``noreply=True`` would gain: acknowledged writes against fire-and-forget.

Usage::

    python bench/bench_noreply.py [--runs N] [--ops N] [--seed N]

memring waits for every write's reply, ``noreply=True`` included (see the
README). This measures what it would gain by not waiting, on 4 local
memcached nodes (ports chosen at run time, stopped by PID), one thread,
100-byte values:

``set``
    ``Client.set`` (acknowledged) against a fire-and-forget set: the same
    key check, serialization and version trailer, then ``set ... noreply``
    written to the home node's pooled connection and nothing read.
``set_many``
    ``Client.set_many`` of 100 keys (pipelined to the nodes, every reply
    read) against the same requests with ``noreply``, written and not read.

Each run measures both, in a seeded shuffled order; the table reports the
median ops/s (keys/s for ``set_many``) over the runs and the ratio. At the
end every key is read back, so a fire-and-forget write that was lost
shows up in the count.
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from collections.abc import Callable, Sequence

import memring
from memring.tools.local import LocalCluster

VALUE = b"v" * 100
BATCH = 100


def fire_and_forget(client: memring.Client) -> tuple[Callable[[str], None],
                                                      Callable[[list[str]], None]]:
    """A set and a set_many that write ``noreply`` and never read (the prototype)."""
    engine = client._engine
    transports = client._transports

    def request(key: str) -> tuple[memring.Node, bytes]:
        kb = engine.key(key)
        data, flags = engine.home_item(engine.serialize(kb, VALUE), engine.hlc.now(), 0)
        return engine.ring.node_for(kb), b"set %s %d 0 %d noreply\r\n%s\r\n" % (
            kb, flags, len(data), data)

    def send(node: memring.Node, payload: bytes) -> None:
        pool = transports[node]._pool
        conn = pool.get()
        if conn.sock is None:
            conn._connect()
        assert conn.sock is not None
        conn.sock.sendall(payload)
        pool.release(conn)

    def set_one(key: str) -> None:
        send(*request(key))

    def set_many(keys: list[str]) -> None:
        by_node: dict[memring.Node, list[bytes]] = {}
        for key in keys:
            node, payload = request(key)
            by_node.setdefault(node, []).append(payload)
        for node, payloads in by_node.items():
            send(node, b"".join(payloads))

    return set_one, set_many


def timed(fn: Callable[[], None]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--ops", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    keys = [f"bench:{i}" for i in range(args.ops)]
    batches = [keys[i:i + BATCH] for i in range(0, len(keys), BATCH)]
    results: dict[str, list[float]] = {n: [] for n in
                                       ("set acked", "set noreply", "many acked", "many noreply")}
    with LocalCluster(4) as cluster, memring.Client(cluster.servers) as client:
        ff_set, ff_many = fire_and_forget(client)
        cases: dict[str, Callable[[], None]] = {
            "set acked": lambda: [client.set(k, VALUE) for k in keys] and None,
            "set noreply": lambda: [ff_set(k) for k in keys] and None,
            "many acked": lambda: [client.set_many(dict.fromkeys(b, VALUE)) for b in batches]
            and None,
            "many noreply": lambda: [ff_many(b) for b in batches] and None,
        }
        for fn in cases.values():  # warm-up: connections, caches
            fn()
        for _ in range(args.runs):
            order = list(cases)
            rng.shuffle(order)
            for name in order:
                results[name].append(len(keys) / timed(cases[name]))
        client.flush_all()
        ff_many(keys)
        time.sleep(0.2)
        stored = len(client.get_many(keys))
    med = {n: statistics.median(v) for n, v in results.items()}
    print(f"{args.runs} runs of {args.ops} writes, 4 nodes, one thread, {len(VALUE)}-byte values")
    print("| write | acknowledged ops/s | noreply ops/s | noreply / acknowledged |")
    print("|---|---:|---:|---:|")
    for op, acked, ff in (("set", "set acked", "set noreply"),
                          (f"set_many of {BATCH}", "many acked", "many noreply")):
        print(f"| {op} | {med[acked]:,.0f} | {med[ff]:,.0f} | {med[ff] / med[acked]:.2f}x |")
    print(f"fire-and-forget writes found on read-back: {stored} of {len(keys)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
