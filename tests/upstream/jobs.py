"""pymemcache's and Django's own memcached test suites, run with memring standing in.

memring promises that code written for pymemcache's clients, and Django's
memcached support, work with it unchanged. These jobs hold that promise to
the suites those projects ship, not to tests of our own:

``pymemcache-Client``
    pymemcache's ``pymemcache/test/test_integration.py`` with its own
    ``conftest.py``, where every pymemcache client the suite makes
    (``Client``, ``PooledClient``, and ``HashClient`` through the conftest's
    ``HashClientSingle``) is a :class:`memring.Client`, built with the
    arguments the tests pass, unmodified (:mod:`.pymemcache_plugin` says how).
``pymemcache-BackupClient``
    The same with :class:`memring.BackupClient`, which needs two nodes: the
    one server the suite names (``--server``/``--port``) and one more
    started for the job, added beside it. That is the only change to any
    argument; see :mod:`.pymemcache_plugin` for why it keeps the test honest.
``pymemcache-control``, ``django-control``
    The same suites on pymemcache's own clients and Django's own
    ``PyMemcacheCache``, with everything else as above. They must pass: a
    failure there is the harness's or the environment's (a memcached version,
    a warning filter), never memring's.
``django``
    Django's ``tests/cache/tests.py`` ``PyMemcacheCacheTests`` through
    Django's own ``runtests.py``, with Django's example test settings
    (``test_sqlite``) plus one ``CACHES`` entry, and only the backend
    swapped: the settings name Django's ``PyMemcacheCache`` (the suite picks
    its parameters by that name) and that name resolves to
    :class:`memring.contrib.django.MemringCache` (:mod:`.django_runner`).

How, and why so:

* The sources are the sdists of the versions installed here, fetched with
  ``pip download --no-deps --no-binary :all:`` into ``.upstream-cache/`` at
  the repository root (git ignores it; pytest skips dot-directories) and
  reused when present. Only the files a job runs are extracted.
* Each suite runs in a child process: pymemcache's conftest registers
  command-line options (only a root conftest can), Django's settings can be
  configured once per process (and ``tests/integration/test_django.py``
  configures them its own way), and each suite keeps its own runner and
  warning filters. Django's suite runs under Django's ``runtests.py``, the
  runner it is written for (it sets up the test apps, database and
  settings the tests expect, and makes ResourceWarning, RuntimeWarning and
  Django's deprecations errors). pymemcache's runs under pytest with
  :data:`PYMEMCACHE_INI`: warnings are errors, as in this repository, but
  for the garbage collector's "unclosed socket" warning, since the suite
  never closes the clients it makes (pymemcache's own leave the same
  sockets behind). The child has a hard time limit and is killed by its
  PID when it overruns; it writes one JSON line per test as each ends, so
  an overrun still reports what ran and which test was running.
* The jobs run at the same time: the suites spend most of their time asleep
  (Django's expiry tests), so the five take about as long as the longest.
* memcached runs as real processes on 127.0.0.1, on ports chosen at run time
  (:class:`memring.tools.local.LocalCluster`), stopped by PID.
* The gate (``test_upstream.py``) compares the outcomes with
  :mod:`.known_failures`: a failure not listed fails it, and so does a
  listed test that passes (strict), so the list always says what is left.

Run everything with ``python -m pytest -q tests/upstream``; print every
outcome with ``python -m tests.upstream`` (``--help`` for its options).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from memring.tools.local import LocalCluster

__all__ = [
    "CACHE_DIR",
    "JOBS",
    "JobResult",
    "Outcome",
    "UpstreamUnavailable",
    "django_tests",
    "pymemcache_tests",
    "run_job",
    "run_jobs",
    "sdist",
]

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
#: Where sdists are downloaded and extracted (ignored by git).
CACHE_DIR = REPO / ".upstream-cache"
#: The pytest configuration of the pymemcache job (not the repository's).
PYMEMCACHE_INI = HERE / "pymemcache.ini"

#: Seconds a ``pip download`` may take.
DOWNLOAD_TIMEOUT = 300.0
#: Seconds each job may run before it is killed.
JOB_TIMEOUT = {
    "pymemcache-control": 60.0,
    "pymemcache-Client": 120.0,
    "pymemcache-BackupClient": 120.0,
    "django-control": 120.0,
    "django": 180.0,
}
JOBS = tuple(JOB_TIMEOUT)
#: The jobs that run the upstream suite on upstream's own client: they must
#: pass, or the harness (not memring) is wrong.
CONTROLS = ("pymemcache-control", "django-control")

#: Members of pymemcache's sdist the job needs (under its top directory).
PYMEMCACHE_FILES = ("pymemcache/test/conftest.py", "pymemcache/test/test_integration.py")
#: Members of Django's sdist the job needs: the runner, its default settings,
#: its URLconf, and the cache tests' package.
DJANGO_FILES = ("tests/runtests.py", "tests/test_sqlite.py", "tests/urls.py", "tests/cache/")
DJANGO_LABEL = "cache.tests.PyMemcacheCacheTests"


class UpstreamUnavailable(RuntimeError):
    """An upstream sdist could not be downloaded or read."""


@dataclass(frozen=True)
class Outcome:
    """What became of one upstream test."""

    test: str
    #: ``passed``, ``failed``, ``error`` (outside the test body), ``skipped``,
    #: or ``unfinished`` (the job was killed while it ran).
    outcome: str
    #: The exception (or skip reason), as ``Type: message``.
    message: str = ""
    #: The innermost memring source line of the traceback, ``memring/x.py:123``.
    where: str = ""
    #: The innermost line of the upstream test file in the traceback.
    test_line: str = ""

    @property
    def ok(self) -> bool:
        return self.outcome in ("passed", "skipped")


@dataclass
class JobResult:
    """One job's run: every outcome, its time, and how the child ended."""

    job: str
    outcomes: dict[str, Outcome] = field(default_factory=dict)
    seconds: float = 0.0
    returncode: int | None = None
    timed_out: bool = False
    log: Path | None = None

    def by_outcome(self, *kinds: str) -> list[Outcome]:
        return [o for o in self.outcomes.values() if o.outcome in kinds]


