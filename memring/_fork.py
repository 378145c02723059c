"""Fork safety: the one place where memring objects learn that the process forked.

A client is often built before ``os.fork()``: gunicorn ``--preload``, uWSGI
without ``lazy-apps``, Celery's prefork pool, ``multiprocessing`` with the
``fork`` start method. The child then holds copies of the parent's pooled
sockets (one TCP stream read by two processes hands each the other's
replies), of locks that another thread of the parent held at the moment of
the fork (never released in the child: the thread is not there), and of
``threading.Thread`` objects whose threads do not exist in the child.

An object that owns such state registers a hook here::

    from memring import _fork

    class Transport:
        def __init__(self) -> None:
            self._pool = new_pool()
            _fork.register(self, Transport._after_fork)

        def _after_fork(self) -> None:      # runs in the child, before any other code
            self._pool = new_pool()         # the inherited sockets are never used again

After a fork, in the child, each live registered object's hook is called
with the object, in the order they were registered, before the child runs
any code of its own. Hooks run with a single thread in the process, so they
need no locks, and must take none that the parent may have held: they make
new locks, new pools and new thread handles instead. A hook must not write
to an inherited socket (no ``quit``, no ``shutdown()``): closing the
child's copy of its descriptor is harmless to the parent, anything else is
not.

Hooks run in the order their objects registered. A hook that starts a
thread (a prober, say) lets it run at once, perhaps before later hooks have
run: the state that thread uses must be reset by then, so its owner must
have registered first (or the thread start waits for the first call).

A hook that raises is logged (logger ``memring``) and the next hook still
runs: a failed reset must never kill a child that may not even use memring.

:func:`generation` counts the forks this process descends from (0 in the
process that imported memring first). State stamped with the generation it
was made in (a pooled connection, say) can be recognised as inherited when
it is seen again, and dropped without being written to.

The registry holds its objects weakly: registering keeps nothing alive, and
an object collected at any time, during a fork included, is skipped.

Where ``os.register_at_fork`` does not exist (Windows), :func:`register`
records nothing and :func:`generation` is always 0: there is no fork.
"""

from __future__ import annotations

import inspect
import itertools
import logging
import os
import threading
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["generation", "register", "registered", "unregister"]

log = logging.getLogger("memring")

T = TypeVar("T")

#: A registered object (held weakly) and its hook.
_Entry = tuple["weakref.ref[Any]", Callable[[Any], None]]

#: token -> entry, in registration order (tokens only grow).
_entries: dict[int, _Entry] = {}
_tokens = itertools.count()
#: Guards ``_entries``. Held across the fork itself (``before`` to
#: ``after_in_*``), so the child never inherits it half-way through a change.
_lock = threading.Lock()
#: Entries at which dead ones are next swept (amortised O(1) per register).
_sweep_at = 64
_generation = 0
_supported = hasattr(os, "register_at_fork")


def generation() -> int:
    """How many forks separate this process from the one that first imported memring.

    Read it once when making per-process state (``conn.generation =
    generation()``); state whose stamp differs from :func:`generation` was
    inherited from a parent process.
    """
    return _generation


def register(obj: T, after_in_child: Callable[[T], None]) -> None:
    """Call ``after_in_child(obj)`` in every child forked while ``obj`` is alive.

    ``obj`` is held weakly. A bound method of ``obj`` itself is stored as its
    function (``obj.reset`` as ``type(obj).reset``), so that the registry
    never keeps ``obj`` alive; any other callable is held strongly, and must
    not refer to ``obj``. Registering one object more than once runs each
    hook once per fork. Thread-safe; O(1) amortised.
    """
    if not _supported:
        return
    hook: Callable[[Any], None] = after_in_child
    if inspect.ismethod(after_in_child) and after_in_child.__self__ is obj:
        hook = after_in_child.__func__
    ref = weakref.ref(obj)  # raises TypeError for an object that can't be weakly referenced
    global _sweep_at
    with _lock:
        _entries[next(_tokens)] = (ref, hook)
        if len(_entries) >= _sweep_at:
            _sweep()
            _sweep_at = max(64, 2 * len(_entries))


def unregister(obj: object) -> None:
    """Forget every hook of ``obj`` (a closed client needs no reset). O(registered objects)."""
    with _lock:
        for token in [t for t, (ref, _) in _entries.items() if ref() is obj]:
            del _entries[token]


def registered() -> int:
    """How many live objects have hooks now (for tests and diagnostics)."""
    with _lock:
        return len({id(o) for o in (ref() for ref, _ in _entries.values()) if o is not None})


def _sweep() -> None:
    """Drop the entries of collected objects. Call with ``_lock`` held."""
    for token in [t for t, (ref, _) in _entries.items() if ref() is None]:
        del _entries[token]


# -- the fork hooks (installed once, below) -----------------------------------


def _before() -> None:
    """In the parent, just before the fork: no registration is half done."""
    _lock.acquire()


def _after_in_parent() -> None:
    _lock.release()


def _after_in_child() -> None:
    """In the child: a new lock, a new generation, then every live object's hook.

    The lock is made anew rather than released: a fork that did not run
    :func:`_before` (uWSGI calls only the child's hooks) would otherwise
    release a lock the child does not hold, or keep one a vanished thread
    held.
    """
    global _lock, _generation
    _lock = threading.Lock()
    _generation += 1
    for ref, hook in list(_entries.values()):
        obj = ref()
        if obj is None:  # collected, during the fork or before it
            continue
        try:
            hook(obj)
        except Exception:  # never break the child: it may not even use memring
            log.exception("memring: resetting %s after fork failed", type(obj).__name__)
        del obj
    with _lock:  # a hook may have started a thread that registers
        _sweep()


if _supported:
    os.register_at_fork(before=_before, after_in_parent=_after_in_parent,
                        after_in_child=_after_in_child)
