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
:func:`format_report` renders the report as a table or JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import threading
import time
from array import array
from bisect import bisect_right
from collections import Counter, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from memring import (
    AsyncBackupClient,
    AsyncClient,
    BackupClient,
    Client,
    Failover,
    HealthPolicy,
    NodeState,
    Timeouts,
)
from memring.errors import ConfigError, MemringError, NodeUnavailable
from memring.hashring import Node
from memring.tools.local import LocalCluster
from memring.tools.looped import Looped

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

#: Fault kinds, in the order the CLI lists them. The default run injects the
#: single-node ones; a rolling restart (every node in turn) is asked for by name.
FAULTS = ("kill", "hang", "restart", "flap", "rolling", "rolling-nowait")
DEFAULT_FAULTS = ("kill", "hang", "restart", "flap")
#: In a rolling restart that does not wait for redundancy, the next node is
#: restarted this long after the last one came back.
_NOWAIT_GAP = 1.0
#: The longest a rolling restart waits, per node, for redundancy to be back.
_REDUNDANCY_LIMIT = 60.0
#: Client modes: single copy with Failover("next"), or two copies.
MODES = ("next", "backup")
#: The faces a run can drive: threads, or asyncio tasks of one loop.
FACES = ("sync", "async")
#: Output formats of :func:`format_report`.
FORMATS = ("table", "json")
#: Latency phases (see the module docstring).
PHASES = ("healthy", "fault", "recovery")
#: Workload ops and their weights.
OPS = ("get", "set", "delete", "touch")
OP_WEIGHTS = (90, 6, 2, 2)
_OP_CUMULATIVE = tuple(sum(OP_WEIGHTS[: i + 1]) for i in range(len(OP_WEIGHTS)))
#: Session lifetime given to every set and touch.
SESSION_EXPIRE = 3600

#: ``log(message)``: one line per notable event of the run (faults, detection).
LogCallback = Callable[[str], None]

#: How often the injector polls ``health()``.
_POLL = 0.005
#: Healthy time before the first fault, at most.
_LEAD = 1.5
#: Healthy pause between "every node UP" and the next fault.
_PAUSE = (0.3, 1.0)
#: Hold of each cycle of a flap, and the gap between its two cycles.
_FLAP_HOLD = (0.2, 0.5)
_FLAP_GAP = (0.2, 0.6)
#: Longest wait for a resumed node to answer, and for warming to end.
_RECOVER_LIMIT = 10.0
#: After a restart the client may notice the old process's death late (its
#: next call on a pooled connection): wait this long for that.
_LATE_DETECTION = 0.3
#: Poll period plus thread scheduling, when matching a call to a down interval.
_SLACK = 0.05
#: A gap between two health polls longer than this, with the process getting
#: less than half of it in CPU time, is a stall of the whole process.
_STALL = 0.05
#: Upper bound of every loop that could otherwise spin: ops per thread.
_MAX_OPS_PER_THREAD = 50_000_000
#: Examples of each kind of violation kept for the report.
_EXAMPLES = 5
_HISTORY = 4
_SLOWEST = 5
#: Largest accepted values, so a typo cannot start a day-long run.
_MAX_NODES = 32
_MAX_THREADS = 256
_MAX_DURATION = 24 * 3600.0
_MAX_KEYS_PER_THREAD = 1_000_000
_MAX_VALUE_SIZE = 512 * 1024
#: memcached's clock ticks once a second: a copy with a TTL of ``t`` seconds
#: may be gone after ``t - 1``. With the recovery probe's delay this is how
#: much of ``failover_ttl`` a hold can not use (see :class:`ChaosConfig`).
_TTL_SLACK = 1.0

_MISS = object()


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and math.isfinite(value))