# -- sources -----------------------------------------------------------------------


def installed_version(project: str) -> str:
    return importlib.metadata.version(project)


def sdist(project: str, version: str, cache: Path = CACHE_DIR) -> Path:
    """The sdist of ``project==version``, downloaded with pip unless already cached."""
    directory = cache / "sdists"
    found = _find_sdist(directory, project, version)
    if found is not None:
        return found
    directory.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--disable-pip-version-check",
           "--no-deps", "--no-binary", ":all:", f"{project}=={version}", "--dest",
           str(directory)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=DOWNLOAD_TIMEOUT,
                              check=False)
    except subprocess.TimeoutExpired as exc:
        raise UpstreamUnavailable(
            f"pip download {project}=={version} took over {DOWNLOAD_TIMEOUT:g}s") from exc
    found = _find_sdist(directory, project, version)
    if done.returncode != 0 or found is None:
        raise UpstreamUnavailable(
            f"pip download {project}=={version} failed ({done.returncode}): "
            f"{done.stderr.strip()[-800:]}")
    return found


def _find_sdist(directory: Path, project: str, version: str) -> Path | None:
    if not directory.is_dir():
        return None
    wanted = {f"{name}-{version}.tar.gz" for name in (project, project.lower(),
                                                     project.lower().replace("-", "_"))}
    for path in directory.iterdir():
        if path.name.lower() in {w.lower() for w in wanted}:
            return path
    return None


