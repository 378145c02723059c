"""CPU per call of the clients, with no network and no server: a socket that answers like memcached.

The client benchmark (``bench_client.py``) measures whole round trips on
real servers, where a cross-process wake-up costs more than the client does.
This one measures what each client spends of its own, per call, so that a
change to the request path can be judged to a few percent: every client
talks to in-process fake sockets that parse the request and hand back the
reply memcached would send (``get``, ``set``, ``gets``/``mg`` are enough).

    python bench/bench_cpu.py            # memring Client and BackupClient, pymemcache Client

Prints microseconds per call (median of several runs) and the ratios.
"""

from __future__ import annotations

import argparse
import gc
import socket
import statistics
import time
from collections.abc import Callable
from typing import Any

from pymemcache.client.base import Client as PymemcacheClient

import memring

VALUE = b"v" * 100


class FakeSocket:
    """Answers each request written to it the way memcached would, from a dict."""

    def __init__(self, store: dict[bytes, tuple[int, bytes]]) -> None:
        self.store = store
        self.reply = b""

    def send(self, data: bytes) -> int:
        size = len(data)
        out = []
        while data:
            eol = data.index(b"\r\n")
            line = data[:eol].split(b" ")
            data = data[eol + 2:]
            cmd = line[0]
            if cmd in (b"get", b"gets"):
                for k in line[1:]:
                    if k in self.store:
                        flags, v = self.store[k]
                        cas = b" 1" if cmd == b"gets" else b""
                        out.append(b"VALUE %s %d %d%s\r\n%s\r\n" % (k, flags, len(v), cas, v))
                out.append(b"END\r\n")
            elif cmd == b"set":
                n = int(line[4])
                self.store[line[1]] = (int(line[2]), data[:n])
                data = data[n + 2:]
                out.append(b"STORED\r\n")
            else:
                raise ValueError(f"fake socket: {cmd!r} not handled")
        self.reply = b"".join(out)
        return size

    sendall = send  # the same cost for either call

    def recv(self, size: int, flags: int = 0) -> bytes:
        if flags & socket.MSG_PEEK:  # the pool's look at an idle connection
            if not self.reply:
                raise BlockingIOError
            return self.reply[:size]
        reply, self.reply = self.reply[:size], self.reply[size:]
        return reply

    def setsockopt(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _fake_memring(cls: type[memring.Client], nodes: int) -> memring.Client:
    servers = [f"10.9.9.{i + 1}:11211" for i in range(nodes)]
    client = cls(servers)
    for transport in client._transports.values():
        pool = transport._pool
        conn = pool.get()
        conn.sock = FakeSocket({})  # type: ignore[assignment]
        pool.release(conn)
    return client


def _fake_pymemcache() -> PymemcacheClient:
    client = PymemcacheClient(("10.9.9.1", 11211), default_noreply=False)
    client.sock = FakeSocket({})  # type: ignore[assignment]
    return client


def _time(call: Callable[[], Any], n: int) -> float:
    gc.collect()
    gc.disable()
    try:
        start = time.perf_counter()
        for _ in range(n):
            call()
        return (time.perf_counter() - start) / n * 1e6
    finally:
        gc.enable()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=7)
    args = p.parse_args()
    clients: dict[str, Any] = {
        "memring Client (4 nodes)": _fake_memring(memring.Client, 4),
        "memring BackupClient (4 nodes)": _fake_memring(memring.BackupClient, 4),
        "pymemcache Client (1 node)": _fake_pymemcache(),
    }
    results: dict[tuple[str, str], float] = {}
    for name, client in clients.items():
        client.set("bench:key", VALUE)
        ops = {"get": lambda c=client: c.get("bench:key"),
               "set": lambda c=client: c.set("bench:key", VALUE)}
        for op, call in ops.items():
            _time(call, args.calls // 10)  # warm up
            runs = [_time(call, args.calls) for _ in range(args.runs)]
            results[(name, op)] = statistics.median(runs)
    print(f"CPU per call, microseconds (median of {args.runs} runs of {args.calls}):")
    print(f"{'client':34} {'get':>8} {'set':>8}")
    for name in clients:
        print(f"{name:34} {results[(name, 'get')]:8.2f} {results[(name, 'set')]:8.2f}")
    base = "pymemcache Client (1 node)"
    for name in clients:
        if name != base:
            print(f"{name} / pymemcache: get {results[(name, 'get')] / results[(base, 'get')]:.2f}"
                  f"x, set {results[(name, 'set')] / results[(base, 'set')]:.2f}x the CPU")


if __name__ == "__main__":
    main()
