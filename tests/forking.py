"""Run a function in a real ``os.fork()`` child and get its result back, bounded.

``in_child(fn, timeout=...)`` forks; the child runs ``fn()``, writes its
result (or the traceback of what it raised) as JSON to a pipe and leaves
with ``os._exit`` (no atexit handlers, no pytest teardown twice). The parent
reads the pipe until ``timeout``, then reaps the child with ``os.waitpid``;
a child that has not finished by then is SIGKILLed and reaped, and the call
raises :class:`ChildFailed`. Several children can run at once with
:func:`start` and :meth:`Child.result`.

Python 3.12+ warns (DeprecationWarning) when a process with threads forks;
the tests here fork with threads on purpose, so that warning is silenced
around the fork itself and nowhere else.
"""

from __future__ import annotations

import json
import os
import select
import signal
import time
import traceback
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Child", "ChildFailed", "forking_with_threads", "in_child", "start"]


class ChildFailed(AssertionError):
    """The child raised, crashed, or did not finish in time."""


@contextmanager
def forking_with_threads() -> Iterator[None]:
    """Silence only Python 3.12's "multi-threaded, use of fork() may lead to deadlocks"."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*use of fork\(\) may lead to deadlocks",
                                category=DeprecationWarning)
        yield


class Child:
    """A forked child running one function; :meth:`result` collects it."""

    def __init__(self, pid: int, fd: int, timeout: float) -> None:
        self.pid = pid
        self._fd = fd
        self._deadline = time.monotonic() + timeout
        self._timeout = timeout

    def result(self) -> Any:
        """The child's return value; raises :class:`ChildFailed` if it did not return one."""
        chunks: list[bytes] = []
        try:
            while True:
                left = self._deadline - time.monotonic()
                if left <= 0 or not select.select([self._fd], [], [], left)[0]:
                    raise ChildFailed(f"child {self.pid} did not finish in {self._timeout}s")
                chunk = os.read(self._fd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(self._fd)
            status = self._reap()
        if not chunks:
            raise ChildFailed(f"child {self.pid} exited ({status}) without a result")
        report = json.loads(b"".join(chunks))
        if "error" in report:
            raise ChildFailed(f"child {self.pid} raised:\n{report['error']}")
        return report["value"]

    def _reap(self) -> str:
        """Wait (bounded) for the child to exit; SIGKILL it past the deadline."""
        end = max(self._deadline, time.monotonic()) + 2.0
        while True:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                return _describe(status)
            if time.monotonic() > end:
                os.kill(self.pid, signal.SIGKILL)
                _, status = os.waitpid(self.pid, 0)
                return "killed after the deadline: " + _describe(status)
            time.sleep(0.005)


def _describe(status: int) -> str:
    if os.WIFSIGNALED(status):
        return f"signal {os.WTERMSIG(status)}"
    return f"exit code {os.waitstatus_to_exitcode(status)}"


def start(fn: Callable[[], Any], *, timeout: float = 30.0) -> Child:
    """Fork; the child runs ``fn()`` and reports. Returns at once in the parent."""
    r, w = os.pipe()
    with forking_with_threads():
        pid = os.fork()
    if pid == 0:  # the child: report, then leave without running anything else
        code = 0
        try:
            os.close(r)
            try:
                report = {"value": fn()}
            except BaseException:
                report = {"error": traceback.format_exc()}
                code = 1
            data = json.dumps(report, default=repr).encode()
            while data:
                data = data[os.write(w, data):]
        except BaseException:
            code = 2
        finally:
            os._exit(code)
    os.close(w)
    return Child(pid, r, timeout)


def in_child(fn: Callable[[], Any], *, timeout: float = 30.0) -> Any:
    """Run ``fn()`` in a forked child and return what it returned (JSON round trip)."""
    return start(fn, timeout=timeout).result()
