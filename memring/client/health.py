"""Per-node health: failure counting, down/warming/up state, recovery probes.

States::

    UP ──(failure_threshold consecutive failures)──> DOWN
    DOWN ──(probe answers; Failover("next"))──> WARMING ──(failover_ttl + margin)──> UP
    DOWN ──(probe answers; Failover("fail"))──> UP

A DOWN node is never contacted on the request path. One background thread
probes down nodes with ``version`` + ``stats`` (at most one probe per node at
a time), with the backoff of :class:`~memring.client.policies.HealthPolicy`.
The same thread calls ``on_down(node)`` every ``down_interval`` seconds while
a node stays down (the client keeps its failover copies alive with it).
"""

from __future__ import annotations

import enum
import logging
import random
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from memring.client.policies import Failover, HealthPolicy
from memring.client.transport import NodeTransport
from memring.errors import MemringError, NodeTimeout, NodeUnavailable
from memring.hashring.node import Node

__all__ = ["Clock", "HealthMonitor", "NodeState", "NodeStatus", "SystemClock"]

log = logging.getLogger("memring")

#: A down node must answer two probes this many seconds apart to come back.
_RETURN_GRACE = 0.25
#: A memcached process reports an uptime of about 2 s right after it starts.
_UPTIME_AT_START = 3.0


class Clock(Protocol):
    def monotonic(self) -> float: ...
    def time(self) -> float: ...


class SystemClock:
    monotonic = staticmethod(time.monotonic)
    time = staticmethod(time.time)


class NodeState(str, enum.Enum):
    UP = "up"
    DOWN = "down"
    WARMING = "warming"


@dataclass(frozen=True)
class NodeStatus:
    """A snapshot of one node's health and counters, as ``Client.health()`` returns it."""

    node: Node
    state: NodeState
    consecutive_failures: int
    last_error: str | None
    down_for: float | None
    warming_for: float | None
    pid: int | None
    uptime: int | None
    restarted: bool | None
    ops: int
    errors: int
    timeouts: int
    failovers: int
    state_changes: int