@dataclass(frozen=True)
class ChaosConfig:
    """What to run. Validated when constructed (:class:`~memring.ConfigError`).

    ``hold`` is the range (seconds) a killed node stays dead, or a hung node
    stays stopped. While a node is out, writes of its keys live as copies on
    another node for at most ``failover_ttl`` seconds — in memcached's
    one-second clock possibly one second less — so the longest hold plus the
    recovery probe's delay must fit in ``failover_ttl - 1``; longer outages
    are a documented limit of the failover mode (copies expire), not a fault
    this run should trip over. ``allow_long_holds=True`` lifts the check, to
    explore exactly that limit.

    ``rate`` paces the workload: ops per second, all threads together (0: as
    fast as they can). Flat out, 8 Python threads and 4 memcached processes
    on 2 cores starve each other, and a healthy node that misses a read
    timeout is marked down like a failed one (the report lists these
    *unplanned* down-marks); the default keeps every key read a few times
    a second without that.
    """

    nodes: int = 4
    duration: float = 30.0
    threads: int = 8
    mode: str = "next"
    faults: tuple[str, ...] = DEFAULT_FAULTS
    seed: int = 0
    keys_per_thread: int = 200
    value_size: int = 200
    timeouts: Timeouts = Timeouts(connect=0.2, read=0.3)
    health: HealthPolicy = HealthPolicy(backoff_initial=0.1, backoff_max=0.5)
    failover_ttl: int = 3
    hold: tuple[float, float] = (0.5, 1.2)
    latency_margin: float = 0.25
    rate: float = 6000.0
    allow_long_holds: bool = False
    #: "sync": the thread face; "async": the asyncio face, every worker's calls
    #: tasks of one event loop (:class:`~memring.tools.looped.Looped`).
    face: str = "sync"

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise ConfigError(message)

        need(_is_int(self.nodes) and 2 <= self.nodes <= _MAX_NODES,
             f"nodes must be an integer from 2 to {_MAX_NODES}, got {self.nodes!r}")
        need(_is_number(self.duration) and 0 < self.duration <= _MAX_DURATION,
             f"duration must be a number of seconds > 0 (at most {_MAX_DURATION:.0f}), "
             f"got {self.duration!r}")
        need(_is_int(self.threads) and 1 <= self.threads <= _MAX_THREADS,
             f"threads must be an integer from 1 to {_MAX_THREADS}, got {self.threads!r}")
        need(self.mode in MODES,
             f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        faults = self.faults
        if isinstance(faults, str):
            faults = tuple(f.strip() for f in faults.split(",") if f.strip())
        need(isinstance(faults, (tuple, list)), f"faults must be a sequence, got {faults!r}")
        for f in faults:
            need(f in FAULTS, f"unknown fault {f!r}; choose from {', '.join(FAULTS)}")
        object.__setattr__(self, "faults", tuple(dict.fromkeys(faults)))
        need(_is_int(self.seed), f"seed must be an integer, got {self.seed!r}")
        need(_is_int(self.keys_per_thread) and 1 <= self.keys_per_thread <= _MAX_KEYS_PER_THREAD,
             f"keys_per_thread must be an integer from 1 to {_MAX_KEYS_PER_THREAD}, "
             f"got {self.keys_per_thread!r}")
        need(_is_int(self.value_size) and 0 <= self.value_size <= _MAX_VALUE_SIZE,
             f"value_size must be an integer from 0 to {_MAX_VALUE_SIZE}, got {self.value_size!r}")
        need(isinstance(self.timeouts, Timeouts), "timeouts must be a memring.Timeouts")
        need(isinstance(self.health, HealthPolicy), "health must be a memring.HealthPolicy")
        need(_is_int(self.failover_ttl) and 1 <= self.failover_ttl <= 3600,
             f"failover_ttl must be an integer of seconds from 1 to 3600, "
             f"got {self.failover_ttl!r}")
        hold = self.hold
        need(isinstance(hold, (tuple, list)) and len(hold) == 2
             and all(_is_number(h) for h in hold) and 0 < hold[0] <= hold[1] <= 3600,
             f"hold must be (min, max) seconds with 0 < min <= max, got {hold!r}")
        object.__setattr__(self, "hold", (float(hold[0]), float(hold[1])))
        need(_is_number(self.latency_margin) and self.latency_margin >= 0,
             f"latency_margin must be a number of seconds >= 0, got {self.latency_margin!r}")
        need(_is_number(self.rate) and self.rate >= 0,
             f"rate must be a number of ops per second >= 0 (0: unlimited), got {self.rate!r}")
        need(isinstance(self.allow_long_holds, bool), "allow_long_holds must be a bool")
        need(self.face in FACES, f"face must be one of {', '.join(FACES)}; got {self.face!r}")
        if not self.allow_long_holds:
            longest = self.failover_ttl - _TTL_SLACK - self.probe_delay_max
            need(self.hold[1] <= longest,
                 f"a hold of {self.hold[1]:g}s outlasts failover copies "
                 f"(failover_ttl={self.failover_ttl}s): use holds <= {max(longest, 0):.2f}s "
                 f"or a larger failover_ttl")

    @property
    def probe_delay_max(self) -> float:
        """The longest delay between two recovery probes of a down node."""
        return self.health.backoff_max * (1 + self.health.jitter)

    @property
    def latency_bound(self) -> float:
        """The longest a call may take: one connect + one read timeout + the margin."""
        return self.timeouts.connect + self.timeouts.read + self.latency_margin

    @property
    def warming_seconds(self) -> float:
        return Failover("next", failover_ttl=self.failover_ttl).warming_seconds

    def as_dict(self) -> dict[str, Any]:
        return {
            "nodes": self.nodes, "duration": self.duration, "threads": self.threads,
            "mode": self.mode, "faults": list(self.faults), "seed": self.seed,
            "keys_per_thread": self.keys_per_thread, "value_size": self.value_size,
            "connect_timeout": self.timeouts.connect, "read_timeout": self.timeouts.read,
            "failure_threshold": self.health.failure_threshold,
            "failover_ttl": self.failover_ttl, "hold": list(self.hold),
            "latency_margin": self.latency_margin, "latency_bound": self.latency_bound,
            "rate": self.rate, "face": self.face,
        }


# ---------------------------------------------------------------------------
# the fault schedule


@dataclass(frozen=True)
class PlannedFault:
    """One fault of the schedule: ``cycles`` of ``(action, hold, gap_after)``.

    ``action`` is ``"kill"`` (SIGKILL, then a new empty process after
    ``hold``) or ``"hang"`` (SIGSTOP, SIGCONT after ``hold``).
    """

    kind: str
    node: int
    pause: float
    cycles: tuple[tuple[str, float, float], ...]
    #: A rolling restart: the nodes restarted, one cycle each, in this order.
    nodes: tuple[int, ...] = ()

    @property
    def busy(self) -> float:
        """Seconds from the first injection to the last resume or restart (an
        estimate for a rolling restart, whose waits depend on the rebuilds)."""
        if self.nodes:
            return len(self.nodes) * (_NOWAIT_GAP + (_ROLLING_WAIT if self.kind == "rolling"
                                                     else 0.0))
        return sum(hold + gap for _, hold, gap in self.cycles)


def plan_faults(config: ChaosConfig, count: int = 1000) -> list[PlannedFault]:
    """The first ``count`` faults of ``config``'s schedule; the same for the same seed.

    Every fault kind of ``config.faults`` comes once (in a seeded order)
    before any comes twice. The run uses the schedule's prefix that fits in
    its duration.
    """
    rng = random.Random(f"memring-chaos:{config.seed}")
    plan: list[PlannedFault] = []
    if not config.faults:
        return plan
    kinds: list[str] = []
    while len(plan) < count:
        if not kinds:
            kinds = list(config.faults)
            rng.shuffle(kinds)
        kind = kinds.pop(0)
        node = rng.randrange(config.nodes)
        pause = rng.uniform(*_PAUSE)
        if kind == "kill":
            cycles: tuple[tuple[str, float, float], ...] = (
                ("kill", rng.uniform(*config.hold), 0.0),)
        elif kind == "hang":
            cycles = (("hang", rng.uniform(*config.hold), 0.0),)
        elif kind == "restart":
            cycles = (("kill", 0.0, 0.0),)
        elif kind in ("rolling", "rolling-nowait"):
            order = list(range(config.nodes))
            rng.shuffle(order)
            cycles = tuple(("kill", 0.0, 0.0) for _ in order)
            plan.append(PlannedFault(kind, order[0], pause, cycles, tuple(order)))
            continue
        else:
            action = rng.choice(("hang", "kill"))
            cycles = ((action, rng.uniform(*_FLAP_HOLD), rng.uniform(*_FLAP_GAP)),
                      (action, rng.uniform(*_FLAP_HOLD), 0.0))
        plan.append(PlannedFault(kind, node, pause, cycles))
    return plan


#: A returning node answers two recovery probes a quarter second apart
#: before the client takes it back; with thread scheduling, about this long.
_RETURN_PROBES = 0.35
#: Starting a memcached process again after a kill, generously.
_RESTART_S = 0.1
#: A fault must be over (resumed or restarted) this long before the run ends.
_END_MARGIN = 1.0
#: What the schedule allows a rolling restart per node for redundancy to come
#: back (its rebuild, for this run's few keys, takes well under this).
_ROLLING_WAIT = 2.0


@dataclass(frozen=True)
class ScheduleFit:
    """Which fault kinds a run of ``config.duration`` reaches: an estimate, made before it runs.

    ``kinds`` are the fault kinds of the schedule's first turn (every kind
    once, in the seeded order of :func:`plan_faults`) and ``starts`` the time
    each is injected at the latest (the slowest return the health policy
    allows, then the whole warming window, before the next fault).
    ``needed_s`` is the shortest duration in which every kind gets its turn;
    ``skipped`` are the kinds a run of ``duration_s`` reaches too late.
    """

    duration_s: float
    kinds: tuple[str, ...]
    starts: tuple[float, ...]
    needed_s: float
    skipped: tuple[str, ...]

    @property
    def note(self) -> str | None:
        """One line that says, before the run, which kinds it will skip; None if none."""
        if not self.skipped:
            return None
        late = ", ".join(f"{k} (its turn comes at about {self.start_of(k):.0f} s)"
                         for k in self.skipped)
        return (f"a {self.duration_s:g} s run is too short for one turn of every fault kind: "
                f"it will skip {late}; a run of {math.ceil(self.needed_s)} s or more "
                "injects every kind")

    def start_of(self, kind: str) -> float:
        """When ``kind`` gets its first turn, at the latest (seconds into the run)."""
        return self.starts[self.kinds.index(kind)]

    def reason(self, kind: str) -> str:
        """Why a run skipped ``kind``, for the report."""
        if kind in self.skipped:
            return (f"its turn comes at about {self.start_of(kind):.0f} s, too late for a "
                    f"{self.duration_s:g} s run (every kind needs about "
                    f"{math.ceil(self.needed_s)} s)")
        return ("earlier faults took longer than planned (a slow return, or a node marked "
                "down with no fault injected: see the events)")


def fit_schedule(config: ChaosConfig) -> ScheduleFit:
    """Estimate when each fault kind of ``config`` gets its first turn; see :class:`ScheduleFit`.

    The run injects a fault only when every node is up again and the fault
    can be over :data:`_END_MARGIN` before the end; a fault lasts its holds
    and gaps, the node's return (at most one probe delay plus two probes),
    and the warming window. The estimate takes the slowest return, so a run
    of ``needed_s`` reaches every kind unless a node is slower than the
    policy allows or is marked down without a fault.
    """
    plan = plan_faults(config, len(config.faults))
    lead = min(_LEAD, config.duration / 5)
    back = config.probe_delay_max + _RETURN_PROBES
    t = lead
    starts: list[float] = []
    needed = 0.0
    for fault in plan:
        t += fault.pause
        starts.append(t)
        needed = t + fault.busy + _END_MARGIN
        restarts = sum(1 for action, _, _ in fault.cycles if action == "kill")
        t += fault.busy + restarts * _RESTART_S + back + config.warming_seconds
    skipped = tuple(f.kind for f, start in zip(plan, starts, strict=True)
                    if start + f.busy + _END_MARGIN > config.duration)
    return ScheduleFit(config.duration, tuple(f.kind for f in plan), tuple(starts), needed,
                       skipped)


# ---------------------------------------------------------------------------
# the report


@dataclass(frozen=True)
class PhaseLatency:
    """Call latency in one phase, in milliseconds."""

    phase: str
    ops: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class FaultEvent:
    """One injected fault and what the client and the workload saw of it.

    Times are seconds since the start of the run. ``detect_s``: from the
    injection until the client marked the node down (None: it never did,
    e.g. a restart that completed before any call noticed); for a flap, from
    the injection of the first of its cycles that the client noticed. ``recover_s``:
    from the (last) resume or restart until the client saw the node answer
    again. ``warm_s``: from then until every node was UP again.

    ``keys_checked``: keys with an acknowledged value from before the fault
    that were read during or after it (first read only); ``keys_missing``:
    those whose read missed. ``expected_fraction`` is what the mode promises
    for a kill or restart: 1/N for the single-copy ring, 0 for backup; a
    hang in mode "next" only hides a node's keys while it is out, so it
    misses at most 1/N (``expected_is_bound``). ``victim_share``: the share of checked keys whose
    home is the victim — the exact expectation of a kill for these keys.
    """

    index: int
    kind: str
    node: str
    actions: list[str]
    injected_at: float
    hold_s: float
    detect_s: float | None = None
    recover_s: float | None = None
    warm_s: float | None = None
    keys_checked: int = 0
    keys_missing: int = 0
    victim_keys: int = 0
    expected_fraction: float = 0.0
    expected_is_bound: bool = False
    #: A rolling restart: the nodes in the order restarted, and for each the
    #: seconds it waited until redundancy was back (None: it did not wait).
    rolled: list[str] = field(default_factory=list)
    waits_s: list[float | None] = field(default_factory=list)

    @property
    def missing_fraction(self) -> float:
        return self.keys_missing / self.keys_checked if self.keys_checked else 0.0

    @property
    def victim_share(self) -> float:
        return self.victim_keys / self.keys_checked if self.keys_checked else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["missing_fraction"] = self.missing_fraction
        out["victim_share"] = self.victim_share
        return out


@dataclass
class ChaosReport:
    """What a chaos run measured. ``ok`` is False when an invariant broke."""

    config: ChaosConfig
    elapsed_s: float
    ops: int
    ops_by_kind: dict[str, int]
    errors: dict[str, int]
    unexpected_errors: int
    reads: dict[str, int]
    lost_keys: int
    unexpected_lost_keys: int
    latency: list[PhaseLatency]
    max_latency_s: float
    slow_calls: int
    slow_calls_in_stalls: int
    max_stall_s: float
    slowest: list[dict[str, Any]]
    events: list[FaultEvent]
    client_metrics: dict[str, Any]
    examples: list[dict[str, Any]]
    notes: dict[str, int]
    unplanned_downs: list[dict[str, Any]] = field(default_factory=list)
    multi_downs: list[dict[str, Any]] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    #: Fault kinds of ``config.faults`` the run never injected, and why.
    skipped_faults: dict[str, str] = field(default_factory=dict)
    #: Backup mode: keys lost because a rolling restart did not wait for
    #: redundancy (both copies' nodes restarted before the rebuild): caused by
    #: the operator's schedule, reported, and no broken promise.
    nowait_lost_keys: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def stale_reads(self) -> int:
        return self.reads.get("stale", 0)

    @property
    def resurrected_deletes(self) -> int:
        return self.reads.get("resurrected", 0)

    @property
    def latency_bound_s(self) -> float:
        return self.config.latency_bound

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": list(self.violations),
            "config": self.config.as_dict(),
            "elapsed_s": self.elapsed_s,
            "ops": self.ops,
            "ops_per_s": self.ops_per_s,
            "ops_by_kind": dict(self.ops_by_kind),
            "errors": dict(self.errors),
            "unexpected_errors": self.unexpected_errors,
            "reads": dict(self.reads),
            "stale_reads": self.stale_reads,
            "resurrected_deletes": self.resurrected_deletes,
            "lost_keys": self.lost_keys,
            "unexpected_lost_keys": self.unexpected_lost_keys,
            "nowait_lost_keys": self.nowait_lost_keys,
            "latency": [dataclasses.asdict(p) for p in self.latency],
            "max_latency_s": self.max_latency_s,
            "latency_bound_s": self.latency_bound_s,
            "slow_calls": self.slow_calls,
            "slow_calls_in_stalls": self.slow_calls_in_stalls,
            "max_stall_s": self.max_stall_s,
            "slowest": list(self.slowest),
            "events": [e.as_dict() for e in self.events],
            "client_metrics": self.client_metrics,
            "examples": list(self.examples),
            "notes": dict(self.notes),
            "unplanned_downs": list(self.unplanned_downs),
            "multi_downs": list(self.multi_downs),
            "servers": list(self.servers),
            "pids": list(self.pids),
            "skipped_faults": dict(self.skipped_faults),
        }


