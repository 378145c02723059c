"""The workload of a chaos run: the worker threads and the health monitor.

Each :class:`_Worker` calls the shared client on keys of its own
(:class:`_Key`), classifies every read, and keeps the misses (:class:`_Miss`)
to be judged after the run; :class:`_Monitor` records each node's down
intervals in the client's view.
"""

from __future__ import annotations

import math
import random
import threading
import time
from array import array
from bisect import bisect_right
from collections import Counter, deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memring import NodeState
from memring.hashring import Node
from memring.tools.chaos.config import (
    _EXAMPLES,
    _HISTORY,
    _MAX_OPS_PER_THREAD,
    _OP_CUMULATIVE,
    _POLL,
    _SLOWEST,
    _STALL,
    OPS,
    SESSION_EXPIRE,
)

if TYPE_CHECKING:
    # For annotations only: run.py imports this module at run time, not the other way round.
    from memring.tools.chaos.run import _Run


_MISS = object()


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
# the health monitor


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
