"""Per-node health: failure counting, the up/down/warming state, probe scheduling.

States, as one client sees one node::

    UP ──(failure_threshold consecutive failures)──> DOWN
    DOWN ──(answers two probes; Failover("next"))──> WARMING ──(failover_ttl + margin)──> UP
    DOWN ──(answers two probes; Failover("fail"))──> UP

A DOWN node is never contacted on the request path: the engine's
background work probes it (``stats``) with the backoff of
:class:`~memring.engine.policies.HealthPolicy`, and keeps the copies of its
keys alive every ``keepalive_seconds``. This module holds the state and the
timetable only; it does no I/O and starts no thread: the engine runs the
probes as operations, on whichever face (threads or asyncio) drives it.
"""

from __future__ import annotations

import enum
import logging
import random
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from memring.engine.policies import Failover, HealthPolicy
from memring.errors import MemringError, NodeTimeout, NodeUnavailable
from memring.hashring.node import Node

__all__ = ["Clock", "HealthMonitor", "NodeHealth", "NodeState", "NodeStatus", "SystemClock"]

log = logging.getLogger("memring")

#: A down node must answer two probes this many seconds apart to come back:
#: a node that hung applies the commands still in its sockets' buffers as
#: soon as it runs again, and they must have landed before anything is
#: settled on it.
RETURN_GRACE = 0.1
#: A memcached process reports an uptime of about 2 s right after it starts.
UPTIME_AT_START = 3.0


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def time(self) -> float: ...


class SystemClock:
    import time as _time

    monotonic = staticmethod(_time.monotonic)
    time = staticmethod(_time.time)


class NodeState(str, enum.Enum):
    """One node's state, as one client sees it."""

    #: Answering; calls go to it.
    UP = "up"
    #: Failed; never contacted on the request path, probed in the background.
    DOWN = "down"
    #: Back after being down: for ``failover_ttl`` (+ a margin) reads of its
    #: keys also consult the node that stood in for it, and the newer wins.
    WARMING = "warming"


@dataclass(frozen=True)
class NodeStatus:
    """One node's health and counters, as ``Client.health()`` reports them."""

    #: The node.
    node: Node
    #: Its state as this client sees it.
    state: NodeState
    #: Failed calls in a row (reset by an answer).
    consecutive_failures: int
    #: Why the node is down, or the last call that failed since it last came back.
    last_error: str | None
    #: Seconds since it went down (DOWN only).
    down_for: float | None
    #: Seconds of warming left (WARMING only).
    warming_for: float | None
    #: The memcached process id and uptime (seconds), from its last ``stats``.
    pid: int | None
    uptime: int | None
    #: Whether it restarted (empty) when it last came back: True, False, or
    #: None when that could not be told (or it never went down).
    restarted: bool | None
    #: Calls made, and how many failed, timed out, and were sent elsewhere
    #: because it was down; how often its state changed.
    ops: int
    errors: int
    timeouts: int
    failovers: int
    state_changes: int
    #: Backup mode: whether every key it co-owns has its copy there
    #: (``"complete"``), it is being rebuilt after a restart
    #: (``"rebuilding"``), or it is down or warming with copies still to
    #: settle (``"degraded"``). None for the single-copy client.
    redundancy: str | None = None
    #: Backup mode: keys copied back onto it by the last rebuild, and the
    #: keys that rebuild found to copy (None before any rebuild).
    rebuilt_keys: int | None = None
    rebuild_total: int | None = None


class NodeHealth:
    """One node's live health record. The monitor owns it; the client's fast
    path reads ``state`` and calls :meth:`succeeded` on it directly."""

    __slots__ = (
        "answered_at", "checking", "down_at", "errors", "failovers", "failures", "last_error",
        "lock", "next_down_call_at", "next_probe_at", "node", "ops", "pid", "probe_attempt",
        "probing", "restarted", "state", "state_changes", "timeouts", "trust_after_ms",
        "uptime", "uptime_at", "warm_until",
    )

    def __init__(self, node: Node) -> None:
        self.node = node
        self.lock = threading.Lock()
        self.state = NodeState.UP
        self.failures = 0
        self.last_error: str | None = None
        self.down_at = 0.0
        self.next_probe_at = 0.0
        self.next_down_call_at = 0.0
        self.probe_attempt = 0
        self.probing = False
        self.warm_until = 0.0
        #: While warming: items it holds with a version from before this wall
        #: time (ms) may predate writes made elsewhere during its outage.
        self.trust_after_ms = 0
        self.pid: int | None = None
        self.uptime: int | None = None
        self.uptime_at = 0.0
        self.restarted: bool | None = None
        self.ops = self.errors = self.timeouts = self.failovers = self.state_changes = 0
        self.checking = False
        self.answered_at: float | None = None

    def succeeded(self) -> None:
        """Count a call that the node answered."""
        if self.failures:
            with self.lock:
                self.failures = 0
        self.ops += 1  # approximate under contention, like every hot-path counter