# ---------------------------------------------------------------------------
# the model of one thread's keys


class _Key:
    """What one worker knows of one of its keys."""

    __slots__ = ("acked", "acked_start", "checked_event", "deleted_upto", "home", "maybe",
                 "missing", "name", "reads", "writes", "written")

    def __init__(self, name: str, home: Node) -> None:
        self.name = name
        self.home = home
        #: The last few calls on this key, (start, end, op, version, outcome), for examples.
        self.writes: deque[tuple[float, float, str, Any, str]] = deque(maxlen=_HISTORY)
        self.reads: deque[tuple[float, float, str, Any, str]] = deque(maxlen=_HISTORY)
        self.acked: int | None = None       # latest acknowledged version; None: no value
        self.acked_start = -math.inf        # start time of the call that wrote it
        self.maybe: set[int | None] = set()  # outcomes of failed calls since (None: delete)
        self.deleted_upto = 0               # versions an acknowledged delete removed
        self.written = 0                    # highest version ever sent
        self.missing = False                # a miss was seen since the last ack
        self.checked_event = -1             # last fault this key was counted for


@dataclass
class _Cycle:
    """One kill or hang of a node, as the workers need to judge a miss."""

    node: Node
    action: str
    injected_at: float
    resumed_at: float | None = None
    detected_at: float | None = None
    back_at: float | None = None


@dataclass
class _Event:
    planned: PlannedFault
    node: Node
    injected_at: float
    cycles: list[_Cycle] = field(default_factory=list)
    settled_at: float | None = None
    waits: list[float | None] = field(default_factory=list)

    @property
    def fault_end(self) -> float | None:
        last = self.cycles[-1] if self.cycles else None
        if last is None or last.resumed_at is None:
            return None
        return last.back_at if last.back_at is not None else last.resumed_at


