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

import functools
import inspect
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, Concatenate, ParamSpec, TypeVar

from memring import _fork
from memring.engine import versions
from memring.engine.base import Engine
from memring.engine.config import Settings, resolve
from memring.engine.health import NodeStatus
from memring.engine.ops import Call, Op, Quiet, Results
from memring.errors import MemringError
from memring.hashring import HashRing, Node

__all__ = ["SyncFace", "sync_method"]

log = logging.getLogger("memring")

P = ParamSpec("P")
T = TypeVar("T")
TransportFactory = Callable[[Node], Any]

#: Options only the tests pass (fakes at the transport seam, a fake clock, no threads).
_PRIVATE = ("_transport_factory", "_clock", "_background", "_sleep", "_hlc")


def sync_method(fn: Callable[Concatenate[Any, P], Op[T]]) -> Callable[Concatenate[Any, P], T]:
    """The face method that runs engine operation ``fn`` to its result."""
    name = fn.__name__

    def method(self: SyncFace, /, *args: P.args, **kwargs: P.kwargs) -> T:
        result: T = self._run(getattr(self._engine, name)(*args, **kwargs))
        return result

    functools.update_wrapper(method, fn)
    del method.__wrapped__  # type: ignore[attr-defined]
    _unwrap_op_annotation(method, fn)
    return method


def _unwrap_op_annotation(method: Any, fn: Any) -> None:
    """Show ``-> T`` (not ``-> Op[T]``) in the method's signature and help()."""
    sig = inspect.signature(fn)
    ret = sig.return_annotation
    if isinstance(ret, str):
        m = re.fullmatch(r"Op\[(.*)\]", ret)
        if m:
            ret = m.group(1)
    method.__signature__ = sig.replace(return_annotation=ret)
    method.__annotations__ = {**fn.__annotations__, "return": ret}


class SyncFace:
    """The engine driven with blocking sockets and threads (see the module docstring)."""

    _engine: Engine
    ENGINE: type[Engine]

    def __init__(self, servers: Iterable[Any] | str, **options: Any) -> None:
        private = {name: options.pop(name) for name in _PRIVATE if name in options}
        settings = resolve(clock=private.get("_clock"), **options)
        self._settings = settings
        self._engine = self.ENGINE(servers, settings, hlc=private.get("_hlc") or versions.clock())
        factory: TransportFactory | None = private.get("_transport_factory")
        if factory is None:
            from memring.client.transport import SocketTransport

            def factory(node: Node) -> Any:
                return SocketTransport(node, timeouts=settings.timeouts,
                                       max_item_size=settings.max_item_size,
                                       max_pool_size=settings.max_pool_size,
                                       tls_context=settings.tls_context,
                                       **settings.sockets.as_kwargs())
        self._transports: dict[Node, Any] = {n: factory(n) for n in self._engine.ring.nodes}
        for transport in self._transports.values():
            if hasattr(transport, "on_reconnect"):
                transport.on_reconnect = self._engine.note_reconnect
        self._engine.attach(self._transports)
        self._background = bool(private.get("_background", True))
        self._sleep: Callable[[float], None] = private.get("_sleep", time.sleep)
        self._wake_lock = threading.Condition()
        self._thread: threading.Thread | None = None
        #: Threads running long background work (handoffs, rebuilds).
        self._workers: set[threading.Thread] = set()
        self._engine.health.on_change = self._wake
        _fork.register(self, SyncFace._after_fork)

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
        if not self._background or self._engine.closed:
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
        """Run the background work due now (and any it makes due, such as a
        returned node's handoff); seconds until more is due (None: none is)."""
        for _ in range(8):
            work, wait = self._engine.background()
            if not work:
                return wait
            for op, long in work:
                if long and self._background:
                    worker = threading.Thread(target=self._run_worker, args=(op,),
                                              name="memring-worker", daemon=True)
                    with self._wake_lock:
                        self._workers.add(worker)
                    worker.start()
                else:
                    self._run_logged(op)
        return 0.0

    def _run_worker(self, op: Op[Any]) -> None:
        try:
            self._run_logged(op)
        finally:
            with self._wake_lock:
                self._workers.discard(threading.current_thread())

    def _run_logged(self, op: Op[Any]) -> None:
        try:
            self._run(op)
        except Exception:  # background work must never kill its thread
            log.exception("memring background work failed")

    # ------------------------------------------------------------------
    # public introspection
    @property
    def ring(self) -> HashRing:
        """The placement ring."""
        return self._engine.ring

    @property
    def failover(self) -> Any:
        """The :class:`~memring.Failover` policy."""
        return self._engine.failover

    @property
    def timeouts(self) -> Any:
        """The :class:`~memring.Timeouts`."""
        return self._engine.timeouts

    @property
    def settings(self) -> Settings:
        return self._settings

    def health(self) -> dict[str, NodeStatus]:
        """Per-node state and counters, keyed by node label; reads every
        reachable node's ``stats`` for its pid and uptime now."""
        return self._run(self._engine.health_report())

    def metrics(self) -> dict[str, Any]:
        """Counters: per node (ops, errors, timeouts, failovers, state changes) and
        client-wide. Every key is there from the start."""
        return self._engine.metrics()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({[n.label for n in self._engine.ring.nodes]!r}, "
                f"failover={self._engine.failover!r}, timeouts={self._engine.timeouts!r})")

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
