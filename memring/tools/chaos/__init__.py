"""Chaos runs: session load from many threads while memcached nodes fail.

With ``face="async"`` (``memring chaos --async``) the client is an
:class:`~memring.AsyncClient` (an :class:`~memring.AsyncBackupClient` in
mode ``"backup"``) on an event loop of its own: every worker's call is a
task of that loop (:class:`~memring.tools.looped.Looped`), so the same
workload and checks run on the asyncio face under concurrent tasks.

:func:`run_chaos` starts its own :class:`~memring.tools.local.LocalCluster` on
loopback, shares ONE client between ``threads`` worker threads (a
``Client(failover="next")`` in mode ``"next"``, a :class:`~memring.BackupClient`
in mode ``"backup"``), and injects one fault at a time on a schedule drawn
from ``seed``:

``kill``
    SIGKILL, then a new (empty) process on the same port after a hold.
``hang``
    SIGSTOP for a hold, then SIGCONT: the port stays open, nothing answers,
    and the node keeps its (old) data.
``restart``
    SIGKILL and at once a new empty process.
``flap``
    two quick hang/resume or kill/restart cycles of the same node, the second
    one usually while the node is still warming from the first.

The next fault is injected only after every node is back UP in the client's
view (the warming window over) and a short healthy pause. Every kind comes
once, in a seeded order, before any comes twice; with the warming window a
fault takes about 6-7 s, so one turn of all four takes about 27 s.
:func:`fit_schedule` says before a run how long its turn takes and which
kinds a shorter run will skip, and the report's ``skipped_faults`` names each
kind the run did not inject, and why.

The workload
------------
Each thread owns its own keys (``keys_per_thread``), so it knows the latest
*acknowledged* state of each: a version number or "deleted". Ops are about
90% ``get``, 6% ``set`` (a session dict with the key and a per-key version,
``expire=3600``), 2% ``delete`` (a logout) and 2% ``touch``. A call that
raised is *indeterminate*: its outcome (the value it tried to write, or the
delete) is allowed until the next acknowledged write of that key.

Every ``get`` is classified:

* ``ok`` — the latest acknowledged value, an allowed indeterminate outcome,
  or a miss where a miss is allowed;
* ``stale`` — any other value: an older version than the latest acknowledged
  one, or a value that was never written there;
* ``resurrected`` — a value written before an acknowledged delete (and
  nothing acknowledged since);
* ``lost`` — a miss where the key has an acknowledged value. In mode
  ``"next"`` a loss is *expected* when the key's home node was killed or
  restarted after that value was written, or when the client had that node
  marked down around the read (for any reason: the value is there, out of
  reach); anything else is an *unexpected* loss. Misses are judged after the
  run, when every down-mark is known. Mode ``"backup"`` promises that no key
  is lost while one node at a time fails.

A monitor thread polls :meth:`~memring.Client.health` every few
milliseconds for the whole run and records each node's down intervals. They
give the detection and recovery times (upper bounds, by the poll period),
the expected misses above, the *unplanned* down-marks (a healthy node whose
call timed out, e.g. on an overloaded machine), and the moments when two or
more nodes were down at once (``multi_downs``): the invariants below assume
one fault at a time, and the report says when the machine broke that.

Invariants and the latency bound
--------------------------------
The report's ``violations`` (and ``ok``) cover: stale reads, resurrected
deletes, unexpected losses (any loss in backup mode), errors that reached the
caller, and calls slower than :attr:`ChaosConfig.latency_bound`.

The bound: a call meets at most one timeout. A hung node is silent after
``connect`` (the kernel accepts for a stopped process), so the call waits one
read timeout; a node whose packets vanish costs one connect timeout; with
``failure_threshold=1`` that first failure marks the node down, and the call
goes on to a live node at loopback speed, never waiting on that node again.
So ``bound = connect + read + latency_margin``; the margin (0.25 s by
default) absorbs thread scheduling on a busy machine (the GIL, the
memcached processes on the same cores), and is smaller than a read timeout:
a call that waits a full timeout on top of the two it may meet is caught.
Time the whole process did not run at all (the OS gave its CPU to others:
the monitor thread sees a gap between two polls while the process's CPU
time stands still) is reported (``max_stall_s``) and not held against a
call: ``slow_calls`` counts the calls over the bound even without it,
``slow_calls_in_stalls`` the others.

Errors: with ``failure_threshold=1`` no error may reach the caller while only
one node fails (the failing call fails over). With a higher threshold the
first ``failure_threshold - 1`` failures of a node reach the caller as
:class:`~memring.NodeUnavailable` by design; those are *expected* errors.
Any other exception is a violation.

Phases, for latency: ``fault`` runs from the injection until the client sees
the node answer again (or, if it never marked it down, until the node is
resumed or restarted); ``recovery`` from then until every node is UP again
(the warming window); ``healthy`` is everything else.

Nothing is printed: progress goes to the optional ``log`` callback, and
:func:`format_report` renders the report as a table or JSON. The modules:

* :mod:`~memring.tools.chaos.config` — the settings and the fault schedule;
* :mod:`~memring.tools.chaos.workload` — the worker threads and the health monitor;
* :mod:`~memring.tools.chaos.run` — fault injection and :func:`run_chaos`;
* :mod:`~memring.tools.chaos.report` — the report, its invariants, its output.
"""

from memring.tools.chaos.config import (
    DEFAULT_FAULTS,
    FAULTS,
    FORMATS,
    MODES,
    OPS,
    PHASES,
    ChaosConfig,
    LogCallback,
    PlannedFault,
    ScheduleFit,
    fit_schedule,
    plan_faults,
    skipped_faults,
)
from memring.tools.chaos.report import ChaosReport, FaultEvent, PhaseLatency, format_report
from memring.tools.chaos.run import run_chaos

__all__ = [
    "DEFAULT_FAULTS",
    "FAULTS",
    "FORMATS",
    "MODES",
    "OPS",
    "PHASES",
    "ChaosConfig",
    "ChaosReport",
    "FaultEvent",
    "LogCallback",
    "PhaseLatency",
    "PlannedFault",
    "ScheduleFit",
    "fit_schedule",
    "format_report",
    "plan_faults",
    "run_chaos",
    "skipped_faults",
]