class _Worker:
    """One workload thread: its keys, its model, its measurements."""

    def __init__(self, run: _Run, index: int) -> None:
        self.run = run
        self.index = index
        cfg = run.config
        self.rng = random.Random(f"memring-chaos:{cfg.seed}:{index}")
        ring = run.client.ring
        self.keys = [_Key(name, ring.node_for(name)) for name in
                     (f"chaos:{cfg.seed}:{index}:{i}" for i in range(cfg.keys_per_thread))]
        self.pad = "x" * cfg.value_size
        self.starts = array("d")
        self.durations = array("d")
        self.kinds = array("b")
        self.errors: Counter[str] = Counter()
        self.unexpected_errors = 0
        self.reads: Counter[str] = Counter()
        self.notes: Counter[str] = Counter()
        self.misses: list[_Miss] = []
        self.examples: list[dict[str, Any]] = []
        self.example_counts: Counter[str] = Counter()
        self.slowest: list[tuple[float, float, str, str, str | None]] = []
        self.event_counts: dict[int, list[int]] = {}  # event -> [checked, missing, victim]
        self.failure: BaseException | None = None
        self.populated = threading.Event()

    # -- measurement -----------------------------------------------------
    def _record(self, op: int, start: float, duration: float, key: _Key,
                error: BaseException | None, what: Any = None, outcome: Any = None) -> None:
        (key.reads if op == 0 else key.writes).append(
            (round(start, 4), round(start + duration, 4), OPS[op], what,
             repr(outcome) if error is None else f"{type(error).__name__}"))
        self.starts.append(start)
        self.durations.append(duration)
        self.kinds.append(op)
        if error is not None:
            name = type(error).__name__
            self.errors[name] += 1
            if not self.run.expected_error(error):
                self.unexpected_errors += 1
                self._example("error", key, start, error=f"{name}: {error}", op=OPS[op])
        if len(self.slowest) < _SLOWEST or duration > self.slowest[-1][1]:
            self.slowest.append((start, duration, OPS[op], key.name,
                                 None if error is None else type(error).__name__))
            self.slowest.sort(key=lambda s: -s[1])
            del self.slowest[_SLOWEST:]

    def _example(self, what: str, key: _Key, start: float, **details: Any) -> None:
        self.example_counts[what] += 1
        if self.example_counts[what] <= _EXAMPLES:
            owners = self.run.client.ring.nodes_for(key.name, 2)
            self.examples.append({"what": what, "key": key.name,
                                  "owners": [n.label for n in owners], "t": round(start, 4),
                                  **details, "writes": [list(h) for h in key.writes],
                                  "reads": [list(h) for h in key.reads]})

    # -- the loop ----------------------------------------------------------
    def populate(self) -> None:
        for key in self.keys:
            if self.run.stop.is_set():
                return
            self.do_set(key)

    def loop(self) -> None:
        run, rng, keys = self.run, self.rng, self.keys
        total = _OP_CUMULATIVE[-1]
        rate = run.config.rate / run.config.threads
        gap = 1.0 / rate if rate else 0.0
        next_at = run.now()
        for _ in range(_MAX_OPS_PER_THREAD):
            now = run.now()
            if run.stop.is_set() or now >= run.end:
                return
            if gap:
                next_at += gap
                if next_at > now:
                    time.sleep(next_at - now)
                else:
                    next_at = max(next_at, now - 1.0)  # behind: catch up, but not forever
            key = keys[rng.randrange(len(keys))]
            op = bisect_right(_OP_CUMULATIVE, rng.randrange(total))
            if op == 0:
                self.do_get(key)
            elif op == 1:
                self.do_set(key)
            elif op == 2:
                self.do_delete(key)
            else:
                self.do_touch(key)

    def main(self) -> None:
        try:
            self.populate()
            self.populated.set()
            self.run.ready.wait()
            self.loop()
        except BaseException as exc:  # a bug in the engine: report it, never hang the run
            self.failure = exc
            self.run.stop.set()

    # -- ops -----------------------------------------------------------------
    def do_set(self, key: _Key) -> None:
        key.written += 1
        version = key.written
        value = {"k": key.name, "v": version, "user": self.index, "pad": self.pad}
        start = self.run.now()
        try:
            stored = self.run.client.set(key.name, value, expire=SESSION_EXPIRE)
        except Exception as exc:
            self._record(1, start, self.run.now() - start, key, exc, version)
            key.maybe.add(version)
            return
        self._record(1, start, self.run.now() - start, key, None, version, stored)
        if stored:
            key.acked, key.acked_start, key.missing = version, start, False
            key.maybe.clear()
        else:
            self.notes["set_not_stored"] += 1
            key.maybe.add(version)

    def do_delete(self, key: _Key) -> None:
        start = self.run.now()
        try:
            existed = self.run.client.delete(key.name)
        except Exception as exc:
            self._record(2, start, self.run.now() - start, key, exc)
            key.maybe.add(None)
            return
        self._record(2, start, self.run.now() - start, key, None, None, existed)
        key.acked, key.acked_start, key.missing = None, start, False
        key.deleted_upto = key.written
        key.maybe.clear()

    def do_touch(self, key: _Key) -> None:
        start = self.run.now()
        try:
            found = self.run.client.touch(key.name, SESSION_EXPIRE)
        except Exception as exc:
            self._record(3, start, self.run.now() - start, key, exc)
            return
        self._record(3, start, self.run.now() - start, key, None, None, found)
        definite = not key.maybe
        if found and definite and key.acked is None:
            self.notes["touch_found_deleted_key"] += 1
        elif not found and definite and key.acked is not None:
            self.notes["touch_missed_live_key"] += 1

    def do_get(self, key: _Key) -> None:
        start = self.run.now()
        try:
            got = self.run.client.get(key.name, _MISS)
        except Exception as exc:
            self._record(0, start, self.run.now() - start, key, exc)
            return
        self._record(0, start, self.run.now() - start, key, None, None,
                     "miss" if got is _MISS else _version(got, key.name))
        self._count_for_event(key, start, got is _MISS)
        self.reads[self._classify(key, start, got)] += 1

    def _count_for_event(self, key: _Key, start: float, miss: bool) -> None:
        """First read of ``key`` since the current fault: does its old value survive?"""
        index = self.run.current_event
        if index < 0 or key.checked_event >= index:
            return
        key.checked_event = index
        event = self.run.events[index]
        if (key.acked is None or key.maybe or key.missing
                or key.acked_start >= event.injected_at):
            return
        counts = self.event_counts.setdefault(index, [0, 0, 0])
        counts[0] += 1
        counts[1] += miss
        counts[2] += key.home == event.node

    def _classify(self, key: _Key, start: float, got: Any) -> str:
        if got is _MISS:
            if key.acked is None or None in key.maybe:
                return "ok"
            # Judged after the run, when every down-mark of the home node is known.
            self.misses.append(_Miss(key, start, key.acked, key.acked_start, not key.missing,
                                     [list(h) for h in key.writes],
                                     [list(h) for h in key.reads]))
            key.missing = True
            return "lost"
        version = _version(got, key.name)
        if version is not None and (version == key.acked or version in key.maybe):
            if version == key.acked:
                key.missing = False
            return "ok"
        if key.acked is None and version is not None and 0 < version <= key.deleted_upto:
            self._example("resurrected", key, start, got=version, deleted_upto=key.deleted_upto,
                          maybe=sorted(v for v in key.maybe if v is not None),
                          phase=self.run.phase_now(start))
            return "resurrected"
        self._example("stale", key, start, got=version if version is not None else repr(got)[:80],
                      acked=key.acked, maybe=sorted(str(v) for v in key.maybe),
                      phase=self.run.phase_now(start))
        return "stale"


@dataclass
class _Miss:
    """A read that missed a key with an acknowledged value, to judge after the run."""

    key: _Key
    start: float
    acked: int
    acked_start: float
    first: bool
    writes: list[list[Any]]
    reads: list[list[Any]]


def _version(got: Any, name: str) -> int | None:
    """The version of a session value read back, or None if it is not one of ours."""
    if isinstance(got, dict) and got.get("k") == name:
        version = got.get("v")
        if isinstance(version, int) and not isinstance(version, bool):
            return version
    return None


# ---------------------------------------------------------------------------
# the run


