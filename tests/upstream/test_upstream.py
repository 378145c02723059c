"""The gate: pymemcache's and Django's own suites pass with memring standing in.

One test per job of :mod:`tests.upstream.jobs`. The jobs selected run once,
together, the first time one of these tests needs them (about 15 s, plus a
one-time download of the two sdists). Each test then holds its job's
outcomes against :mod:`tests.upstream.known_failures`:

* the control jobs (upstream's own clients) must pass outright;
* a memring job fails on a failure no entry explains, and on an entry that
  explains no failure (fixed: delete it), so the list says what is left.

``python -m tests.upstream`` prints every outcome of every job.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.upstream import jobs
from tests.upstream.known_failures import judge

pytestmark = pytest.mark.integration


class Runs:
    """The selected jobs, run together on first use."""

    def __init__(self, selected: list[str]) -> None:
        self.selected = selected
        self._results: dict[str, jobs.JobResult] | None = None
        self._error: Exception | None = None

    def __getitem__(self, job: str) -> jobs.JobResult:
        if self._results is None and self._error is None:
            try:
                self._results = jobs.run_jobs(self.selected)
            except jobs.UpstreamUnavailable as exc:
                self._error = exc
        if self._error is not None:
            pytest.fail(f"upstream sources unavailable: {self._error}", pytrace=False)
        assert self._results is not None
        return self._results[job]


@pytest.fixture(scope="session")
def upstream(request: pytest.FixtureRequest) -> Iterator[Runs]:
    selected: set[str] = set()
    for item in request.session.items:
        if isinstance(item, pytest.Function) and item.module.__name__ == __name__:
            params = item.callspec.params if hasattr(item, "callspec") else {}
            if "job" in params:
                selected.add(str(params["job"]))
    yield Runs(sorted(selected, key=jobs.JOBS.index))


def _summary(result: jobs.JobResult, limit: int = 15) -> str:
    lines = [f"{result.job}: {len(result.outcomes)} tests in {result.seconds:.1f}s, "
             f"log {result.log}"]
    bad = result.by_outcome("failed", "error", "unfinished")
    for o in bad[:limit]:
        where = f" [{o.where}]" if o.where else ""
        lines.append(f"  {o.outcome}: {o.test}: {o.message[:200]}{where}")
    if len(bad) > limit:
        lines.append(f"  ... {len(bad) - limit} more")
    return "\n".join(lines)


@pytest.mark.parametrize("job", jobs.JOBS)
def test_upstream_suite(upstream: Runs, job: str) -> None:
    result = upstream[job]
    assert not result.timed_out, (
        f"{job} overran {jobs.JOB_TIMEOUT[job]:g}s and was killed\n{_summary(result)}")
    assert result.outcomes, f"{job} ran no test (exit {result.returncode})\n{_summary(result)}"
    assert result.returncode in (0, 1), f"{job} exited {result.returncode}\n{_summary(result)}"
    failures = [(o.test, o.message) for o in result.by_outcome("failed", "error", "unfinished")]
    verdict = judge(job, failures)
    problems = []
    for test, message in verdict.unexpected:
        problems.append(f"new failure: {test}: {message[:300]}")
    for entry in verdict.stale:
        problems.append(f"fixed (remove it from known_failures.py): {entry.tests}: {entry.cause}")
    assert not problems, "\n".join([*problems, "", _summary(result)])
    if job in jobs.CONTROLS:
        assert not failures