class HealthMonitor:
    """Every node's state for one client, and when each down node is due a probe."""

    def __init__(
        self,
        nodes: Iterable[Node],
        *,
        policy: HealthPolicy,
        failover: Failover,
        clock: Clock,
        wall_ms: Callable[[], int],
        on_change: Callable[[], None] = lambda: None,
        rng: random.Random | None = None,
    ) -> None:
        self._policy = policy
        self._failover = failover
        self._clock = clock
        self._wall_ms = wall_ms
        self._started = clock.monotonic()
        self._rng = rng or random.Random()
        self._nodes = {node: NodeHealth(node) for node in nodes}
        #: Called when a node goes down or needs a restart check: the face
        #: wakes its background runner.
        self.on_change = on_change

    # -- hot path -------------------------------------------------------
    def state(self, node: Node) -> NodeState:
        h = self._nodes[node]
        state = h.state
        if state is NodeState.WARMING and self._clock.monotonic() >= h.warm_until:
            with h.lock:
                if h.state is NodeState.WARMING and self._clock.monotonic() >= h.warm_until:
                    self._set_state(h, NodeState.UP, "warming window over")
            return h.state
        return state

    def is_down(self, node: Node) -> bool:
        return self._nodes[node].state is NodeState.DOWN

    def record(self, node: Node) -> NodeHealth:
        """``node``'s live record (its ``state`` is exact except for a warming
        window that is over: :meth:`state` ends that)."""
        return self._nodes[node]

    def records(self) -> Mapping[Node, NodeHealth]:
        return self._nodes

    def record_failure(self, node: Node, exc: MemringError) -> bool:
        """Count a failed call; returns True if the node is (now) down."""
        h = self._nodes[node]
        with h.lock:
            h.ops += 1
            h.errors += 1
            if isinstance(exc, NodeTimeout):
                h.timeouts += 1
            if not isinstance(exc, NodeUnavailable):
                return h.state is NodeState.DOWN
            h.failures += 1
            h.last_error = str(exc)
            if h.state is NodeState.DOWN or h.failures < self._policy.failure_threshold:
                return h.state is NodeState.DOWN
            now = self._clock.monotonic()
            h.down_at = now
            h.answered_at = None
            h.probe_attempt = 0
            h.next_probe_at = now + self._policy.delay(0, self._rng)
            h.next_down_call_at = now  # at once: hints kept from a failed handoff
            self._set_state(h, NodeState.DOWN, str(exc))
        self.on_change()
        return True

    def record_failover(self, node: Node) -> None:
        self._nodes[node].failovers += 1  # approximate, like ops

    # -- probing ---------------------------------------------------------
    def _set_state(self, h: NodeHealth, state: NodeState, why: str) -> None:
        old, h.state = h.state, state
        h.state_changes += 1
        level = logging.WARNING if state is NodeState.DOWN else logging.INFO
        log.log(level, "node %s: %s -> %s (%s)", h.node.label, old.value, state.value, why,
                extra={"memring_node": h.node.label, "memring_state": state.value})

    def due(self) -> tuple[list[Node], list[Node], float | None]:
        """Down nodes due a probe now, down nodes due their keep-alive call now,
        and seconds until the next one is due (None: no node is down)."""
        now = self._clock.monotonic()
        probes: list[Node] = []
        calls: list[Node] = []
        wait: float | None = None
        for node, h in self._nodes.items():
            if h.state is not NodeState.DOWN:
                continue
            with h.lock:
                if h.next_probe_at <= now and not h.probing:
                    h.probing = True
                    probes.append(node)
                if h.next_down_call_at <= now:
                    h.next_down_call_at = now + self._failover.keepalive_seconds
                    calls.append(node)
                soonest = min(h.next_probe_at, h.next_down_call_at) - now
            wait = soonest if wait is None else min(wait, soonest)
        return probes, calls, None if wait is None else max(0.0, wait)

    def probed(self, node: Node, stats: Any) -> tuple[bool, bool | None]:
        """The outcome of a probe of a down node: its ``stats``, or the error it raised.

        Returns ``(back, restarted)``: ``back`` is False while the node stays
        down (or must answer once more); once it is back (WARMING with
        ``Failover("next")``, else UP), ``restarted`` says whether it restarted
        empty (None if that can't be told).
        """
        h = self._nodes[node]
        now = self._clock.monotonic()
        with h.lock:
            h.probing = False
            if h.state is not NodeState.DOWN:
                return False, None
            if isinstance(stats, BaseException):
                h.probe_attempt += 1
                h.answered_at = None
                h.last_error = str(stats)
                h.next_probe_at = now + self._policy.delay(h.probe_attempt, self._rng)
                log.debug("probe of %s failed: %s", node.label, stats)
                return False, None
            if h.answered_at is None or now - h.answered_at < RETURN_GRACE:
                if h.answered_at is None:
                    h.answered_at = now
                h.next_probe_at = h.answered_at + RETURN_GRACE
                return False, None
            pid, uptime = _int(stats.get(b"pid")), _int(stats.get(b"uptime"))
            down_for = now - h.down_at
            if h.pid is not None and pid is not None:
                restarted: bool | None = pid != h.pid
            elif uptime is not None:
                restarted = uptime < down_for + UPTIME_AT_START
            else:
                restarted = None
            h.pid, h.uptime, h.uptime_at, h.restarted = pid, uptime, now, restarted
            h.failures = 0
            h.answered_at = None
            h.last_error = None
            how = {True: "restarted empty", False: "resumed with its data", None: "answers"}
            why = f"{how[restarted]} after {down_for:.1f}s down"
            if self._failover.mode == "next":
                h.warm_until = now + self._failover.warming_seconds
                h.trust_after_ms = self._wall_ms() + int(1000 * (
                    self._policy.slowest_probe + RETURN_GRACE + 1.0))
                self._set_state(h, NodeState.WARMING, why)
            else:
                self._set_state(h, NodeState.UP, why)
        return True, restarted

    def note_stats(self, node: Node, stats: Mapping[bytes, Any], *, infer: bool = False) -> bool:
        """Record a ``stats`` reply of a node that is not down. True if it
        restarted since this client last knew its pid (it lost its keys).

        ``infer``: with no pid known yet, take a node that started after this
        client as restarted (a call found its connections closed: it did).
        """
        h = self._nodes[node]
        pid, uptime = _int(stats.get(b"pid")), _int(stats.get(b"uptime"))
        with h.lock:
            if h.pid is not None and pid is not None:
                restarted = pid != h.pid
            else:  # started after this client did: it restarted since
                restarted = infer and uptime is not None and (
                    uptime < self._clock.monotonic() - self._started + UPTIME_AT_START)
            h.pid, h.uptime, h.uptime_at = pid, uptime, self._clock.monotonic()
            if restarted and h.state is NodeState.UP:
                h.restarted = True
                return True
        return False

    def uptime(self, node: Node) -> float | None:
        """The node's uptime now, as far as its last ``stats`` tells."""
        h = self._nodes[node]
        if h.uptime is None:
            return None
        return h.uptime + self._clock.monotonic() - h.uptime_at

    def begin_restart_check(self, node: Node) -> bool:
        """A call found ``node``'s pooled connections closed: it may have
        restarted between two calls. True if a check should run now."""
        h = self._nodes[node]
        with h.lock:
            if h.checking:
                return False
            h.checking = True
        self.on_change()
        return True

    def end_restart_check(self, node: Node) -> None:
        self._nodes[node].checking = False

    def checks_due(self) -> list[Node]:
        return [n for n, h in self._nodes.items() if h.checking]

    # -- reporting -------------------------------------------------------
    def status(self, node: Node, **extra: Any) -> NodeStatus:
        state = self.state(node)
        h = self._nodes[node]
        now = self._clock.monotonic()
        uptime = self.uptime(node)
        return NodeStatus(
            node=node, state=state, consecutive_failures=h.failures, last_error=h.last_error,
            down_for=now - h.down_at if state is NodeState.DOWN else None,
            warming_for=max(0.0, h.warm_until - now) if state is NodeState.WARMING else None,
            pid=h.pid, uptime=None if uptime is None else int(uptime), restarted=h.restarted,
            ops=h.ops, errors=h.errors, timeouts=h.timeouts, failovers=h.failovers,
            state_changes=h.state_changes, **extra,
        )

    def nodes(self) -> Iterable[Node]:
        return self._nodes.keys()

    def after_fork(self) -> None:
        """Locks another thread held at fork time stay held in the child: new ones."""
        for h in self._nodes.values():
            h.lock = threading.Lock()
            h.probing = False
            h.checking = False


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return None