class _Monitor:
    """Polls the client's view of every node; records each node's down intervals.

    Runs in its own thread for the whole run. Its records decide detection and
    recovery times, which misses are expected in mode "next", and which
    down-marks no injected fault explains (*unplanned*: a node that was only
    slow — a timeout under CPU contention — is marked down as any other).
    """

    def __init__(self, run: _Run) -> None:
        self.run = run
        labels = [n.label for n in run.client.ring.nodes]
        self.nodes = {n.label: n for n in run.client.ring.nodes}
        self.state = {label: NodeState.UP for label in labels}
        self.changes = {label: 0 for label in labels}
        #: Per node, ``[down_at, back_at or None]`` in the order they happened.
        self.downs: dict[str, list[list[float | None]]] = {label: [] for label in labels}
        self.transitions: list[tuple[float, str, str, str]] = []
        #: ``(start, end, frozen)``: gaps between two polls during which the
        #: process got little CPU (descheduled by the OS, not busy itself).
        self.stalls: list[tuple[float, float, float]] = []
        self._last = (self.run.now(), time.process_time())
        self.thread = threading.Thread(target=self._main, name="memring-chaos-monitor",
                                       daemon=True)

    def _clock(self, t: float) -> None:
        cpu = time.process_time()
        last_t, last_cpu = self._last
        self._last = (t, cpu)
        wall = t - last_t
        if wall > _STALL and cpu - last_cpu < wall / 2:
            self.stalls.append((last_t, t, wall - (cpu - last_cpu)))

    def stall_within(self, start: float, end: float) -> float:
        """Seconds of ``[start, end]`` the process was frozen, as far as the polls tell."""
        frozen = 0.0
        for a, b, f in self.stalls:
            overlap = min(b, end) - max(a, start)
            if overlap > 0:
                frozen += f * overlap / (b - a)
        return frozen

    def poll(self) -> None:
        t = self.run.now()
        self._clock(t)
        for label, status in self.run.client.health().items():
            old, new = self.state[label], status.state
            if status.state_changes == self.changes[label] and old is new:
                continue
            self.changes[label] = status.state_changes
            self.state[label] = new
            downs = self.downs[label]
            is_open = bool(downs) and downs[-1][1] is None
            # DOWN is the only way into WARMING: a jump UP -> WARMING between
            # two polls was a short stay in DOWN.
            went_down = new is NodeState.DOWN or (old is NodeState.UP
                                                  and new is NodeState.WARMING)
            if went_down and not is_open:
                downs.append([t, None])
                is_open = True
                self.run.on_down(self.nodes[label], t)
            if new is not NodeState.DOWN and is_open:
                downs[-1][1] = t
                self.run.on_back(self.nodes[label], t, new)
            self.transitions.append((t, label, old.value, new.value))

    def all_up(self) -> bool:
        return all(s is NodeState.UP for s in self.state.values())

    def _main(self) -> None:
        while not self.run.stop.is_set():
            try:
                self.poll()
            except Exception:  # the client closed under us at the very end
                if not self.run.stop.is_set():
                    raise
            self.run.stop.wait(_POLL)


class _Run:
    def __init__(self, config: ChaosConfig, cluster: LocalCluster, client: Client,
                 log: LogCallback | None) -> None:
        self.config = config
        self.mode = config.mode
        self.cluster = cluster
        self.client = client
        self.log = log
        self.stop = threading.Event()
        self.ready = threading.Event()
        self.t0 = time.monotonic()
        self.end = math.inf
        self.events: list[_Event] = []
        self.cycles: list[_Cycle] = []
        self.current_event = -1
        self.active: dict[Node, _Event] = {}
        self.pids: list[int] = [p.pid for p in cluster.processes if p.pid is not None]
        self.unplanned: list[tuple[float, Node]] = []
        self.monitor = _Monitor(self)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, message: str) -> None:
        if self.log is not None:
            self.log(f"[{self.now():7.2f}s] {message}")

    def expected_error(self, exc: BaseException) -> bool:
        """A node error the configuration lets reach the caller (threshold > 1), or one
        of a rolling restart that does not wait (two of a key's nodes may then be
        restarting at once: the schedule's doing)."""
        if any(e.planned.kind == "rolling-nowait" for e in list(self.active.values())):
            return isinstance(exc, MemringError)
        return self.config.health.failure_threshold > 1 and isinstance(exc, NodeUnavailable)

    def miss_expected(self, home: Node, acked_start: float, start: float) -> bool:
        """Mode "next": may a key of ``home``, written at ``acked_start``, miss at ``start``?

        Yes if its home node was killed (or restarted) after that write: the
        value died with the process. And yes if the client had its home node
        marked down around the read (for any reason), the write having come
        before: the value is there, out of reach. The read that marks a node
        down starts up to one read timeout earlier; the monitor's polling and
        thread scheduling add ``_SLACK``.
        """
        for c in self.cycles:
            if c.node == home and c.action == "kill" and c.injected_at > acked_start:
                return True
        reach = self.config.timeouts.read + self.config.timeouts.connect + _SLACK
        for down_at, back_at in self.monitor.downs[home.label]:
            assert down_at is not None
            if down_at + _SLACK < acked_start:
                continue  # down before the write: the write went to the failover node
            if down_at - reach <= start and (back_at is None or start <= back_at + _SLACK):
                return True
        return False

    def lost_to_nowait(self, key: _Key, acked_start: float) -> bool:
        """Backup mode: did a rolling restart that did not wait kill both of ``key``'s
        homes after it was written? Then its two copies were gone: the schedule lost it."""
        pair = set(self.client.ring.nodes_for(key.name, 2))
        for e in self.events:
            if e.planned.kind != "rolling-nowait":
                continue
            killed = {c.node for c in e.cycles if c.injected_at > acked_start}
            if pair <= killed:
                return True
        return False

    def phase_now(self, t: float) -> str:
        return _phase_of(t, _phase_windows(self.events, self.end))

    # -- callbacks of the monitor ----------------------------------------------
    def on_down(self, node: Node, t: float) -> None:
        event = self.active.get(node)
        if event is None:
            self.unplanned.append((t, node))
            self.say(f"{node.label} marked down, and no fault was injected there")
            return
        cycle = event.cycles[-1] if event.cycles else None
        if cycle is not None and cycle.detected_at is None:
            cycle.detected_at = t
            self.say(f"{node.label} marked down {t - cycle.injected_at:.3f}s after the "
                     f"{cycle.action}")

    def on_back(self, node: Node, t: float, state: NodeState) -> None:
        event = self.active.get(node)
        cycle = event.cycles[-1] if event is not None and event.cycles else None
        if cycle is None:
            return
        if cycle.resumed_at is None:
            self.say(f"{node.label} answers again ({state.value}) before it was resumed")
            return
        if cycle.back_at is None:
            cycle.back_at = t
            self.say(f"{node.label} answers again ({state.value}) "
                     f"{t - cycle.resumed_at:.3f}s after it was back")

    # -- the injector (runs in the calling thread) ---------------------------
    def _wait(self, done: Callable[[], bool], until: float) -> bool:
        while not self.stop.is_set():
            if done():
                return True
            if self.now() >= until:
                return False
            self.stop.wait(_POLL)
        return False

    def _seen_back(self, cycle: _Cycle) -> bool:
        """The client sees the node again — or never saw it go (a quick restart)."""
        if cycle.back_at is not None:
            return True
        late = cycle.resumed_at is not None and self.now() > cycle.resumed_at + _LATE_DETECTION
        return cycle.detected_at is None and late

    def inject(self, planned: PlannedFault) -> None:
        if planned.nodes:
            self._roll(planned)
            return
        proc = self.cluster[planned.node]
        node = proc.node
        event = _Event(planned, node, self.now())
        self.events.append(event)
        self.active[node] = event
        self.current_event = len(self.events) - 1
        self.say(f"fault {len(self.events)}: {planned.kind} {node.label} "
                 f"({' + '.join(f'{a} {h:.2f}s' for a, h, _ in planned.cycles)})")
        for action, hold, gap in planned.cycles:
            # Registered before the signal: a worker may see its effect at once.
            cycle = _Cycle(node, action, self.now())
            self.cycles.append(cycle)
            event.cycles.append(cycle)
            if action == "kill":
                proc.kill()
            else:
                proc.hang()
            self.stop.wait(max(0.0, cycle.injected_at + hold - self.now()))
            if action == "kill":
                proc.start()
                if proc.pid is not None:
                    self.pids.append(proc.pid)
            else:
                proc.resume()
            cycle.resumed_at = self.now()
            self._wait(partial(self._seen_back, cycle), cycle.resumed_at + (gap or _RECOVER_LIMIT))
            if gap:
                self.stop.wait(max(0.0, cycle.resumed_at + gap - self.now()))
        if self._wait(self.monitor.all_up,
                      min(self.end, self.now() + self.config.warming_seconds + _RECOVER_LIMIT)):
            event.settled_at = self.now()
            self.say(f"fault {len(self.events)} over: every node up")
        elif self.now() < self.end:
            self.say(f"fault {len(self.events)}: nodes not all up after the warming window")
        if isinstance(self.client, BackupClient) and any(
                action == "kill" for action, _, _ in planned.cycles):
            # A node that restarted empty holds one copy of its keys until its
            # rebuild is done: the fault lasts until then (one fault at a time),
            # as a rolling restart that waits does.
            start = self.now()
            try:
                self.client.wait_redundant(timeout=_REDUNDANCY_LIMIT)
            except MemringError as exc:
                self.say(f"fault {len(self.events)}: redundancy not back: {exc}")
            else:
                self.say(f"fault {len(self.events)}: redundancy back after "
                         f"{self.now() - start:.2f}s")
        del self.active[node]

    def _roll(self, planned: PlannedFault) -> None:
        """A rolling restart: every node in turn SIGKILLed and started again, empty.

        ``rolling`` restarts the next node only once redundancy is back
        (``BackupClient.wait_redundant()``; for the single-copy client, once
        every node is up); ``rolling-nowait`` after :data:`_NOWAIT_GAP`
        seconds, as an operator with no such signal would, and the keys that
        then lose both copies are counted, not hidden.
        """
        first = self.cluster[planned.nodes[0]].node
        event = _Event(planned, first, self.now())
        self.events.append(event)
        self.current_event = len(self.events) - 1
        self.say(f"fault {len(self.events)}: {planned.kind} over "
                 f"{', '.join(self.cluster[i].node.label for i in planned.nodes)}")
        wait = planned.kind == "rolling"
        for index in planned.nodes:
            if self.stop.is_set():
                break
            proc = self.cluster[index]
            self.active[proc.node] = event
            cycle = _Cycle(proc.node, "kill", self.now())
            self.cycles.append(cycle)
            event.cycles.append(cycle)
            proc.kill()
            proc.start()
            if proc.pid is not None:
                self.pids.append(proc.pid)
            cycle.resumed_at = self.now()
            self._wait(partial(self._seen_back, cycle), cycle.resumed_at + _RECOVER_LIMIT)
            if not wait:
                event.waits.append(None)
                self.stop.wait(_NOWAIT_GAP)
            elif isinstance(self.client, BackupClient):
                start = self.now()
                try:
                    self.client.wait_redundant(timeout=_REDUNDANCY_LIMIT)
                except MemringError as exc:
                    self.say(f"redundancy not back after {proc.node.label}'s restart: {exc}")
                event.waits.append(self.now() - start)
                self.say(f"{proc.node.label} restarted; redundancy back after "
                         f"{event.waits[-1]:.2f}s")
            else:
                start = self.now()
                self._wait(self.monitor.all_up, self.now() + self.config.warming_seconds
                           + _RECOVER_LIMIT)
                event.waits.append(self.now() - start)
            del self.active[proc.node]
        if self._wait(self.monitor.all_up,
                      min(self.end, self.now() + self.config.warming_seconds + _RECOVER_LIMIT)):
            event.settled_at = self.now()
            self.say(f"fault {len(self.events)} over: every node up")

    def drive(self, plan: Sequence[PlannedFault]) -> None:
        """Inject the schedule's faults while they fit, then wait for the end."""
        self.stop.wait(min(_LEAD, self.config.duration / 5))
        for planned in plan:
            if self.stop.is_set():
                break
            start = self.now() + planned.pause
            # A fault must be over (resumed or restarted) well before the end.
            if start + planned.busy + 1.0 > self.end:
                break
            self.stop.wait(planned.pause)
            if self.stop.is_set():
                break
            # One fault at a time: also after an unplanned down-mark.
            self._wait(self.monitor.all_up, self.end)
            if self.stop.is_set() or self.now() + planned.busy + 1.0 > self.end:
                break
            self.inject(planned)
        self.stop.wait(max(0.0, self.end - self.now()))


