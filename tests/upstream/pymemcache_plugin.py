"""pytest plugin: pymemcache's ``test_integration.py`` with memring's clients standing in.

Loaded with ``-p`` into the child pytest of the ``pymemcache-*`` jobs (see
:mod:`.jobs`), next to pymemcache's own, unmodified ``conftest.py``.

How the clients are swapped
    The suite names its clients in two places: the test module imports
    ``Client`` from ``pymemcache.client.base`` when it is imported, and the
    conftest's ``pytest_generate_tests`` imports ``Client``, ``PooledClient``
    (base) and ``HashClient`` (hash) when it parametrizes ``client_class``
    (``HashClientSingle`` is its subclass of ``HashClient`` that wraps the
    one server in a list). Both happen during collection, so for exactly
    that time those names in pymemcache's modules are memring's class; they
    are restored before any test runs, so pymemcache itself, and memring's
    transport, which is built on pymemcache's ``Client`` (imported before
    the swap), are untouched. After collection the plugin checks that every
    client the suite will make is memring's, and stops the run otherwise: a
    suite that silently tested pymemcache would prove nothing.

    With ``$MEMRING_UPSTREAM_CLIENT=Client`` the stand-in is
    :class:`memring.Client` itself: every call is ``memring.Client(<the
    test's arguments>)``, positional and keyword arguments as the test
    wrote them.

Why ``BackupClient`` gets one more server
    A ``BackupClient`` keeps every key on two nodes and refuses to start
    with one. The suite is written against "the memcached server" of
    ``--server``/``--port``: each test passes that one address. For the
    ``BackupClient`` job the address the test passes still names a real
    node, and the stand-in adds the other node of the job's cluster
    (``$MEMRING_UPSTREAM_PEERS``) beside it, so "the server" the test talks
    to is a two-node backup cluster that contains it. Nothing else changes:
    keyword arguments pass through untouched, a server list that does not
    contain the suite's server is passed as it is, and every test still
    sees one memcached's behaviour (``flush_all`` flushes both nodes; every
    key is on both). The alternative, giving the tests a different address
    (a list), would change what the tests pass; adding a node keeps the
    tests' arguments and makes the one server they name a cluster, which is
    what a ``BackupClient`` needs to exist at all.

Results
    One JSON line per test (:mod:`.record`), with the exception and the
    innermost memring line of its traceback.
"""

from __future__ import annotations

import os
from collections.abc import Generator, Iterable
from typing import Any

import pymemcache
import pytest
from pymemcache.client import base as pm_base
from pymemcache.client import hash as pm_hash

import memring  # imported before the swap (at collection): it keeps pymemcache's classes
from tests.upstream.record import Recorder

CLIENT_ENV = "MEMRING_UPSTREAM_CLIENT"
PEERS_ENV = "MEMRING_UPSTREAM_PEERS"
#: Diagnosis only, never in the gate: keyword arguments the stand-in drops
#: (comma-separated), to see what fails once memring accepts them.
DROP_ENV = "MEMRING_UPSTREAM_DROP"

#: (module, name) of every pymemcache client name the suite may look up.
SWAPPED: tuple[tuple[Any, str], ...] = (
    (pm_base, "Client"),
    (pm_base, "PooledClient"),
    (pm_hash, "HashClient"),
    (pymemcache, "Client"),
    (pymemcache, "PooledClient"),
    (pymemcache, "HashClient"),
)

_PHASES = pytest.StashKey[list[tuple[str, pytest.TestReport, Any]]]()
#: The memring class standing in for each name of :data:`SWAPPED`.
_STANDINS = pytest.StashKey[dict[str, type]]()
_RECORDER = pytest.StashKey[Recorder]()


def _address(spec: str) -> tuple[str, int]:
    host, _, port = spec.rpartition(":")
    return host, int(port)


def backup_client(suite_server: tuple[str, int], peers: Iterable[tuple[str, int]]) -> type:
    """A :class:`memring.BackupClient` that adds ``peers`` beside the suite's one server."""
    peers = list(peers)
    if not peers:
        raise pytest.UsageError(f"the BackupClient job needs ${PEERS_ENV}")

    def beside_peers(servers: Any) -> Any:
        if isinstance(servers, tuple) and tuple(servers) == suite_server:
            return [servers, *peers]  # Client((host, port)) / PooledClient((host, port))
        if isinstance(servers, list) and suite_server in [tuple(s) for s in servers
                                                          if isinstance(s, tuple)]:
            return [*servers, *peers]  # HashClient([(host, port)])
        return servers

    class BackupClient(memring.BackupClient):
        __doc__ = f"memring.BackupClient; the suite's server {suite_server} gets {peers} beside it."

        def __init__(self, servers: Any, *args: Any, **kwargs: Any) -> None:
            super().__init__(beside_peers(servers), *args, **kwargs)

    return BackupClient


