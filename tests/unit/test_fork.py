"""memring._fork: hooks that run in a real forked child, and only there.

Every test forks for real (``tests.forking``): the child reports through a
pipe, the parent waits with a timeout and reaps it with ``os.waitpid``.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time
import weakref
from typing import Any

import pytest

from memring import _fork
from tests.forking import ChildFailed, in_child, start

pytestmark = pytest.mark.skipif(not hasattr(os, "fork"), reason="no fork on this platform")


class Resource:
    """Something with per-process state: a lock, a pid, a log of resets."""

    def __init__(self, name: str = "r") -> None:
        self.name = name
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.resets: list[int] = []

    def after_fork(self) -> None:
        self.lock = threading.Lock()
        self.pid = os.getpid()
        self.resets.append(_fork.generation())


def test_hook_runs_in_the_child_only() -> None:
    r = Resource()
    _fork.register(r, Resource.after_fork)
    parent, gen = os.getpid(), _fork.generation()

    def child() -> Any:
        return {"pid_ok": r.pid == os.getpid() != parent, "resets": r.resets,
                "generation": _fork.generation()}

    assert in_child(child) == {"pid_ok": True, "resets": [gen + 1], "generation": gen + 1}
    assert r.resets == [] and r.pid == parent and _fork.generation() == gen
    _fork.unregister(r)


def test_grandchild_counts_two_forks() -> None:
    r = Resource()
    _fork.register(r, Resource.after_fork)
    gen = _fork.generation()
    assert in_child(lambda: in_child(lambda: r.resets, timeout=10)) == [gen + 1, gen + 2]
    _fork.unregister(r)


def test_hooks_run_in_registration_order() -> None:
    order: list[str] = []
    objs = [Resource(name) for name in "abcde"]
    for obj in objs:
        _fork.register(obj, lambda o: order.append(o.name))
    assert in_child(lambda: order) == list("abcde")
    for obj in objs:
        _fork.unregister(obj)


def test_registry_holds_objects_weakly() -> None:
    r = Resource()
    _fork.register(r, r.after_fork)  # a bound method of r is kept as its function
    _fork.register(r, Resource.after_fork)
    dead = weakref.ref(r)
    gc.collect()  # other tests' garbage, registered too, must not move the count below
    before = _fork.registered()
    del r
    gc.collect()
    assert dead() is None
    assert _fork.registered() == before - 1


def test_collected_objects_are_skipped_in_the_child() -> None:
    calls: list[str] = []
    keep = Resource("keep")
    _fork.register(keep, lambda o: calls.append(o.name))
    for i in range(200):  # collected before the fork: never called, swept eventually
        _fork.register(Resource(f"gone{i}"), lambda o: calls.append(o.name))
    gc.collect()
    assert in_child(lambda: calls) == ["keep"]
    assert len(_fork._entries) < 200  # swept as registrations went on
    _fork.unregister(keep)


def test_objects_collected_while_forking() -> None:
    """Objects made and dropped by other threads, while the main thread forks."""
    stop = threading.Event()
    made = 0

    def churn() -> None:
        nonlocal made
        while not stop.is_set():
            r = Resource()
            _fork.register(r, Resource.after_fork)
            made += 1
            del r

    threads = [threading.Thread(target=churn) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        for _ in range(10):
            # The child registers too: the registry's lock is not held there.
            assert in_child(lambda: _fork.register(Resource(), Resource.after_fork) or "ok",
                            timeout=10) == "ok"
    finally:
        stop.set()
        for t in threads:
            t.join(timeout=10)
    assert made > 0


def test_a_failing_hook_is_logged_and_the_others_still_run(
        caplog: pytest.LogCaptureFixture) -> None:
    def boom(obj: Resource) -> None:
        raise RuntimeError("reset failed")

    a, b, c = Resource("a"), Resource("b"), Resource("c")
    _fork.register(a, Resource.after_fork)
    _fork.register(b, boom)
    _fork.register(c, Resource.after_fork)

    def child() -> Any:
        records = [(r.name, r.levelno, r.exc_info is not None) for r in caplog.records
                   if "after fork failed" in r.getMessage()]
        return {"a": len(a.resets), "c": len(c.resets), "logged": records}

    with caplog.at_level(logging.ERROR, logger="memring"):
        report = in_child(child)
    assert report == {"a": 1, "c": 1, "logged": [["memring", logging.ERROR, True]]}
    for obj in (a, b, c):
        _fork.unregister(obj)


def test_a_lock_held_by_another_thread_at_fork_is_made_anew() -> None:
    r = Resource()
    _fork.register(r, Resource.after_fork)
    held, release = threading.Event(), threading.Event()

    def hold() -> None:
        with r.lock:
            held.set()
            release.wait(10)

    t = threading.Thread(target=hold)
    t.start()
    try:
        assert held.wait(10)

        def child() -> bool:
            return r.lock.acquire(timeout=2)

        assert in_child(child, timeout=10) is True  # would time out on the inherited lock
    finally:
        release.set()
        t.join(timeout=10)
    _fork.unregister(r)


def test_a_hook_may_start_a_thread_in_the_child() -> None:
    class Worker:
        def __init__(self) -> None:
            self.thread: threading.Thread | None = None
            self.ran = threading.Event()

        def after_fork(self) -> None:
            self.ran = threading.Event()
            self.thread = threading.Thread(target=self.ran.set, daemon=True)
            self.thread.start()

    w = Worker()
    _fork.register(w, Worker.after_fork)
    assert in_child(lambda: w.ran.wait(5), timeout=10) is True
    _fork.unregister(w)


def test_child_hook_does_not_need_the_before_hook() -> None:
    """uWSGI runs only the child's hooks: the child must not release a lock it lacks."""
    def child() -> Any:
        gen = _fork.generation()
        _fork._after_in_child()  # as if forked again without _before()
        _fork.register(Resource(), Resource.after_fork)
        return _fork.generation() - gen

    assert in_child(child) == 1


def test_unregister() -> None:
    r = Resource()
    _fork.register(r, Resource.after_fork)
    _fork.unregister(r)
    assert in_child(lambda: r.resets) == []


def test_many_children_at_once() -> None:
    r = Resource()
    _fork.register(r, Resource.after_fork)
    children = [start(lambda: [os.getpid(), r.pid, len(r.resets)], timeout=20)
                for _ in range(8)]
    reports = [c.result() for c in children]
    assert all(pid == rpid and n == 1 for pid, rpid, n in reports)
    assert len({pid for pid, _, _ in reports}) == 8
    _fork.unregister(r)


def test_helper_reports_a_child_that_hangs() -> None:
    t0 = time.monotonic()
    with pytest.raises(ChildFailed, match="did not finish"):
        in_child(lambda: time.sleep(30), timeout=0.5)
    assert time.monotonic() - t0 < 5