def _phase_windows(events: Sequence[_Event], end: float) -> list[tuple[float, str]]:
    """``[(start, phase), ...]`` sorted by start: the phase from each start on."""
    marks: list[tuple[float, str]] = [(-math.inf, "healthy")]
    for e in events:
        fault_end = e.fault_end
        marks.append((e.injected_at, "fault"))
        if fault_end is None:
            continue
        marks.append((fault_end, "recovery"))
        marks.append((e.settled_at if e.settled_at is not None else end, "healthy"))
    return marks


def _phase_of(t: float, marks: list[tuple[float, str]]) -> str:
    i = bisect_right([m[0] for m in marks], t) - 1
    return marks[max(i, 0)][1]


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def _make_client(config: ChaosConfig, servers: list[str]) -> Client:
    """The client the workers share: a thread-face client, or with ``face="async"``
    an asyncio one on an event loop of its own, called through :class:`Looped`."""
    options: dict[str, Any] = {
        "failover": Failover("next", failover_ttl=config.failover_ttl),
        "timeouts": config.timeouts,
        "health": config.health,
    }
    if config.face == "async":
        cls: Any = AsyncBackupClient if config.mode == "backup" else AsyncClient
        looped: Any = Looped(cls(servers, **options), name="memring-chaos-loop")
        return looped  # type: ignore[no-any-return]
    if config.mode == "backup":
        return BackupClient(servers, **options)
    return Client(servers, **options)


