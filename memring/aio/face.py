"""What the asyncio face adds to the engine: ``await`` for I/O, tasks for background work.

:class:`AsyncFace` drives the engine's operations (:mod:`memring.engine.ops`)
with :class:`~memring.aio.transport.AsyncTransport`: a batch of one call
is awaited directly; a batch of several is pipelined (every request is
written before any reply is awaited, so the nodes work at once, and the
batch waits at most one read timeout in all). If the task is cancelled
meanwhile, every reply it did not read closes its connection.

The background work (probes, keep-alives, handoffs, rebuilds) runs in
tasks of the loop the client is used on: a runner task that exists only
while there is work, and a task for each long piece of work, so the probes
keep their pace. :meth:`AsyncFace.close` stops them all. The asyncio face
starts no thread.

A client belongs to one event loop at a time: used from another loop, its
transports drop the connections of the old one.

:func:`async_method` makes a coroutine method of an engine operation, so
the public API (names, arguments, defaults, docstrings) is written once,
in the engine.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Coroutine, Mapping
from typing import Any, Concatenate, ParamSpec, TypeVar

from memring.engine import defaults
from memring.engine.api import Face, as_operation, logged
from memring.engine.config import Settings
from memring.engine.health import NodeStatus
from memring.engine.ops import Call, Op, Quiet, Results
from memring.errors import MemringError
from memring.hashring import Node

__all__ = ["AsyncFace", "async_method"]

P = ParamSpec("P")
T = TypeVar("T")


def async_method(fn: Callable[Concatenate[Any, P], Op[T]]
                 ) -> Callable[Concatenate[Any, P], Coroutine[Any, Any, T]]:
    """The coroutine method that runs engine operation ``fn`` to its result."""
    name = fn.__name__

    async def method(self: AsyncFace, /, *args: P.args, **kwargs: P.kwargs) -> T:
        return await self._run(getattr(self._engine, name)(*args, **kwargs))

    return as_operation(method, fn)  # type: ignore[no-any-return]


class AsyncFace(Face):
    """The engine driven with asyncio (see the module docstring)."""

    def _start_face(self) -> None:
        self._sleep: Callable[[float], Any] = self._private.get("_sleep", asyncio.sleep)
        self._runner_task: asyncio.Task[None] | None = None
        self._wakeup: asyncio.Event | None = None
        #: Tasks running long background work (handoffs, rebuilds).
        self._workers: set[asyncio.Task[Any]] = set()
        self._engine.health.on_change = self._wake

    def _new_transport(self, node: Node, settings: Settings, options: Mapping[str, Any]) -> Any:
        from memring.aio.transport import AsyncTransport

        return AsyncTransport(node, timeouts=settings.timeouts,
                              max_item_size=settings.max_item_size,
                              max_pool_size=settings.max_pool_size or defaults.ASYNC_MAX_POOL_SIZE,
                              tls_context=settings.tls_context, **options)

    # ------------------------------------------------------------------
    # driving the engine
    async def _run(self, op: Op[T]) -> T:
        """Run an engine operation to its result."""
        exchange = self._exchange
        try:
            request = next(op)
            while True:
                if request.__class__ is list:
                    request = op.send(await exchange(request))
                elif isinstance(request, Quiet):
                    request = op.send(await exchange(request.calls, record=False))
                else:
                    await self._sleep(request.seconds)  # type: ignore[union-attr]
                    request = op.send([])
        except StopIteration as stop:
            result: T = stop.value
            return result

    async def _exchange(self, calls: list[Call], record: bool = True) -> Results:
        """Make every call of a batch; each result or its memring error, in order."""
        homes = self._engine.homes
        results: Results
        if len(calls) == 1:
            node, method, args = calls[0]
            try:
                results = [await homes[node][0].call(method, *args)]
            except MemringError as exc:
                results = [exc]
        else:
            replies: list[Any] = []
            results = []
            try:
                for node, method, args in calls:
                    replies.append(homes[node][0].send(method, *args))
                for reply in replies:
                    try:
                        results.append(await reply.result())
                    except MemringError as exc:
                        results.append(exc)
            except BaseException:
                # Cancelled (or a bug): no reply left unread may leave its
                # connection in the pool. The one being awaited closed its own;
                # if a request could not even be sent, every one sent is left.
                awaited = len(results) + (len(replies) == len(calls))
                for reply in replies[awaited:]:
                    reply.abandon()
                raise
        if record:
            self._engine.record(calls, results)
        return results

    # ------------------------------------------------------------------
    # public, with I/O
    async def health(self) -> dict[str, NodeStatus]:
        """Per-node state and counters, keyed by node label; reads every
        reachable node's ``stats`` for its pid and uptime now."""
        return await self._run(self._engine.health_report())

    # ------------------------------------------------------------------
    # background tasks
    def _wake(self) -> None:
        """Something needs background work: make sure the runner runs (on this loop)."""
        if self._no_background():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # not on a loop yet: the first call will notice
            return
        task = self._runner_task
        if task is None or task.done() or task.get_loop() is not loop:  # none runs here
            self._wakeup = asyncio.Event()
            self._runner_task = loop.create_task(self._runner(), name="memring-background")
        elif self._wakeup is not None:
            self._wakeup.set()

    async def _runner(self) -> None:
        wakeup = self._wakeup
        assert wakeup is not None
        while not self._engine.closed:
            wakeup.clear()
            wait = await self._tick()
            if wait is None:
                if self._runner_task is asyncio.current_task():
                    self._runner_task = None
                return
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), max(0.01, wait))

    async def _tick(self) -> float | None:
        """Run the background work due now; seconds until more is due (None: none is)."""
        wait, apart = await self._run(self._tick_op())
        loop = asyncio.get_running_loop() if apart else None
        for op in apart:
            assert loop is not None
            task = loop.create_task(self._run(logged(op)), name="memring-worker")
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)
        return wait

    # ------------------------------------------------------------------
    # life cycle
    async def close(self) -> None:
        """Stop the background tasks, close every connection. Idempotent."""
        self._engine.close()
        tasks = [t for t in (self._runner_task, *self._workers)
                 if t is not None and t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task
        self._runner_task = None
        for t in self._transports.values():
            t.close()

    disconnect_all = close

    async def __aenter__(self: T) -> T:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
