"""Both faces under one test: behaviour tests are written once and run on each.

``face`` is ``"sync"`` (:class:`memring.Client`, :class:`memring.BackupClient`)
or ``"async"`` (:class:`memring.AsyncClient`, :class:`memring.AsyncBackupClient`).
:func:`make` builds the client of a face; an async one comes wrapped in
:class:`Blocking`, which runs each of its coroutines to the end, so the
sync tests' code drives the async face unchanged:

* with fake nodes (a ``_transport_factory``), whose async transport never
  suspends, a coroutine is stepped to its end with no event loop (a test's
  hook may then call another client in the middle of a call, as with the
  sync face);
* with real nodes, on an event loop of the client's own, run by a thread
  of the test's (not of the client's: the async face starts none), so the
  client's background tasks (probes, handoffs) go on between calls as they
  would in an application.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from memring import AsyncBackupClient, AsyncClient, BackupClient, Client

__all__ = ["FACES", "Blocking", "async_machine", "both_faces", "make"]

FACES = ("sync", "async")
#: ``@both_faces`` runs a test once per face, with its ``face`` argument set.
both_faces = pytest.mark.parametrize("face", FACES)

_CLASSES = {("sync", False): Client, ("sync", True): BackupClient,
            ("async", False): AsyncClient, ("async", True): AsyncBackupClient}


class Blocking:
    """An async client whose coroutine methods are called like the sync client's."""

    def __init__(self, client: AsyncClient | AsyncBackupClient, *, loop: bool) -> None:
        self.face_client = client
        self._loop = asyncio.new_event_loop() if loop else None
        self._thread: threading.Thread | None = None
        if self._loop is not None:
            self._thread = threading.Thread(target=self._loop.run_forever,
                                            name="test-event-loop", daemon=True)
            self._thread.start()

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` to its end (see the module docstring)."""
        if self._loop is not None:
            return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout=120)
        try:
            coro.send(None)
        except StopIteration as stop:
            return stop.value
        coro.close()
        raise AssertionError("a fake transport suspended a call")

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.face_client, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self.run(attr(*args, **kwargs))

        return blocking

    def close(self) -> None:
        self.run(self.face_client.close())
        loop, thread = self._loop, self._thread
        if loop is not None and thread is not None:
            self._loop = None
            loop.call_soon_threadsafe(loop.stop)
            thread.join(timeout=10)
            loop.close()

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Blocking({self.face_client!r})"


def async_machine(machine: type[Any], max_examples: int) -> Any:
    """The TestCase of an Invariant S state machine (its ``FACE`` "sync") run on
    the asyncio face, with its own number of examples."""
    from hypothesis import HealthCheck, settings

    twin = type(f"Async{machine.__name__}", (machine,), {
        "FACE": "async", "__doc__": f"{machine.__name__} on the asyncio face."})
    twin.TestCase.settings = settings(
        max_examples=max_examples, stateful_step_count=50, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    return twin.TestCase


def make(face: str, servers: Any, *, backup: bool = False, **options: Any) -> Any:
    """A client of ``face`` (an async one wrapped in :class:`Blocking`).

    With fake nodes, pass the cluster as ``_cluster`` instead of a
    ``_transport_factory``: each face gets the transports it speaks.
    """
    cluster = options.pop("_cluster", None)
    if cluster is not None:
        options["_transport_factory"] = (cluster.transport_factory if face == "sync"
                                         else cluster.async_transport_factory)
    cls: Callable[..., Any] = _CLASSES[(face, backup)]
    client = cls(servers, **options)
    if face == "sync":
        return client
    return Blocking(client, loop="_transport_factory" not in options)
