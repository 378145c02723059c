"""Both faces expose the same API: same methods, same signatures, same docs.

The async face's methods are coroutines exactly where the sync face's do
I/O; the introspection (``ring``, ``metrics()``, ``route()``) is plain on
both. A method added to one face and not the other fails here.
"""

from __future__ import annotations

import inspect

import pytest

from memring import AsyncBackupClient, AsyncClient, BackupClient, Client

#: Plain on both faces: no I/O.
PLAIN = {"metrics", "route", "owners", "check_key", "add_server", "remove_server"}
#: Sync-only: the thread face's context manager; the async face has ``async with``.
SYNC_ONLY = {"__enter__", "__exit__"}
ASYNC_ONLY = {"__aenter__", "__aexit__"}


def public(cls: type) -> dict[str, object]:
    return {name: getattr(cls, name) for name in dir(cls)
            if (not name.startswith("_") or name in SYNC_ONLY | ASYNC_ONLY)
            and inspect.isfunction(getattr(cls, name))}


@pytest.mark.parametrize(("sync", "aio"), [(Client, AsyncClient),
                                           (BackupClient, AsyncBackupClient)])
def test_the_async_face_has_every_method_of_the_sync_face(sync: type, aio: type) -> None:
    s, a = public(sync), public(aio)
    assert {"get", "set", "cas", "get_many", "get_multi", "delete_many", "stats", "health",
            "close", "metrics"} <= set(a)
    assert set(s) - SYNC_ONLY == set(a) - ASYNC_ONLY
    for name in set(s) - SYNC_ONLY:
        s_sig = inspect.signature(s[name])
        a_sig = inspect.signature(a[name])
        assert list(s_sig.parameters) == list(a_sig.parameters), name
        assert [p.default for p in s_sig.parameters.values()] == [
            p.default for p in a_sig.parameters.values()], name
        if name in PLAIN:
            assert not inspect.iscoroutinefunction(a[name]), name
        else:
            assert inspect.iscoroutinefunction(a[name]), name
        assert (s[name].__doc__ or "").strip(), f"{sync.__name__}.{name} has no docstring"
        assert (a[name].__doc__ or "").strip(), f"{aio.__name__}.{name} has no docstring"


def test_the_constructors_take_the_same_arguments() -> None:
    assert inspect.signature(Client).parameters.keys() == inspect.signature(
        AsyncClient).parameters.keys()
    assert inspect.signature(BackupClient).parameters.keys() == inspect.signature(
        AsyncBackupClient).parameters.keys()