def extract(archive: Path, members: Sequence[str], dest: Path,
            flatten: bool = False) -> Path:
    """Extract ``members`` (paths under the sdist's top directory; a trailing ``/``
    takes a whole directory) into ``dest``, unless ``dest`` is already complete.

    Files are written by name (never by the archive's own paths, links or
    modes) into a fresh directory that is then renamed into place, so an
    interrupted run never leaves a half-extracted tree behind.
    ``flatten`` puts every file directly in ``dest``.
    """
    marker = dest / ".complete"
    if marker.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}-", dir=dest.parent))
    wanted_files = {m for m in members if not m.endswith("/")}
    wanted_dirs = tuple(m for m in members if m.endswith("/"))
    found: set[str] = set()
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for info in tar:
                top, _, rel = info.name.partition("/")
                if not info.isfile() or ".." in Path(rel).parts:
                    continue
                if rel not in wanted_files and not rel.startswith(wanted_dirs):
                    continue
                target = tmp / (Path(rel).name if flatten else rel)
                target.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(info)
                assert source is not None
                with source, open(target, "wb") as out:
                    shutil.copyfileobj(source, out)
                found.add(rel)
                found.update(d for d in wanted_dirs if rel.startswith(d))
        missing = sorted((wanted_files | set(wanted_dirs)) - found)
        if missing:
            raise UpstreamUnavailable(f"{archive.name} lacks {', '.join(missing)}")
        (tmp / ".complete").write_text(archive.name + "\n")
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)
    return dest


def pymemcache_tests(cache: Path = CACHE_DIR) -> Path:
    """A directory holding pymemcache's ``conftest.py`` and ``test_integration.py``.

    Flat, without pymemcache's package ``__init__``: the tests import the
    installed pymemcache, never a copy of it.
    """
    version = installed_version("pymemcache")
    return extract(sdist("pymemcache", version, cache), PYMEMCACHE_FILES,
                   cache / f"pymemcache-{version}-tests", flatten=True)


def django_tests(cache: Path = CACHE_DIR) -> Path:
    """Django's ``tests/`` directory, holding what ``runtests.py cache`` needs."""
    version = installed_version("django")
    return extract(sdist("django", version, cache), DJANGO_FILES,
                   cache / f"django-{version}") / "tests"


# -- running -----------------------------------------------------------------------


def _child_env(results: Path, extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PYTEST_", "DJANGO_SETTINGS_MODULE", "MEMRING_UPSTREAM_"))}
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *filter(None, [env.get("PYTHONPATH")])])
    env["MEMRING_UPSTREAM_RESULTS"] = str(results)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def read_outcomes(results: Path) -> dict[str, Outcome]:
    """The outcomes a child wrote, one JSON object a line.

    A test that started and never ended (the child was killed) is ``unfinished``.
    """
    outcomes: dict[str, Outcome] = {}
    if not results.is_file():
        return outcomes
    for line in results.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        if "start" in record:
            outcomes.setdefault(record["start"], Outcome(record["start"], "unfinished"))
        else:
            outcomes[record["test"]] = Outcome(**record)
    return outcomes


