"""Django test runner of the ``django`` job: swaps the backend, records each outcome.

``RecordingRunner`` is Django's ``DiscoverRunner`` (the one ``runtests.py``
uses) with two additions:

* Before any test runs, Django's ``PyMemcacheCache`` name is bound to
  :class:`memring.contrib.django.MemringCache`, so the settings' cache
  (``BACKEND: django.core.cache.backends.memcached.PyMemcacheCache``), and
  every cache a test configures with ``base_params``, is memring's. Nothing
  else changes: not the settings, not the tests, not Django. With
  ``$MEMRING_UPSTREAM_BACKEND=pymemcache`` (the control run) Django's own
  backend stays.
* Its result class writes one JSON line per test (:mod:`tests.upstream.record`),
  with each failing sub-test's parameters.
"""

from __future__ import annotations

import os
import unittest
from types import TracebackType
from typing import Any

from django.core.cache.backends import memcached
from django.test.runner import DiscoverRunner

from tests.upstream.record import Recorder, describe

BACKEND_ENV = "MEMRING_UPSTREAM_BACKEND"

ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]


def swap_backend() -> None:
    """Bind Django's ``PyMemcacheCache`` name to memring's backend (unless in control)."""
    kind = os.environ.get(BACKEND_ENV, "memring")
    if kind == "pymemcache":
        return
    if kind != "memring":
        raise ValueError(f"${BACKEND_ENV} must be memring or pymemcache, not {kind!r}")
    from memring.contrib.django import MemringCache

    memcached.PyMemcacheCache = MemringCache


class RecordingResult(unittest.TextTestResult):
    """unittest's text result that also records every test's outcome."""

    recorder: Recorder

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._outcome: dict[str, tuple[str, BaseException | None, str]] = {}

    def _set(self, test: unittest.TestCase, outcome: str, err: ExcInfo | None = None,
             message: str = "") -> None:
        test_id = test.id()
        if test_id in self._outcome and self._outcome[test_id][0] in ("failed", "error"):
            return  # the first failure (e.g. of a sub-test) says most
        self._outcome[test_id] = (outcome, err[1] if err else None, message)

    def startTest(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().startTest(test)
        self.recorder.start(test.id())

    def stopTest(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().stopTest(test)
        self._flush(test.id())

    def _flush(self, test_id: str) -> None:
        outcome, exc, message = self._outcome.pop(test_id, ("passed", None, ""))
        self.recorder.finish(test_id, outcome, exc, message=message)

    def addSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addSuccess(test)
        self._set(test, "passed")

    def addFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addFailure(test, err)
        self._set(test, "failed", err)

    def addError(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addError(test, err)
        self._set(test, "error", err)
        if not isinstance(test, unittest.TestCase):  # an error of setUpClass and the like
            self._flush(test.id())

    def addSkip(self, test: unittest.TestCase, reason: str) -> None:  # noqa: N802
        super().addSkip(test, reason)
        self._set(test, "skipped", message=reason)

    def addExpectedFailure(self, test: unittest.TestCase, err: Any) -> None:  # noqa: N802
        super().addExpectedFailure(test, err)
        self._set(test, "passed", message="expected failure")

    def addUnexpectedSuccess(self, test: unittest.TestCase) -> None:  # noqa: N802
        super().addUnexpectedSuccess(test)
        self._set(test, "failed", message="unexpected success")

    def addSubTest(self, test: unittest.TestCase, subtest: unittest.TestCase,  # noqa: N802
                   err: Any) -> None:
        super().addSubTest(test, subtest, err)
        if err is not None:
            kind = "failed" if issubclass(err[0], test.failureException) else "error"
            params = subtest._subDescription()  # type: ignore[attr-defined]
            self._set(test, kind, err, message=f"{params} {describe(err[1])}")


class RecordingRunner(DiscoverRunner):  # type: ignore[misc]  # Django ships no type hints
    """Django's ``DiscoverRunner``, on memring's backend, recording each outcome."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        swap_backend()
        self._recorder = Recorder()

    def get_resultclass(self) -> type[unittest.TextTestResult]:
        base = super().get_resultclass() or unittest.TextTestResult
        recorder = self._recorder

        class Result(RecordingResult, base):  # type: ignore[misc, valid-type]
            pass

        Result.recorder = recorder
        return Result

    def run_tests(self, *args: Any, **kwargs: Any) -> int:
        try:
            return int(super().run_tests(*args, **kwargs))
        finally:
            self._recorder.close()
