"""CPU per call of the clients, with no network and no server: a socket that answers like memcached.

The client benchmark (``bench_client.py``) measures whole round trips on
real servers, where a cross-process wake-up costs more than the client does.
This one measures what each client spends of its own, per call, so that a
change to the request path can be judged to a few percent: every client
talks to in-process fake sockets that parse the request and hand back the
reply memcached would send (``get``, ``set``, ``gets``/``mg`` are enough).

    python bench/bench_cpu.py            # memring Client and BackupClient, pymemcache Client
    python bench/bench_cpu.py --instructions --calls 2000   # the same, counted by valgrind

Prints microseconds per call (median of several runs) and the ratios.
"""

from __future__ import annotations

import argparse
import gc
import re
import shutil
import socket
import statistics
import subprocess
import sys
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


CLIENTS: dict[str, Callable[[], Any]] = {
    "memring Client (4 nodes)": lambda: _fake_memring(memring.Client, 4),
    "memring BackupClient (4 nodes)": lambda: _fake_memring(memring.BackupClient, 4),
    "pymemcache Client (1 node)": _fake_pymemcache,
}
BASE = "pymemcache Client (1 node)"


def _ops(client: Any) -> dict[str, Callable[[], Any]]:
    client.set("bench:key", VALUE)
    return {"get": lambda: client.get("bench:key"),
            "set": lambda: client.set("bench:key", VALUE)}


def _run_only(spec: str) -> None:
    """``--only INDEX:OP:N``: warm up, then N calls and nothing else (for valgrind)."""
    index, op, n = spec.split(":")
    call = _ops(list(CLIENTS.values())[int(index)]())[op]
    for _ in range(200):
        call()
    for _ in range(int(n)):
        call()


def _instructions(index: int, op: str, calls: int) -> float:
    """Instructions per call, as callgrind counts them: a run of ``calls`` calls
    less a run of none (start-up, imports and warm-up cancel out)."""
    counts = []
    for n in (0, calls):
        done = subprocess.run(
            ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null",
             sys.executable, __file__, "--only", f"{index}:{op}:{n}"],
            capture_output=True, text=True, check=True)
        found = re.search(r"Collected : (\d+)", done.stderr)
        if found is None:
            raise SystemExit(f"no instruction count from valgrind:\n{done.stderr}")
        counts.append(int(found.group(1)))
    return (counts[1] - counts[0]) / calls


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--calls", type=int, default=50_000)
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--instructions", action="store_true",
                   help="count instructions per call under valgrind's callgrind instead of "
                        "timing: the same on every run, so two commits compare to a "
                        "fraction of a percent (slow: use --calls 2000)")
    p.add_argument("--only", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.only:
        _run_only(args.only)
        return
    results: dict[tuple[str, str], float] = {}
    if args.instructions:
        if shutil.which("valgrind") is None:
            raise SystemExit("--instructions needs valgrind (Debian package valgrind)")
        for index, name in enumerate(CLIENTS):
            for op in ("get", "set"):
                results[(name, op)] = _instructions(index, op, args.calls)
        print(f"Instructions per call (callgrind, {args.calls} calls less none):")
        fmt = "{:8.0f}"
    else:
        for name, make in CLIENTS.items():
            for op, call in _ops(make()).items():
                _time(call, args.calls // 10)  # warm up
                runs = [_time(call, args.calls) for _ in range(args.runs)]
                results[(name, op)] = statistics.median(runs)
        print(f"CPU per call, microseconds (median of {args.runs} runs of {args.calls}):")
        fmt = "{:8.2f}"
    print(f"{'client':34} {'get':>8} {'set':>8}")
    for name in CLIENTS:
        get, set_ = (fmt.format(results[(name, op)]) for op in ("get", "set"))
        print(f"{name:34} {get} {set_}")
    for name in CLIENTS:
        if name != BASE:
            print(f"{name} / pymemcache: get {results[(name, 'get')] / results[(BASE, 'get')]:.2f}"
                  f"x, set {results[(name, 'set')] / results[(BASE, 'set')]:.2f}x the CPU")


if __name__ == "__main__":
    main()