class _Running:
    """One job under way: its memcached processes and its child process."""

    def __init__(self, job: str, cache: Path, timeout: float | None,
                 drop: Sequence[str]) -> None:
        if job not in JOB_TIMEOUT:
            raise ValueError(f"unknown job {job!r}; jobs: {', '.join(JOBS)}")
        self.job = job
        django = job.startswith("django")
        source = django_tests(cache) if django else pymemcache_tests(cache)
        work = cache / "runs"
        work.mkdir(parents=True, exist_ok=True)
        name = job + ("-drop-" + "-".join(drop) if drop else "")
        self.results = work / f"{name}.jsonl"
        self.log = work / f"{name}.log"
        self.results.unlink(missing_ok=True)
        nodes = 1 if job.startswith("pymemcache") and job != "pymemcache-BackupClient" else 2
        self.started = time.monotonic()
        self.deadline = self.started + (JOB_TIMEOUT[job] if timeout is None else timeout)
        self.timed_out = False
        self.ended: float | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self.cluster = LocalCluster(nodes).start()
        try:
            first = self.cluster[0]
            if django:
                cmd = [sys.executable, "runtests.py", "--settings=tests.upstream.django_settings",
                       "--parallel=1", "--noinput", "--verbosity=2", DJANGO_LABEL]
                extra = {"MEMRING_UPSTREAM_SERVERS": ",".join(self.cluster.servers),
                         "MEMRING_UPSTREAM_BACKEND":
                             "pymemcache" if job in CONTROLS else "memring"}
            else:
                cmd = [sys.executable, "-m", "pytest", "-c", str(PYMEMCACHE_INI),
                       "--rootdir", str(source), "--confcutdir", str(source),
                       "-p", "tests.upstream.pymemcache_plugin",
                       "--server", first.host, "--port", str(first.port), "-rA",
                       str(source / "test_integration.py")]
                client = "pymemcache" if job in CONTROLS else job.split("-", 1)[1]
                extra = {"MEMRING_UPSTREAM_CLIENT": client,
                         "MEMRING_UPSTREAM_PEERS": ",".join(self.cluster.servers[1:]),
                         "MEMRING_UPSTREAM_DROP": ",".join(drop)}
            with open(self.log, "wb") as out:
                # Its own session, so that a kill of its group reaches whatever it started.
                self.proc = subprocess.Popen(
                    cmd, cwd=source, env=_child_env(self.results, extra),
                    stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                    start_new_session=True)
        except BaseException:
            self.stop()
            raise

    def poll(self) -> bool:
        """True once the child has ended (killed if past its deadline)."""
        assert self.proc is not None
        if self.ended is not None:
            return True
        if self.proc.poll() is None:
            if time.monotonic() <= self.deadline:
                return False
            self.timed_out = True
            self._kill()
        self.ended = time.monotonic()
        return True

    def _kill(self) -> None:
        proc = self.proc
        if proc is not None and proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # the group our child leads, by its PID
            proc.wait(timeout=10)

    def stop(self) -> None:
        """Kill the child if it still runs; stop the memcached processes (by PID)."""
        self._kill()
        self.cluster.stop()

    def result(self) -> JobResult:
        returncode = None if self.proc is None or self.timed_out else self.proc.returncode
        ended = self.ended if self.ended is not None else time.monotonic()
        return JobResult(self.job, read_outcomes(self.results), ended - self.started,
                         returncode, self.timed_out, self.log)


def run_jobs(jobs: Iterable[str], cache: Path = CACHE_DIR, *, concurrent: bool = True,
             drop: Sequence[str] = (), timeout: float | None = None) -> dict[str, JobResult]:
    """Run ``jobs`` and collect their outcomes.

    Concurrently by default: the suites spend most of their time asleep
    (Django's expiry tests), so together they take about as long as the
    longest. Sources are fetched first, one at a time. Whatever happens
    (a timeout, Ctrl-C), every child is killed and every memcached
    process stopped before this returns or raises.

    ``drop`` (pymemcache jobs only, for diagnosis, never in the gate): keyword
    arguments memring's stand-in drops, to see what fails once they are accepted.
    """
    jobs = list(jobs)
    for job in jobs:
        if job not in JOB_TIMEOUT:
            raise ValueError(f"unknown job {job!r}; jobs: {', '.join(JOBS)}")
    if any(j.startswith("pymemcache") for j in jobs):
        pymemcache_tests(cache)
    if any(j.startswith("django") for j in jobs):
        django_tests(cache)
    results: dict[str, JobResult] = {}
    running: list[_Running] = []
    try:
        for job in jobs:
            running.append(_Running(job, cache, timeout, drop))
            if not concurrent:
                _wait(running[-1:])
        _wait(running)
        for r in running:
            r.stop()
            results[r.job] = r.result()
    finally:
        for r in running:
            r.stop()
    return results


def _wait(running: Sequence[_Running]) -> None:
    pending = list(running)
    while pending:
        pending = [r for r in pending if not r.poll()]
        if pending:
            time.sleep(0.05)


def run_job(job: str, cache: Path = CACHE_DIR, timeout: float | None = None,
            drop: Sequence[str] = ()) -> JobResult:
    """Run one job (see :func:`run_jobs`)."""
    return run_jobs([job], cache, drop=drop, timeout=timeout)[job]
