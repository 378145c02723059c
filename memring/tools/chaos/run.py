"""One chaos run: fault injection, :func:`run_chaos`, and the report of a run.

:class:`_Run` holds the cluster, the shared client and the faults injected
so far (:class:`_Event`, :class:`_Cycle`), and injects the schedule's faults
one at a time; :func:`_report` turns what the workers and the monitor
recorded into a :class:`~memring.tools.chaos.report.ChaosReport`.
"""

from __future__ import annotations

import math
import threading
import time
from array import array
from bisect import bisect_right
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, cast

from memring import (
    AsyncBackupClient,
    AsyncClient,
    BackupClient,
    Client,
    Failover,
    NodeState,
)
from memring.errors import MemringError, NodeUnavailable
from memring.hashring import Node
from memring.tools.chaos.config import (
    _EXAMPLES,
    _LATE_DETECTION,
    _LEAD,
    _NOWAIT_GAP,
    _POLL,
    _RECOVER_LIMIT,
    _REDUNDANCY_LIMIT,
    _SLACK,
    _SLOWEST,
    OPS,
    PHASES,
    ChaosConfig,
    LogCallback,
    PlannedFault,
    plan_faults,
    skipped_faults,
)
from memring.tools.chaos.report import (
    ChaosReport,
    FaultEvent,
    PhaseLatency,
    _finite,
    _multi_downs,
    _percentile,
    _plain,
    _violations,
)
from memring.tools.chaos.workload import _Key, _Monitor, _Worker
from memring.tools.local import LocalCluster
from memring.tools.looped import Looped


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
        if self.config.mode == "backup" and any(
                action == "kill" for action, _, _ in planned.cycles):
            # A node that restarted empty holds one copy of its keys until its
            # rebuild is done: the fault lasts until then (one fault at a time),
            # as a rolling restart that waits does.
            self._wait_redundant(f"fault {len(self.events)}")
        del self.active[node]

    def _wait_redundant(self, what: str) -> float:
        """Wait (at most :data:`_REDUNDANCY_LIMIT`) until the backup client has two
        copies of every key again, and say so; the seconds waited."""
        start = self.now()
        try:  # a BackupClient, or an AsyncBackupClient behind Looped
            cast(BackupClient, self.client).wait_redundant(timeout=_REDUNDANCY_LIMIT)
        except MemringError as exc:
            self.say(f"{what}: redundancy not back: {exc}")
        else:
            self.say(f"{what}: redundancy back after {self.now() - start:.2f}s")
        return self.now() - start

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
            elif self.config.mode == "backup":
                event.waits.append(self._wait_redundant(f"{proc.node.label} restarted"))
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