def run_chaos(config: ChaosConfig | None = None, *, log: LogCallback | None = None,
              cluster_options: dict[str, Any] | None = None) -> ChaosReport:
    """Run the workload under faults for ``config.duration`` seconds; return the report.

    Starts ``config.nodes`` memcached processes on loopback (``cluster_options``
    go to :class:`~memring.tools.local.LocalCluster`) and stops every one of them by
    PID before returning, also on errors and Ctrl-C.
    """
    config = config or ChaosConfig()
    memory_mb = max(64, 4 * config.threads * config.keys_per_thread
                    * (config.value_size + 200) // (1 << 20))
    options = {"memory_mb": memory_mb, **(cluster_options or {})}
    cluster = LocalCluster(config.nodes, **options)
    cluster.start()
    client: Client | None = None
    workers: list[_Worker] = []
    threads: list[threading.Thread] = []
    run: _Run | None = None
    try:
        client = _make_client(config, cluster.servers)
        run = _Run(config, cluster, client, log)
        workers = [_Worker(run, i) for i in range(config.threads)]
        threads = [threading.Thread(target=w.main, name=f"memring-chaos-{w.index}", daemon=True)
                   for w in workers]
        run.say(f"{config.nodes} nodes on {', '.join(cluster.servers)}; mode {config.mode}; "
                f"{config.threads} threads x {config.keys_per_thread} keys")
        for t in threads:
            t.start()
        # Populate: each worker writes each of its keys once; then the clock starts.
        for w, t in zip(workers, threads, strict=True):
            while not w.populated.wait(0.05):
                if run.stop.is_set() or not t.is_alive():
                    break
        run.t0 = time.monotonic()
        run.end = config.duration
        for w in workers:  # populating came before the run: measure from now on
            w.starts, w.durations, w.kinds = array("d"), array("d"), array("b")
            w.errors.clear()
            w.unexpected_errors = 0
            w.examples.clear()
            w.example_counts.clear()
            w.slowest.clear()
            w.notes.clear()
            for key in w.keys:
                key.acked_start = -math.inf
        run.monitor._last = (run.now(), time.process_time())
        run.monitor.thread.start()
        run.ready.set()
        run.say("load running")
        run.drive(plan_faults(config))
    finally:
        if run is not None:
            run.stop.set()
            run.ready.set()
            if run.monitor.thread.is_alive():
                run.monitor.thread.join(timeout=5.0)
        bound = config.latency_bound + 5.0
        stuck = []
        for t in threads:
            t.join(timeout=bound)
            if t.is_alive():
                stuck.append(t.name)
        metrics = client.metrics() if client is not None else {}
        if client is not None:
            client.close()
        cluster.stop()
    assert run is not None
    for w in workers:
        if w.failure is not None:
            raise RuntimeError(f"chaos worker {w.index} failed: {w.failure!r}") from w.failure
    return _report(run, workers, metrics, stuck)


def _report(run: _Run, workers: list[_Worker], metrics: dict[str, Any],
            stuck: list[str]) -> ChaosReport:
    config = run.config
    elapsed = min(run.now(), max(run.end, 0.0)) if math.isfinite(run.end) else run.now()
    marks = _phase_windows(run.events, elapsed)
    starts_of_marks = [m[0] for m in marks]
    by_phase: dict[str, list[float]] = {p: [] for p in PHASES}
    ops_by_kind: Counter[str] = Counter()
    errors: Counter[str] = Counter()
    reads: Counter[str] = Counter()
    notes: Counter[str] = Counter()
    lost: set[str] = set()
    unexpected_lost: set[str] = set()
    nowait_lost: set[str] = set()
    examples: list[dict[str, Any]] = []
    slowest: list[tuple[float, float, str, str, str | None]] = []
    unexpected_errors = 0
    bound = config.latency_bound
    slow_calls = slow_in_stalls = 0
    max_latency = 0.0
    for w in workers:
        for start, duration, kind in zip(w.starts, w.durations, w.kinds, strict=True):
            i = bisect_right(starts_of_marks, start) - 1
            by_phase[marks[max(i, 0)][1]].append(duration)
            ops_by_kind[OPS[kind]] += 1
            if duration > bound:
                if duration - run.monitor.stall_within(start, start + duration) > bound:
                    slow_calls += 1
                else:
                    slow_in_stalls += 1
            max_latency = max(max_latency, duration)
        errors.update(w.errors)
        reads.update(w.reads)
        notes.update(w.notes)
        for miss in w.misses:
            key = miss.key
            lost.add(key.name)
            if config.mode == "next" and run.miss_expected(key.home, miss.acked_start,
                                                           miss.start):
                reads["lost_expected"] += 1
                continue
            if config.mode == "backup" and run.lost_to_nowait(key, miss.acked_start):
                reads["lost_expected"] += 1
                nowait_lost.add(key.name)
                continue
            reads["lost_unexpected"] += 1
            unexpected_lost.add(key.name)
            if miss.first and len([e for e in w.examples if e["what"] == "lost"]) < _EXAMPLES:
                w.examples.append({
                    "what": "lost", "key": key.name,
                    "owners": [n.label for n in run.client.ring.nodes_for(key.name, 2)],
                    "t": round(miss.start, 4), "acked": miss.acked,
                    "acked_at": _finite(miss.acked_start), "phase": _phase_of(miss.start, marks),
                    "writes": miss.writes, "reads": miss.reads})
        examples.extend(w.examples)
        slowest.extend(w.slowest)
        unexpected_errors += w.unexpected_errors
    latency = []
    for phase in PHASES:
        values = sorted(by_phase[phase])
        latency.append(PhaseLatency(
            phase, len(values), round(_percentile(values, 0.50) * 1000, 3),
            round(_percentile(values, 0.99) * 1000, 3),
            round((values[-1] if values else 0.0) * 1000, 3)))
    slowest.sort(key=lambda s: -s[1])
    slowest_out = [{"t": round(s[0], 4), "latency_ms": round(s[1] * 1000, 3), "op": s[2],
                    "key": s[3], "error": s[4], "phase": _phase_of(s[0], marks),
                    "stalled_ms": round(run.monitor.stall_within(s[0], s[0] + s[1]) * 1000, 3)}
                   for s in slowest[:_SLOWEST]]
    events = []
    n = config.nodes
    for index, e in enumerate(run.events):
        last = e.cycles[-1] if e.cycles else None
        # A flap's first cycle may be too short to notice (a hang shorter than
        # the read timeout fails no call): detection counts from the first
        # cycle that was noticed.
        noticed = next((c for c in e.cycles if c.detected_at is not None), None)
        detect = None
        if noticed is not None and noticed.detected_at is not None:
            detect = noticed.detected_at - noticed.injected_at
        recover = None
        if last is not None and last.back_at is not None and last.resumed_at is not None:
            recover = last.back_at - last.resumed_at
        fault_end = e.fault_end
        warm = None
        if e.settled_at is not None and fault_end is not None:
            warm = e.settled_at - fault_end
        checked = missing = victim = 0
        for w in workers:
            c = w.event_counts.get(index)
            if c is not None:
                checked, missing, victim = checked + c[0], missing + c[1], victim + c[2]
        events.append(FaultEvent(
            index=index + 1, kind=e.planned.kind, node=e.node.label,
            actions=[f"{c.action} {h:.2f}s" for c, (_, h, _) in
                     zip(e.cycles, e.planned.cycles, strict=False)],
            injected_at=round(e.injected_at, 4),
            hold_s=round(sum(h for _, h, _ in e.planned.cycles), 4),
            detect_s=None if detect is None else round(detect, 4),
            recover_s=None if recover is None else round(recover, 4),
            warm_s=None if warm is None else round(warm, 4),
            keys_checked=checked, keys_missing=missing, victim_keys=victim,
            expected_fraction=0.0 if config.mode == "backup" else 1 / n,
            expected_is_bound=config.mode == "next" and e.planned.cycles[0][0] == "hang",
            rolled=[run.cluster[i].node.label for i in e.planned.nodes],
            waits_s=[None if w is None else round(w, 3) for w in e.waits],
        ))
    report = ChaosReport(
        config=config, elapsed_s=round(elapsed, 4), ops=sum(ops_by_kind.values()),
        ops_by_kind={op: ops_by_kind.get(op, 0) for op in OPS}, errors=dict(errors),
        unexpected_errors=unexpected_errors,
        reads={k: reads.get(k, 0) for k in
               ("ok", "stale", "resurrected", "lost_expected", "lost_unexpected")},
        lost_keys=len(lost), unexpected_lost_keys=len(unexpected_lost),
        nowait_lost_keys=len(nowait_lost), latency=latency,
        max_latency_s=round(max_latency, 4), slow_calls=slow_calls,
        slow_calls_in_stalls=slow_in_stalls,
        max_stall_s=round(max((f for _, _, f in run.monitor.stalls), default=0.0), 4),
        slowest=slowest_out,
        events=events, client_metrics=_plain(metrics), examples=examples, notes=dict(notes),
    )
    for t, node in run.unplanned:
        back = next((b for d, b in run.monitor.downs[node.label] if d == t), None)
        report.unplanned_downs.append({
            "node": node.label, "t": round(t, 4),
            "down_s": None if back is None else round(back - t, 4)})
    report.multi_downs = _multi_downs(run.monitor.downs, elapsed)
    report.skipped_faults = skipped_faults(config, [e.planned.kind for e in run.events])
    report.servers = list(run.cluster.servers)
    report.pids = list(run.pids)
    report.violations = _violations(report, stuck)
    return report


def skipped_faults(config: ChaosConfig, injected: Sequence[str]) -> dict[str, str]:
    """``{kind: why}`` for each kind of ``config.faults`` not among the ``injected`` kinds."""
    fit = fit_schedule(config)
    return {kind: fit.reason(kind) for kind in config.faults if kind not in injected}


def _violations(r: ChaosReport, stuck: list[str]) -> list[str]:
    out = []
    if r.stale_reads:
        out.append(f"{r.stale_reads} stale reads (Invariant S)")
    if r.resurrected_deletes:
        out.append(f"{r.resurrected_deletes} reads of deleted keys (Invariant S)")
    if r.config.mode == "backup" and r.lost_keys - r.nowait_lost_keys:
        out.append(f"{r.lost_keys - r.nowait_lost_keys} keys lost in backup mode "
                   f"({r.reads['lost_expected'] + r.reads['lost_unexpected']} reads missed); "
                   "0 is promised with one fault at a time")
    elif r.unexpected_lost_keys:
        out.append(f"{r.unexpected_lost_keys} keys lost whose home node had not failed "
                   f"since they were written ({r.reads['lost_unexpected']} reads missed)")
    if r.unexpected_errors:
        shown = ", ".join(f"{k} x{v}" for k, v in sorted(r.errors.items()))
        out.append(f"{r.unexpected_errors} errors reached the caller ({shown})")
    if r.slow_calls:
        out.append(f"{r.slow_calls} calls took longer than the bound of "
                   f"{r.latency_bound_s * 1000:.0f} ms (slowest {r.max_latency_s * 1000:.0f} ms)")
    if stuck:
        out.append(f"worker threads did not stop: {', '.join(stuck)}")
    return out


def _multi_downs(downs: dict[str, list[list[float | None]]],
                 end: float) -> list[dict[str, Any]]:
    """When two or more nodes were down at once in the client's view.

    One fault at a time is the premise of Invariant S and of the loss
    promises; a machine that freezes for longer than a read timeout breaks
    it by itself (every node misses its timeout).
    """
    marks: list[tuple[float, int, str]] = []
    for label, intervals in downs.items():
        for a, b in intervals:
            assert a is not None
            marks.append((a, 1, label))
            marks.append((b if b is not None else end, -1, label))
    marks.sort(key=lambda m: (m[0], m[1]))
    out: list[dict[str, Any]] = []
    down: set[str] = set()
    start = 0.0
    for t, step, label in marks:
        if step > 0:
            down.add(label)
            if len(down) == 2:
                start = t
                out.append({"t": round(t, 4), "nodes": sorted(down), "for_s": 0.0})
            elif len(down) > 2 and out:
                out[-1]["nodes"] = sorted(set(out[-1]["nodes"]) | down)
        else:
            if len(down) == 2 and out:
                out[-1]["for_s"] = round(t - start, 4)
            down.discard(label)
    return out


def _finite(t: float) -> float | None:
    """A time for the report; None for "before the run"."""
    return round(t, 4) if math.isfinite(t) else None


def _plain(value: Any) -> Any:
    """``value`` with every key a str, for JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------
# output


def format_report(report: ChaosReport, fmt: str = "table") -> str:
    """The report as ``"table"`` (for people) or ``"json"``; ends with a newline."""
    if fmt == "json":
        return json.dumps(report.as_dict(), indent=2) + "\n"
    if fmt != "table":
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    return _format_table(report)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _format_table(r: ChaosReport) -> str:
    c = r.config
    lines = [
        f"memring chaos: mode {c.mode} ({c.face} face), {c.nodes} nodes, {c.threads} threads x "
        f"{c.keys_per_thread} keys, {r.elapsed_s:.1f} s, seed {c.seed}, faults "
        f"{','.join(c.faults) or 'none'}",
        f"timeouts connect {c.timeouts.connect:g} s / read {c.timeouts.read:g} s, "
        f"failure_threshold {c.health.failure_threshold}, failover_ttl {c.failover_ttl} s, "
        f"rate {f'{c.rate:,.0f} ops/s' if c.rate else 'unlimited'}",
        "",
        f"ops        {r.ops:,} ({r.ops_per_s:,.0f}/s): "
        + ", ".join(f"{k} {v:,}" for k, v in r.ops_by_kind.items()),
        "errors     " + (", ".join(f"{k} x{v}" for k, v in sorted(r.errors.items())) or "none")
        + (f" ({r.unexpected_errors} unexpected)" if r.unexpected_errors else ""),
        f"reads      ok {r.reads['ok']:,}, stale {r.stale_reads}, "
        f"resurrected {r.resurrected_deletes}, missed {r.reads['lost_expected']:,} expected "
        f"+ {r.reads['lost_unexpected']:,} unexpected",
        f"keys lost  {r.lost_keys:,} (unexpected {r.unexpected_lost_keys:,}"
        + (f"; {r.nowait_lost_keys:,} to a rolling restart that did not wait for redundancy"
           if r.nowait_lost_keys else "") + "); promised: "
        + ("none (backup, one fault at a time)" if c.mode == "backup"
           else "only keys of a failed node (about 1/N per kill)"),
        "",
        f"{'latency':<10} {'ops':>9} {'p50':>9} {'p99':>9} {'max':>9}",
    ]
    for p in r.latency:
        lines.append(f"{p.phase:<10} {p.ops:>9,} {p.p50_ms:>6.2f} ms {p.p99_ms:>6.1f} ms "
                     f"{p.max_ms:>6.0f} ms")
    lines.append(f"bound      {r.latency_bound_s * 1000:.0f} ms per call (connect + read "
                 f"timeout + {c.latency_margin * 1000:.0f} ms); slowest "
                 f"{r.max_latency_s * 1000:.0f} ms; {r.slow_calls} over")
    if r.max_stall_s:
        lines.append(f"stalls     the process was frozen for up to {r.max_stall_s * 1000:.0f} ms "
                     f"at a time (machine overloaded); {r.slow_calls_in_stalls} slow call(s) "
                     "are explained by that and not counted")
    lines.append("")
    if r.events:
        lines.append(f"{'#':>2} {'t':>6}  {'fault':<8} {'node':<16} {'hold':>6} {'detect':>8} "
                     f"{'recover':>8} {'warm':>7} {'checked':>7} {'missed':>7} {'victim':>7} "
                     f"{'promise':>7}")
        for e in r.events:
            promise = ("<=" if e.expected_is_bound else "") + f"{e.expected_fraction:.0%}"
            lines.append(
                f"{e.index:>2} {e.injected_at:>5.1f}s  {e.kind:<8} {e.node:<16} "
                f"{e.hold_s:>5.2f}s {_ms(e.detect_s):>8} {_ms(e.recover_s):>8} "
                f"{'-' if e.warm_s is None else f'{e.warm_s:.1f} s':>7} {e.keys_checked:>7,} "
                f"{e.missing_fraction:>7.1%} {e.victim_share:>7.1%} {promise:>7}")
    else:
        lines.append("no fault injected")
    for e in r.events:
        if e.rolled:
            waits = ", ".join(f"{n} {'-' if w is None else f'{w:.2f}s'}"
                              for n, w in zip(e.rolled, e.waits_s, strict=False))
            lines.append(f"rolling    #{e.index} {e.kind}: waited for redundancy after each "
                         f"restart: {waits}")
    for kind, why in r.skipped_faults.items():
        lines.append(f"skipped    {kind}: {why}")
    for u in r.unplanned_downs:
        lines.append(f"unplanned  {u['node']} marked down at {u['t']:.2f}s for "
                     f"{'?' if u['down_s'] is None else format(u['down_s'], '.2f')}s "
                     "with no fault injected (a slow call timed out)")
    lines.append("")
    if r.ok:
        lines.append("result     OK: no invariant broken")
    else:
        lines.append(f"result     FAILED: {len(r.violations)} invariant(s) broken")
        lines.extend(f"  - {v}" for v in r.violations)
        if r.unplanned_downs:
            lines.append(f"  note: {len(r.unplanned_downs)} down-mark(s) of healthy nodes (see "
                         "'unplanned' above): faults were not always one at a time")
        for m in r.multi_downs:
            lines.append(f"  note: at {m['t']:.2f}s {len(m['nodes'])} nodes were down at once "
                         f"for {m['for_s']:.2f}s; the invariants assume one at a time")
        for ex in r.examples[:10]:
            lines.append("    e.g. " + ", ".join(f"{k}={v}" for k, v in ex.items()))
    return "\n".join(lines) + "\n"
