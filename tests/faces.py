"""Both faces under one test: behaviour tests are written once and run on each.

``face`` is ``"sync"`` (:class:`memring.Client`, :class:`memring.BackupClient`)
or ``"async"`` (:class:`memring.AsyncClient`, :class:`memring.AsyncBackupClient`).
:func:`make` builds the client of a face; an async one comes wrapped so
that each of its coroutines is run to its end by a blocking call, and the
sync tests' code drives the async face unchanged:

* with fake nodes (a ``_transport_factory``), whose async transport never
  suspends, :class:`Blocking` steps a coroutine to its end with no event loop (a test's
  hook may then call another client in the middle of a call, as with the
  sync face);
* with real nodes, on an event loop of its own in a thread of the test's
  (:class:`memring.tools.looped.Looped`; the async face itself starts no
  thread), so the client's background tasks (probes, handoffs) go on
  between calls as they would in an application.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Coroutine
from typing import Any

import pytest

from memring import AsyncBackupClient, AsyncClient, BackupClient, Client
from memring.tools.looped import Looped

__all__ = ["FACES", "Blocking", "async_machine", "both_faces", "make"]

FACES = ("sync", "async")
#: ``@both_faces`` runs a test once per face, with its ``face`` argument set.
both_faces = pytest.mark.parametrize("face", FACES)

_CLASSES = {("sync", False): Client, ("sync", True): BackupClient,
            ("async", False): AsyncClient, ("async", True): AsyncBackupClient}


class Blocking:
    """An async client on fake nodes, its coroutines stepped to their end with no loop."""

    def __init__(self, client: AsyncClient | AsyncBackupClient) -> None:
        self.face_client = client

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        """Run ``coro`` to its end: a fake transport never suspends it."""
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
        return lambda *args, **kwargs: self.run(attr(*args, **kwargs))

    def close(self) -> None:
        self.run(self.face_client.close())

    def __enter__(self) -> Blocking:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
    if "_transport_factory" in options:
        return Blocking(client)
    return Looped(client, name="test-event-loop")
