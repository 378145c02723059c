"""What the thread face adds to the engine: blocking I/O and a background thread.

:class:`SyncFace` drives the engine's operations (:mod:`memring.engine.ops`)
with :class:`~memring.client.transport.SocketTransport`: a batch of one
call is made directly; a batch of several is pipelined (every request is
written before any reply is read, so the nodes work at once), and the batch
waits at most one read timeout in all. The background work (probes, keep-alives, handoffs, rebuilds)
runs in a thread that exists only while there is work; long work gets a
thread of its own so the probes keep their pace.

:func:`sync_method` makes a face method of an engine operation, so the
public API (names, arguments, defaults, docstrings) is written once, in
the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from memring import _fork
from memring.engine.api import Face, as_operation, logged
from memring.engine.config import Settings
from memring.engine.health import NodeStatus
from memring.engine.ops import Call, Op, Quiet, Results
from memring.errors import MemringError
from memring.hashring import Node

__all__ = ["SyncFace", "sync_method"]

log = logging.getLogger("memring")

P = ParamSpec("P")
T = TypeVar("T")

def sync_method(fn: Callable[Concatenate[Any, P], Op[T]]) -> Callable[Concatenate[Any, P], T]:
    """The face method that runs engine operation ``fn`` to its result."""
    name = fn.__name__

    def method(self: SyncFace, /, *args: P.args, **kwargs: P.kwargs) -> T:
        result: T = self._run(getattr(self._engine, name)(*args, **kwargs))
        return result

    return as_operation(method, fn)  # type: ignore[no-any-return]


class SyncFace(Face):
    """The engine driven with blocking sockets and threads (see the module docstring)."""

    def _start_face(self) -> None:
        self._sleep: Callable[[float], None] = self._private.get("_sleep", time.sleep)
        self._wake_lock = threading.Condition()
        self._thread: threading.Thread | None = None
        #: Threads running long background work (handoffs, rebuilds).
        self._workers: set[threading.Thread] = set()
        self._engine.health.on_change = self._wake
        _fork.register(self, SyncFace._after_fork)

    def _new_transport(self, node: Node, settings: Settings, options: Mapping[str, Any]) -> Any:
        from memring.client.transport import SocketTransport

        return SocketTransport(node, timeouts=settings.timeouts,
                               max_item_size=settings.max_item_size,
                               max_pool_size=settings.max_pool_size,
                               tls_context=settings.tls_context,
                               **settings.sockets.as_kwargs(), **options)

    # ------------------------------------------------------------------
    # driving the engine
    def _run(self, op: Op[T]) -> T:
        """Run an engine operation to its result."""
        exchange = self._exchange
        try:
            request = next(op)
            while True:
                if isinstance(request, list):
                    request = op.send(exchange(request))
                elif isinstance(request, Quiet):
                    request = op.send(exchange(request.calls, record=False))
                else:
                    self._sleep(request.seconds)
                    request = op.send([])
        except StopIteration as stop:
            result: T = stop.value
            return result

    def _exchange(self, calls: list[Call], record: bool = True) -> Results:
        """Make every call of a batch; each result or its memring error, in order."""
        homes = self._engine.homes
        if len(calls) == 1:
            node, method, args = calls[0]
            try:
                results: Results = [homes[node][0].call(method, *args)]
            except MemringError as exc:
                results = [exc]
        else:
            # Every request is written before any reply is read; each reply has
            # what is left of the read timeout counted from its request, so the
            # whole batch waits at most one read timeout, however many nodes hang.
            replies = [homes[node][0].send(method, *args) for node, method, args in calls]
            results = []
            unexpected: Exception | None = None
            for reply in replies:
                try:
                    results.append(reply.result())
                except MemringError as exc:
                    results.append(exc)
                except Exception as exc:  # a bug: read every reply, then raise it
                    unexpected = unexpected or exc
                    results.append(None)
            if unexpected is not None:
                raise unexpected
        if record:
            self._engine.record(calls, results)
        return results

    # ------------------------------------------------------------------
    # background work
    def _wake(self) -> None:
        """Something needs background work: make sure the runner runs."""
        if self._no_background():
            return
        with self._wake_lock:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._runner, name="memring-background",
                                                daemon=True)
                self._thread.start()
            self._wake_lock.notify_all()

    def _runner(self) -> None:
        while not self._engine.closed:
            wait = self._tick()
            with self._wake_lock:
                if wait is None:
                    if self._thread is threading.current_thread():
                        self._thread = None
                    return
                if not self._engine.closed:
                    self._wake_lock.wait(timeout=max(0.01, wait))

    def _tick(self) -> float | None:
        """Run the background work due now; seconds until more is due (None: none is)."""
        wait, apart = self._run(self._tick_op())
        for op in apart:
            worker = threading.Thread(target=self._run_worker, args=(op,),
                                      name="memring-worker", daemon=True)
            with self._wake_lock:
                self._workers.add(worker)
            worker.start()
        return wait

    def _run_worker(self, op: Op[Any]) -> None:
        try:
            self._run(logged(op))
        finally:
            with self._wake_lock:
                self._workers.discard(threading.current_thread())

    # ------------------------------------------------------------------
    # public introspection
    def health(self) -> dict[str, NodeStatus]:
        """Per-node state and counters, keyed by node label; reads every
        reachable node's ``stats`` for its pid and uptime now."""
        return self._run(self._engine.health_report())

    # ------------------------------------------------------------------
    # life cycle
    def close(self) -> None:
        """Stop the background work, close every connection. Idempotent."""
        self._engine.close()
        with self._wake_lock:
            self._wake_lock.notify_all()
            threads = [t for t in (self._thread, *self._workers) if t is not None]
        for thread in threads:  # each stops at its next step: the engine is closed
            if thread is not threading.current_thread():
                thread.join(timeout=5)
        for t in self._transports.values():
            t.close()

    disconnect_all = close

    def __enter__(self: T) -> T:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _after_fork(self) -> None:
        """In a child process: new connections, new locks, no inherited thread.

        The parent's pooled sockets are closed here without a byte written
        (only this process's descriptors), so nothing the parent has in flight
        is disturbed. Health and hints stay as they were at the fork: a node
        the parent saw down is down here too, and this process probes it.
        """
        self._wake_lock = threading.Condition()
        self._thread = None
        self._workers = set()
        for transport in self._transports.values():
            if hasattr(transport, "after_fork"):
                transport.after_fork()
        self._engine.after_fork()
        if not self._engine.closed:
            self._wake()  # down nodes to probe, handoffs or rebuilds to run: this process's
