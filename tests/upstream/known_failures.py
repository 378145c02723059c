"""The upstream tests memring fails today, each with its cause: what is left to do.

The gate (``test_upstream.py``) is strict both ways: a failure that no entry
here explains fails it, and so does an entry that explains no failure (the
cause is fixed: delete the entry). An entry matches a failure by the test id
(an ``fnmatch`` pattern) *and* the failure's message (a regular expression
searched in ``Type: message``), so a test that starts failing for another
reason is a new failure, not a known one.

``by_design`` marks the exceptions the project accepts for good (Django tests
that inspect pymemcache's internals, or ``close()``); the README lists them.
Everything else is to be fixed.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

__all__ = ["KNOWN", "Known", "Verdict", "judge"]


@dataclass(frozen=True)
class Known:
    """Failures of ``tests`` (fnmatch patterns) whose message matches ``message`` (regex)."""

    tests: tuple[str, ...]
    message: str
    cause: str
    by_design: bool = False

    def matches(self, test: str, message: str) -> bool:
        return (any(fnmatch.fnmatchcase(test, pattern) for pattern in self.tests)
                and re.search(self.message, message) is not None)


KNOWN: dict[str, tuple[Known, ...]] = {
    "pymemcache-control": (),
    "django-control": (),
    "pymemcache-Client": (),
    "pymemcache-BackupClient": (),
    "django": (
        Known(
            ("cache.tests.PyMemcacheCacheTests.test_close",),
            r"AssertionError: False is not True",
            "MemringCache.close() keeps the process's shared client open, so Django's "
            "request_finished signal does not call its disconnect_all() "
            "(memring/contrib/django.py, close)",
            by_design=True,
        ),
        Known(
            ("cache.tests.PyMemcacheCacheTests.test_pymemcache_highest_pickle_version",
             "cache.tests.PyMemcacheCacheTests.test_pymemcache_options"),
            r"AttributeError: 'Client' object has no attribute 'default_kwargs'",
            "reads pymemcache HashClient's default_kwargs (its serde's pickle "
            "version, no_delay), an internal of pymemcache's client",
            by_design=True,
        ),
    ),
}


@dataclass
class Verdict:
    """A job's outcomes judged against :data:`KNOWN`."""

    #: (test, message) of failures that no entry explains.
    unexpected: list[tuple[str, str]] = field(default_factory=list)
    #: Entries that explain no failure: fixed, so they must go.
    stale: list[Known] = field(default_factory=list)
    #: Each entry with the tests it explains.
    explained: dict[Known, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.unexpected and not self.stale


def judge(job: str, failures: Iterable[tuple[str, str]],
          known: Mapping[str, tuple[Known, ...]] = KNOWN) -> Verdict:
    """Sort ``failures`` ((test id, message) pairs) of ``job`` into explained and not."""
    entries = known.get(job, ())
    verdict = Verdict(explained={k: [] for k in entries})
    for test, message in failures:
        for entry in entries:
            if entry.matches(test, message):
                verdict.explained[entry].append(test)
                break
        else:
            verdict.unexpected.append((test, message))
    verdict.stale = [k for k, tests in verdict.explained.items() if not tests]
    return verdict