class NodeHealth:
    """One node's live health record. The monitor owns it; a client's fast
    path reads ``state`` and calls :meth:`succeeded` on it directly."""

    __slots__ = (
        "answered_at", "checking",
        "down_at", "errors", "failovers", "failures", "last_error", "lock", "next_down_call_at",
        "next_probe_at", "node", "ops", "pid", "probe_attempt", "restarted", "state",
        "state_changes", "timeouts", "uptime", "warm_until",
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
        self.warm_until = 0.0
        self.pid: int | None = None
        self.uptime: int | None = None
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
    """Tracks every node's state for one client and runs its recovery probes."""

    def __init__(
        self,
        transports: dict[Node, NodeTransport],
        *,
        policy: HealthPolicy,
        failover: Failover,
        clock: Clock,
        on_return: Callable[[Node, bool | None], None] | None = None,
        on_restart: Callable[[Node], None] | None = None,
        on_down: Callable[[Node], None] | None = None,
        down_interval: float | None = None,
        background: bool = True,
        rng: random.Random | None = None,
    ) -> None:
        self._transports = transports
        self._policy = policy
        self._failover = failover
        self._clock = clock
        self._on_return = on_return
        self._on_restart = on_restart
        self._started = clock.monotonic()
        self._on_down = on_down if down_interval is not None else None
        self._down_interval = down_interval or 0.0
        self._rng = rng or random.Random()
        self._nodes = {node: NodeHealth(node) for node in transports}
        self._background = background
        self._wake = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

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

    def record_failure(self, node: Node, exc: MemringError) -> bool:
        """Count a failed call; returns True if the node is (now) down."""
        h = self._nodes[node]
        timeout = isinstance(exc, NodeTimeout)
        with h.lock:
            h.ops += 1
            h.errors += 1
            if timeout:
                h.timeouts += 1
            if not isinstance(exc, NodeUnavailable):
                return h.state is NodeState.DOWN
            h.failures += 1
            h.last_error = str(exc)
            if h.state is not NodeState.DOWN and h.failures >= self._policy.failure_threshold:
                now = self._clock.monotonic()
                h.down_at = now
                h.answered_at = None
                h.probe_attempt = 0
                h.next_probe_at = now + self._policy.delay(0, self._rng)
                h.next_down_call_at = now  # at once: hints kept from a failed handoff
                self._set_state(h, NodeState.DOWN, str(exc))
                marked = True
            else:
                marked = False
            down = h.state is NodeState.DOWN
        if marked:
            self._kick()
        return down

    def record_failover(self, node: Node) -> None:
        h = self._nodes[node]
        with h.lock:
            h.failovers += 1

    # -- probing ---------------------------------------------------------
    def _set_state(self, h: NodeHealth, state: NodeState, why: str) -> None:
        old, h.state = h.state, state
        h.state_changes += 1
        level = logging.WARNING if state is NodeState.DOWN else logging.INFO
        log.log(level, "node %s: %s -> %s (%s)", h.node.label, old.value, state.value, why,
                extra={"memring_node": h.node.label, "memring_state": state.value})

    def probe(self, node: Node) -> bool:
        """Probe one down node now; on an answer, bring it back. Returns True if it is back."""
        h = self._nodes[node]
        transport = self._transports[node]
        try:
            transport.version()
            stats = transport.stats()
        except MemringError as exc:
            with h.lock:
                h.probe_attempt += 1
                h.answered_at = None
                h.last_error = str(exc)
                h.next_probe_at = self._clock.monotonic() + self._policy.delay(
                    h.probe_attempt, self._rng)
            log.debug("probe of %s failed: %s", node.label, exc)
            return False
        pid = _int(stats.get(b"pid"))
        uptime = _int(stats.get(b"uptime"))
        with h.lock:
            if h.state is not NodeState.DOWN:
                return True
            now = self._clock.monotonic()
            if h.answered_at is None or now - h.answered_at < _RETURN_GRACE:
                # A node that hung applies the commands still in its sockets'
                # buffers as soon as it runs again. Let it finish them, and
                # answer once more, before anything is settled on it.
                if h.answered_at is None:
                    h.answered_at = now
                h.next_probe_at = h.answered_at + _RETURN_GRACE
                return False
            h.answered_at = None
            down_for = now - h.down_at
            if h.pid is not None and pid is not None:
                restarted: bool | None = pid != h.pid
            elif uptime is not None:
                # memcached's uptime starts at 2 s, not 0
                restarted = uptime < down_for + _UPTIME_AT_START
            else:
                restarted = None
            h.pid, h.uptime, h.restarted = pid, uptime, restarted
            h.failures = 0
            how = {True: "restarted empty", False: "resumed with its data", None: "answers"}
            why = f"{how[restarted]} after {down_for:.1f}s down"
            if self._failover.mode == "next":
                h.warm_until = now + self._failover.warming_seconds
                self._set_state(h, NodeState.WARMING, why)
            else:
                self._set_state(h, NodeState.UP, why)
        if self._on_return is not None:
            self._on_return(node, restarted)
        return True

    def note_reconnect(self, node: Node) -> None:
        """A call found ``node``'s pooled connections closed by the server.

        It may have restarted (empty) between two calls, too fast to be seen
        down. Check its ``stats``, off the request path, and call
        ``on_restart`` if it did.
        """
        h = self._nodes[node]
        with h.lock:
            if h.checking or self._closed:
                return
            h.checking = True
        if self._background:
            threading.Thread(target=self._check_restart, args=(node,),
                             name="memring-restart-check", daemon=True).start()
        else:
            self._check_restart(node)

    def _check_restart(self, node: Node) -> None:
        h = self._nodes[node]
        try:
            stats = self._transports[node].stats()
        except MemringError:
            return  # a failing node is the request path's business
        finally:
            h.checking = False
        pid = _int(stats.get(b"pid"))
        uptime = _int(stats.get(b"uptime"))
        with h.lock:
            if h.pid is not None and pid is not None:
                restarted = pid != h.pid
            else:  # started after this client did: it restarted since
                restarted = uptime is not None and (
                    uptime < self._clock.monotonic() - self._started + _UPTIME_AT_START)
            h.pid, h.uptime = pid, uptime
            if not restarted or h.state is not NodeState.UP:
                return
            h.restarted = True
        log.warning("node %s restarted (empty) between two calls", node.label,
                    extra={"memring_node": node.label})
        if self._on_restart is not None:
            self._on_restart(node)

    def probe_due(self) -> float | None:
        """Probe every down node whose time has come, and call ``on_down`` where it is due.

        Returns seconds to the next due probe or call, or None if no node is down.
        """
        now = self._clock.monotonic()
        next_due: float | None = None
        for node, h in self._nodes.items():
            if h.state is not NodeState.DOWN:
                continue
            if h.next_probe_at <= now and self.probe(node):
                continue
            due = h.next_probe_at
            if self._on_down is not None and h.state is NodeState.DOWN:
                if h.next_down_call_at <= self._clock.monotonic():
                    h.next_down_call_at = self._clock.monotonic() + self._down_interval
                    try:
                        self._on_down(node)
                    except Exception:  # the prober must keep running
                        log.exception("on_down(%s) failed", node.label)
                due = min(due, h.next_down_call_at)
            if h.state is NodeState.DOWN:
                wait = max(0.0, due - self._clock.monotonic())
                next_due = wait if next_due is None else min(next_due, wait)
        return next_due

    def _kick(self) -> None:
        if not self._background or self._closed:
            return
        with self._wake:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="memring-prober", daemon=True)
                self._thread.start()
            self._wake.notify_all()

    def _run(self) -> None:
        while not self._closed:
            wait = self.probe_due()
            if wait is None:
                with self._wake:
                    if not self._closed and not any(
                            h.state is NodeState.DOWN for h in self._nodes.values()):
                        self._thread = None
                        return
                continue
            with self._wake:
                if not self._closed:
                    self._wake.wait(timeout=max(0.01, wait))

    def close(self) -> None:
        self._closed = True
        with self._wake:
            self._wake.notify_all()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            t.join(timeout=5)

    # -- reporting -------------------------------------------------------
    def status(self, node: Node) -> NodeStatus:
        state = self.state(node)
        h = self._nodes[node]
        now = self._clock.monotonic()
        return NodeStatus(
            node=node, state=state, consecutive_failures=h.failures, last_error=h.last_error,
            down_for=now - h.down_at if state is NodeState.DOWN else None,
            warming_for=max(0.0, h.warm_until - now) if state is NodeState.WARMING else None,
            pid=h.pid, uptime=h.uptime, restarted=h.restarted, ops=h.ops, errors=h.errors,
            timeouts=h.timeouts, failovers=h.failovers, state_changes=h.state_changes,
        )

    def nodes(self) -> Iterable[Node]:
        return self._nodes.keys()


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return None
