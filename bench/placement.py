"""Where a benchmark's processes run: pinning the client and the memcached servers.

Shared by ``bench_client.py`` and ``bench_async.py``.
"""

from __future__ import annotations

import contextlib
import os

from memring.tools.local import LocalCluster

__all__ = ["pin"]


def pin(cluster: LocalCluster, mode: str) -> str:
    """Pin this process and every memcached thread to CPUs; describe what was done.

    ``same``: the client and all servers share one CPU, so a round trip is a
    context switch and each client's own CPU cost decides its speed.
    ``split``: the client on one CPU, the servers on another; every round trip
    then pays a cross-CPU wake-up (tens of microseconds on a VM), a little
    like a network hop. ``none`` leaves placement to the scheduler, which on a
    small VM flips between those two regimes mid-run (a 2-3x swing).
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if mode == "none" or not cpus:
        return "not pinned"
    if mode == "split" and len(cpus) < 2:
        return "not pinned (split needs 2 CPUs)"
    mine = {cpus[0]}
    servers = mine if mode == "same" else {cpus[1]}
    for p in cluster.processes:
        for tid in os.listdir(f"/proc/{p.pid}/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setaffinity(int(tid), servers)
    os.sched_setaffinity(0, mine)  # before any client exists: its threads inherit it
    if mode == "same":
        return f"client and servers pinned to CPU {cpus[0]}"
    return f"client pinned to CPU {cpus[0]}, servers to CPU {cpus[1]}"
