"""The settings of a chaos run and its fault schedule.

The constants (fault kinds, modes, faces, formats, phases, ops, and the
timing of the injector and the workload), :class:`ChaosConfig`, and the
schedule drawn from its seed: :func:`plan_faults`, :func:`fit_schedule` and
:func:`skipped_faults`.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from memring import Failover, HealthPolicy, Timeouts
from memring.errors import ConfigError

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
#: Latency phases (see the docstring of :mod:`memring.tools.chaos`).
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


def skipped_faults(config: ChaosConfig, injected: Sequence[str]) -> dict[str, str]:
    """``{kind: why}`` for each kind of ``config.faults`` not among the ``injected`` kinds."""
    fit = fit_schedule(config)
    return {kind: fit.reason(kind) for kind in config.faults if kind not in injected}