def dropping(base: type, names: set[str]) -> type:
    """``base`` without the keyword arguments ``names`` (diagnosis only, see :data:`DROP_ENV`)."""

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        for name in names:
            kwargs.pop(name, None)
        base.__init__(self, *args, **kwargs)  # type: ignore[misc]

    return type(base.__name__, (base,), {"__init__": __init__, "__module__": base.__module__,
                                         "__doc__": f"{base.__name__} dropping {sorted(names)}"})


def standins(config: pytest.Config) -> dict[str, type]:
    """The memring class standing in for each pymemcache client name.

    One class, memring's, under each pymemcache name: ``Client`` is
    :class:`memring.Client` itself; ``PooledClient`` and ``HashClient`` are
    subclasses that only carry those names, so the suite's test ids are
    pymemcache's own (``test_get_set[socket-PooledClient--serde0]``).
    """
    kind = os.environ.get(CLIENT_ENV, "Client")
    if kind == "pymemcache":  # the control run: pymemcache's own clients
        return {}
    if kind == "Client":
        base: type = memring.Client
    elif kind == "BackupClient":
        server = (config.getoption("server"), int(config.getoption("port")))
        peers = [_address(s) for s in os.environ.get(PEERS_ENV, "").split(",") if s]
        base = backup_client(server, peers)
    else:
        raise pytest.UsageError(
            f"${CLIENT_ENV} must be Client, BackupClient or pymemcache, not {kind!r}")
    drop = {name for name in os.environ.get(DROP_ENV, "").split(",") if name}
    if drop:
        base = dropping(base, drop)
    out: dict[str, type] = {}
    for name in ("Client", "PooledClient", "HashClient"):
        if base.__name__ == name:
            out[name] = base
        else:
            out[name] = type(name, (base,), {
                "__doc__": f"{base.__module__}.{base.__qualname__}, named {name} for the ids.",
                "__module__": base.__module__})
    return out


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_STANDINS] = standins(config)
    config.stash[_RECORDER] = Recorder()


def pytest_unconfigure(config: pytest.Config) -> None:
    recorder = config.stash.get(_RECORDER, None)
    if recorder is not None:
        recorder.close()


@pytest.hookimpl(wrapper=True)
def pytest_collection(session: pytest.Session) -> Generator[None, object, object]:
    """Swap pymemcache's client names for memring's while the suite is collected."""
    classes = session.config.stash[_STANDINS]
    if not classes:
        return (yield)
    saved = [(module, name, getattr(module, name)) for module, name in SWAPPED]
    for module, name, _ in saved:
        setattr(module, name, classes[name])
    try:
        return (yield)
    finally:
        for module, name, original in saved:
            setattr(module, name, original)


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config,
                                  items: list[pytest.Item]) -> None:
    """Refuse to run if any client the suite makes would be pymemcache's own."""
    classes = config.stash[_STANDINS]
    if not classes:
        return
    client = classes["Client"]
    wrong = []
    for item in items:
        module = getattr(item, "module", None)
        if module is not None and getattr(module, "Client", client) is not client:
            wrong.append(f"{item.nodeid}: module Client is {module.Client!r}")
        callspec = getattr(item, "callspec", None)
        client_class = callspec.params.get("client_class") if callspec else None
        if client_class is not None and not any(issubclass(client_class, c)
                                                for c in classes.values()):
            wrong.append(f"{item.nodeid}: client_class is {client_class!r}")
    if wrong:
        raise pytest.UsageError("memring is not standing in for pymemcache:\n"
                                + "\n".join(wrong[:10]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item,
                              call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    item.stash.setdefault(_PHASES, []).append((call.when, report, call.excinfo))
    return report


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None
                            ) -> Generator[None, object, object]:
    recorder = item.config.stash[_RECORDER]
    recorder.start(item.nodeid)
    try:
        return (yield)
    finally:
        _finish(recorder, item)


def _finish(recorder: Recorder, item: pytest.Item) -> None:
    phases = item.stash.get(_PHASES, [])
    for when, report, excinfo in phases:
        if report.failed:
            outcome = "failed" if when == "call" else "error"
            exc = excinfo.value if excinfo is not None else None
            recorder.finish(item.nodeid, outcome, exc,
                            message="" if exc is not None else str(report.longrepr)[:600])
            return
    for _, report, _ in phases:
        if report.skipped:
            longrepr = report.longrepr
            reason = longrepr[2] if isinstance(longrepr, tuple) else str(longrepr)
            recorder.finish(item.nodeid, "skipped", message=reason)
            return
    recorder.finish(item.nodeid, "passed" if phases else "unfinished")
