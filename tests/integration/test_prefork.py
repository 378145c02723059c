"""A client built before fork() works in every child, with nothing lost: pre-fork servers.

Against real memcached processes (``LocalCluster``, loopback, ports chosen
at run time, stopped by PID) and real forks:

* gunicorn ``--preload`` with 4 workers of 4 threads, serving an app that
  builds its memring client and uses it once at import (``tests/apps``):
  Flask-Session, memring's own WSGI session middleware, Django's cache
  session backend; each with ``Client`` and ``BackupClient``. Many users,
  each with their own cookie jar, log in and read ``/whoami`` again and
  again: no response names another user, no logged-in user is answered as
  anonymous, no 5xx, and every session write is read back.
* ``multiprocessing`` with the ``fork`` start method: a client made and used
  in the parent; children read thousands of stored keys with ``get`` and
  ``get_many``: no miss, no value of another key, no error, no node marked
  down; and the parent's client is still right afterwards.
* forks while other threads of the parent are in the middle of calls
  (single-key, pipelined ``get_many``/``set_many``, BackupClient's dual
  writes): both sides' calls stay right. And sixty quick forks at random
  moments of busy threads (threads switching every microsecond, so some
  hold a lock at the fork): no child hangs on its first call.
* a node marked down in the parent before the fork, resumed after it, is
  probed back by the child's own client, which then serves its keys.

Every wait is bounded; gunicorn is stopped by PID (SIGTERM, then SIGKILL
past a bound) and its workers are checked gone.
"""

from __future__ import annotations

import contextlib
import http.cookiejar
import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import django  # noqa: F401  (the test extra installs each: a missing one is an error)
import flask_session  # noqa: F401
import gunicorn  # noqa: F401
import pytest

from memring import BackupClient, Client, HealthPolicy, NodeState, Timeouts
from memring.tools.local import LocalCluster, free_port
from tests.forking import ChildFailed, forking_with_threads, start

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not hasattr(os, "fork"), reason="pre-fork servers need fork()"),
]

REPO = Path(__file__).resolve().parents[2]
CLASSES = {"Client": Client, "BackupClient": BackupClient}

#: Pre-fork users: simulated browsers, each logging in once and then reading.
USERS = 32
READS_PER_USER = 20
USER_THREADS = 12
WORKERS = 4
WORKER_THREADS = 4

#: Keys the multiprocessing children read back.
STORED_KEYS = 3000
CHILDREN = 4


@pytest.fixture(scope="module")
def prefork_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as cluster:
        yield cluster


def value_of(key: str) -> str:
    return f"value-of-{key}"


# -- gunicorn ------------------------------------------------------------------


def _children_of(pid: int) -> set[int]:
    """PIDs whose parent is ``pid`` (Linux ``/proc``; elsewhere, none)."""
    found = set()
    for entry in os.listdir("/proc") if os.path.isdir("/proc") else ():
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.add(int(entry))
    return found


def _alive(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


class Gunicorn:
    """``gunicorn --preload`` serving ``tests.apps.<module>:app`` on a free loopback port."""

    def __init__(self, module: str, env: dict[str, str], log: Path) -> None:
        self.module = module
        self.env = env
        self.log_path = log
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.workers: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def start(self, timeout: float = 30.0) -> Gunicorn:
        for _ in range(3):  # a port free a moment ago may be taken meanwhile
            self.port = free_port()
            if self._start_once(timeout):
                return self
        raise AssertionError(f"gunicorn did not start:\n{self.log()}")

    def _start_once(self, timeout: float) -> bool:
        argv = [sys.executable, "-m", "gunicorn", "--preload",
                "--workers", str(WORKERS), "--threads", str(WORKER_THREADS),
                "--bind", f"127.0.0.1:{self.port}", "--graceful-timeout", "3",
                "--timeout", "60", "--log-level", "warning",
                f"tests.apps.{self.module}:app"]
        env = {**os.environ, **self.env, "PYTHONPATH": str(REPO)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=log)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.proc.wait()
                self.proc = None
                if "in use" in self.log():
                    return False
                raise AssertionError(f"gunicorn exited at start:\n{self.log()}")
            with contextlib.suppress(OSError, ValueError):
                self.workers.add(self.get("/ping")["pid"])
                break
            time.sleep(0.05)
        else:
            self.stop()
            raise AssertionError(f"gunicorn not ready in {timeout}s:\n{self.log()}")
        # Every worker should be up before the users come (bounded: a slow
        # machine may only show some of them).
        deadline = time.monotonic() + 10
        while len(self.workers) < WORKERS and time.monotonic() < deadline:
            self.workers |= _children_of(self.proc.pid)
            time.sleep(0.05)
        return True

    def get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=5) as resp:
            return json.loads(resp.read())

    def stop(self) -> None:
        """SIGTERM the master by PID, SIGKILL it past a bound; then make sure workers are gone."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        self.workers |= _children_of(proc.pid)
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        deadline = time.monotonic() + 5
        while any(_alive(p) for p in self.workers) and time.monotonic() < deadline:
            time.sleep(0.05)
        left = [p for p in self.workers if _alive(p)]
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"gunicorn workers outlived their master: {left}"


@dataclass
class Tally:
    """What the simulated users saw."""

    requests: int = 0
    wrong_user: int = 0  #: a response naming another user
    lost: int = 0  #: a logged-in user answered as anonymous
    server_errors: int = 0  #: 5xx
    stale: int = 0  #: a session whose last write was not read back
    other_errors: int = 0  #: refused, reset, 4xx, not JSON
    workers: set[int] = field(default_factory=set)
    examples: list[str] = field(default_factory=list)

    def note(self, what: str) -> None:
        if len(self.examples) < 8:
            self.examples.append(what)

    def add(self, other: Tally) -> None:
        for name in ("requests", "wrong_user", "lost", "server_errors", "stale",
                     "other_errors"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.workers |= other.workers
        for e in other.examples:
            self.note(e)

    def counts(self) -> dict[str, int]:
        return {"wrong_user": self.wrong_user, "lost": self.lost,
                "server_errors": self.server_errors, "stale": self.stale,
                "other_errors": self.other_errors}


def _request(opener: urllib.request.OpenerDirector, url: str, tally: Tally,
             data: dict[str, str] | None = None) -> dict[str, Any] | None:
    """One request; the JSON body, or None (counted in ``tally``)."""
    tally.requests += 1
    body = None if data is None else urllib.parse.urlencode(data).encode()
    try:
        with opener.open(urllib.request.Request(url, data=body), timeout=30) as resp:
            reply: dict[str, Any] = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        with contextlib.closing(exc):
            if exc.code >= 500:
                tally.server_errors += 1
            else:
                tally.other_errors += 1
            tally.note(f"{url}: HTTP {exc.code}")
        return None
    except (OSError, ValueError) as exc:
        tally.other_errors += 1
        tally.note(f"{url}: {exc!r}")
        return None
    tally.workers.add(reply.get("pid", 0))
    return reply


def simulate_user(base: str, name: str, reads: int) -> Tally:
    """Log in as ``name`` with a cookie jar of its own, then read /whoami ``reads`` times.

    A lost session is counted and the user logs in again, as a person would.
    """
    tally = Tally()
    opener = urllib.request.build_opener(
        urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    logged_in = False
    visits: int | None = None
    for _ in range(reads):
        if not logged_in:
            if _request(opener, base + "/login", tally, {"user": name}) is None:
                continue
            logged_in, visits = True, 0
        reply = _request(opener, base + "/whoami", tally)
        if reply is None:
            visits = None  # the write may or may not have happened
            continue
        user = reply.get("user")
        if user is None:
            tally.lost += 1
            tally.note(f"{name}: logged out (worker {reply.get('pid')})")
            logged_in = False
        elif user != name:
            tally.wrong_user += 1
            tally.note(f"{name}: answered as {user!r} (worker {reply.get('pid')})")
        else:
            if visits is not None and reply.get("visits") != visits + 1:
                tally.stale += 1
                tally.note(f"{name}: visits {reply.get('visits')}, expected {visits + 1}")
            visits = reply.get("visits")
    return tally


def drive_users(base: str, prefix: str) -> Tally:
    total = Tally()
    with ThreadPoolExecutor(USER_THREADS) as pool:
        futures = [pool.submit(simulate_user, base, f"{prefix}-{i}", READS_PER_USER)
                   for i in range(USERS)]
        for f in futures:
            total.add(f.result(timeout=120))
    return total


@pytest.mark.parametrize("client_name", list(CLASSES))
@pytest.mark.parametrize("app", ["flask_app", "wsgi_app", "django_app"])
def test_gunicorn_preload_users_keep_their_sessions(
        app: str, client_name: str, prefork_cluster: LocalCluster, tmp_path: Path) -> None:
    env = {"MEMRING_TEST_SERVERS": ",".join(prefork_cluster.servers),
           "MEMRING_TEST_CLIENT": client_name}
    server = Gunicorn(app, env, tmp_path / "gunicorn.log").start()
    try:
        tally = drive_users(server.url, f"{app}-{client_name}-{random.randrange(1 << 30)}")
    finally:
        server.stop()
    summary = (f"{tally.requests} requests over workers {sorted(tally.workers)}: "
               f"{tally.counts()}; e.g. {tally.examples}\n--- gunicorn log ---\n{server.log()}")
    assert len(tally.workers) >= 2, summary  # else nothing was forked
    assert tally.counts() == {"wrong_user": 0, "lost": 0, "server_errors": 0, "stale": 0,
                              "other_errors": 0}, summary


# -- multiprocessing, fork start method --------------------------------------------


def read_back(client: Client, keys: list[str]) -> dict[str, Any]:
    """Read every key with ``get``, then with ``get_many`` in batches of 100; count what's wrong.

    Also reports the client's view of the nodes: a node marked down with no
    fault injected is a symptom even when the reads were served elsewhere.
    """
    out: dict[str, Any] = {"misses": 0, "wrong": 0, "errors": 0, "examples": []}

    def note(what: str) -> None:
        if len(out["examples"]) < 5:
            out["examples"].append(what)

    for key in keys:
        try:
            got = client.get(key)
        except Exception as exc:
            out["errors"] += 1
            note(f"get {key}: {exc!r}")
            continue
        if got is None:
            out["misses"] += 1
            note(f"get {key}: miss")
        elif got != value_of(key):
            out["wrong"] += 1
            note(f"get {key}: {got!r}")
    for i in range(0, len(keys), 100):
        batch = keys[i:i + 100]
        try:
            found = client.get_many(batch)
        except Exception as exc:
            out["errors"] += len(batch)
            note(f"get_many: {exc!r}")
            continue
        for key in batch:
            if key not in found:
                out["misses"] += 1
                note(f"get_many {key}: miss")
            elif found[key] != value_of(key):
                out["wrong"] += 1
                note(f"get_many {key}: {found[key]!r}")
    out.update(_health_summary(client))
    return out


def _health_summary(client: Client) -> dict[str, Any]:
    health = client.health()
    return {"not_up": sorted(label for label, s in health.items()
                             if s.state is not NodeState.UP),
            "state_changes": sum(s.state_changes for s in health.values())}


CLEAN = {"misses": 0, "wrong": 0, "errors": 0, "not_up": [], "state_changes": 0}


def _clean(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report.get(k) for k in CLEAN}


def _lines(reports: list[dict[str, Any]]) -> str:
    """One line per report, whole (pytest shortens a long repr)."""
    return "\n".join(json.dumps(r, default=repr) for r in reports)


def _mp_child(client: Client, keys: list[str], conn: Any) -> None:
    try:
        report = read_back(client, keys)
    except BaseException as exc:  # report anything, never hang the parent
        report = {"crash": repr(exc)}
    conn.send(report)
    conn.close()


@pytest.mark.parametrize("client_name", list(CLASSES))
def test_multiprocessing_fork_children_read_every_key(
        client_name: str, prefork_cluster: LocalCluster) -> None:
    ctx = multiprocessing.get_context("fork")
    client = CLASSES[client_name](prefork_cluster.servers)
    try:
        keys = [f"mp:{client_name}:{random.randrange(1 << 30)}:{i}" for i in range(STORED_KEYS)]
        assert client.set_many({k: value_of(k) for k in keys}, expire=300) == []
        # Used in the parent: a pooled connection to every node is open now.
        assert len(client.get_many(keys[:300])) == 300

        procs, pipes = [], []
        with forking_with_threads():
            for _ in range(CHILDREN):
                r, w = ctx.Pipe(duplex=False)
                p = ctx.Process(target=_mp_child, args=(client, keys, w), daemon=True)
                p.start()
                w.close()
                procs.append(p)
                pipes.append(r)
        reports = []
        deadline = time.monotonic() + 90
        for p, r in zip(procs, pipes, strict=True):
            with r:
                if r.poll(max(0.0, deadline - time.monotonic())):
                    reports.append(r.recv())
                else:
                    reports.append({"crash": "no report in time"})
            p.join(timeout=max(1.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join(timeout=10)
            p.close()
        parent = read_back(client, keys)
    finally:
        client.close()
    assert [_clean(r) for r in reports] == [CLEAN] * CHILDREN, _lines(reports)
    assert _clean(parent) == CLEAN, _lines([parent])


# -- a fork while the parent's threads are mid-call ---------------------------------


class Workload:
    """Calls of every kind from several threads, each checking what it reads back.

    Each thread writes keys of its own (``<tag>:<thread>:<i>``) with a version
    counter and checks that a read returns the latest version; all threads
    also read the shared stored keys. Runs until ``stop`` is set (or, in a
    child, for ``seconds``).
    """

    def __init__(self, client: Client, stored: list[str], tag: str) -> None:
        self.client = client
        self.stored = stored
        self.tag = tag
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.counts = {"calls": 0, "misses": 0, "wrong": 0, "errors": 0}
        self.examples: list[str] = []

    def _bad(self, kind: str, what: str) -> None:
        with self.lock:
            self.counts[kind] += 1
            if len(self.examples) < 6:
                self.examples.append(what)

    def _calls(self, n: int) -> None:
        with self.lock:
            self.counts["calls"] += n

    def _check(self, key: str, got: Any, want: Any, how: str) -> None:
        if got is None:
            self._bad("misses", f"{how} {key}: miss")
        elif got != want:
            self._bad("wrong", f"{how} {key}: {got!r} != {want!r}")

    def single(self, me: int) -> None:
        rng = random.Random(me)
        version = 0
        own = [f"{self.tag}:{me}:{i}" for i in range(20)]
        while not self.stop.is_set():
            version += 1
            try:
                key = rng.choice(self.stored)
                self._check(key, self.client.get(key), value_of(key), "get")
                mine = rng.choice(own)
                self.client.set(mine, f"{mine}@{version}", expire=300)
                self._check(mine, self.client.get(mine), f"{mine}@{version}", "get own")
                self._calls(3)
            except Exception as exc:
                self._bad("errors", f"single: {exc!r}")

    def many(self, me: int) -> None:
        rng = random.Random(me)
        version = 0
        own = [f"{self.tag}:{me}:{i}" for i in range(60)]
        while not self.stop.is_set():
            version += 1
            try:
                batch = rng.sample(self.stored, 150)
                found = self.client.get_many(batch)
                for key in batch:
                    self._check(key, found.get(key), value_of(key), "get_many")
                values = {k: f"{k}@{version}" for k in own}
                failed = self.client.set_many(values, expire=300)
                if failed:
                    self._bad("errors", f"set_many failed for {failed[:3]}")
                found = self.client.get_many(own)
                for key in own:
                    self._check(key, found.get(key), values[key], "get_many own")
                self._calls(3)
            except Exception as exc:
                self._bad("errors", f"many: {exc!r}")

    def threads(self) -> list[threading.Thread]:
        return [threading.Thread(target=self.single, args=(0,), daemon=True),
                threading.Thread(target=self.single, args=(1,), daemon=True),
                threading.Thread(target=self.many, args=(2,), daemon=True),
                threading.Thread(target=self.many, args=(3,), daemon=True)]

    def run_for(self, seconds: float) -> dict[str, Any]:
        threads = self.threads()
        for t in threads:
            t.start()
        time.sleep(seconds)
        self.stop.set()
        for t in threads:
            t.join(timeout=10)
        stuck = sum(t.is_alive() for t in threads)
        return {**self.counts, "stuck_threads": stuck, "examples": self.examples,
                **_health_summary(self.client)}


WORKLOAD_CLEAN = {"misses": 0, "wrong": 0, "errors": 0, "stuck_threads": 0, "not_up": [],
                  "state_changes": 0}


def _workload_clean(report: dict[str, Any]) -> dict[str, Any]:
    return {k: report.get(k) for k in WORKLOAD_CLEAN}


@pytest.mark.parametrize("client_name", list(CLASSES))
def test_fork_while_parent_threads_are_mid_call(
        client_name: str, prefork_cluster: LocalCluster) -> None:
    client = CLASSES[client_name](prefork_cluster.servers)
    tag = f"inflight:{client_name}:{random.randrange(1 << 30)}"
    stored = [f"{tag}:stored:{i}" for i in range(1000)]
    try:
        assert client.set_many({k: value_of(k) for k in stored}, expire=300) == []
        parent = Workload(client, stored, f"{tag}:parent")
        threads = parent.threads()
        for t in threads:
            t.start()
        children = []
        try:
            time.sleep(0.2)  # the threads are busy now
            for i in range(6):
                # Each child runs the same workload on its own keys, with its own threads.
                children.append(start(
                    lambda i=i: Workload(client, stored, f"{tag}:child{i}").run_for(1.0),
                    timeout=20))
                time.sleep(0.1)
            reports: list[Any] = []
            for child in children:
                try:
                    reports.append(child.result())
                except ChildFailed as exc:
                    reports.append({"crash": str(exc)[:500]})
            time.sleep(0.2)
        finally:
            parent.stop.set()
            for t in threads:
                t.join(timeout=10)
        parent_report = {**parent.counts, "stuck_threads": sum(t.is_alive() for t in threads),
                         "examples": parent.examples, **_health_summary(client)}
    finally:
        client.close()
    summary = "parent:\n" + _lines([parent_report]) + "\nchildren:\n" + _lines(reports)
    assert [_workload_clean(r) for r in reports] == [WORKLOAD_CLEAN] * len(children), summary
    assert all(r["calls"] > 0 for r in reports), summary
    assert _workload_clean(parent_report) == WORKLOAD_CLEAN, summary
    assert parent_report["calls"] > 0


def _quick_calls(client: Client, stored: list[str], tag: str) -> dict[str, Any]:
    """A few calls of each kind in a fresh child, checked."""
    out = {"misses": 0, "wrong": 0}
    keys = stored[:50]
    if client.get(keys[0]) != value_of(keys[0]):
        out["wrong" if client.get(keys[0]) else "misses"] += 1
    found = client.get_many(keys)
    out["misses"] += sum(k not in found for k in keys)
    out["wrong"] += sum(found[k] != value_of(k) for k in keys if k in found)
    mine = {f"{tag}:{os.getpid()}:{i}": f"{os.getpid()}-{i}" for i in range(20)}
    assert client.set_many(mine, expire=60) == []
    back = client.get_many(list(mine))
    out["wrong"] += sum(back.get(k) != v for k, v in mine.items())
    return out


@pytest.mark.parametrize("client_name", list(CLASSES))
def test_many_forks_under_load_never_deadlock_the_child(
        client_name: str, prefork_cluster: LocalCluster) -> None:
    """Forks at random moments of busy threads: a lock one of them held must not be
    inherited held (the child would hang on its first call)."""
    client = CLASSES[client_name](prefork_cluster.servers)
    tag = f"forks:{client_name}:{random.randrange(1 << 30)}"
    stored = [f"{tag}:stored:{i}" for i in range(500)]
    try:
        assert client.set_many({k: value_of(k) for k in stored}, expire=300) == []
        parent = Workload(client, stored, f"{tag}:parent")
        threads = parent.threads()
        for t in threads:
            t.start()
        reports: list[Any] = []
        interval = sys.getswitchinterval()
        sys.setswitchinterval(1e-6)  # threads switch often: some hold a lock at the fork
        try:
            for _ in range(60):
                time.sleep(random.uniform(0.001, 0.02))
                child = start(lambda: _quick_calls(client, stored, f"{tag}:child"), timeout=5)
                try:
                    reports.append(child.result())
                except ChildFailed as exc:
                    hung = "did not finish" in str(exc)
                    reports.append({"hung" if hung else "raised": str(exc).splitlines()[-1]})
                if sum(r != {"misses": 0, "wrong": 0} for r in reports) >= 5:
                    break  # enough to show it; a broken child can cost seconds
        finally:
            sys.setswitchinterval(interval)
            parent.stop.set()
            for t in threads:
                t.join(timeout=10)
        parent_report = {**parent.counts, "stuck_threads": sum(t.is_alive() for t in threads),
                         "examples": parent.examples, **_health_summary(client)}
    finally:
        client.close()
    bad = [r for r in reports if r != {"misses": 0, "wrong": 0}]
    tally = {kind: sum(kind in r for r in bad) for kind in ("hung", "raised")}
    tally.update({kind: sum(r.get(kind, 0) for r in bad) for kind in ("misses", "wrong")})
    assert not bad, (f"{len(bad)} of {len(reports)} children went wrong, {tally}; e.g.\n"
                     + _lines(bad[:6]))
    assert _workload_clean(parent_report) == WORKLOAD_CLEAN, _lines([parent_report])


# -- a node down at the fork comes back in the child ----------------------------------


@pytest.mark.parametrize("client_name", list(CLASSES))
def test_node_down_at_fork_is_probed_back_in_the_child(
        client_name: str, memcached_binary: str) -> None:
    with LocalCluster(3, binary=memcached_binary) as cluster:
        client = CLASSES[client_name](
            cluster.servers, timeouts=Timeouts(connect=0.2, read=0.3),
            health=HealthPolicy(backoff_initial=0.1, backoff_max=0.5))
        try:
            keys = [f"hang:{client_name}:{i}" for i in range(300)]
            assert client.set_many({k: value_of(k) for k in keys}, expire=300) == []
            hung = cluster[0]
            on_hung = [k for k in keys if client.ring.node_for(k.encode()) == hung.node]
            assert on_hung
            hung.hang()
            client.get(on_hung[0])  # times out: the parent marks the node down
            label = hung.node.label
            assert client.health()[label].state is NodeState.DOWN

            def child() -> dict[str, Any]:
                seen = [client.health()[label].state.value]  # as it was at the fork
                deadline = time.monotonic() + 6  # probes every 0.1-0.5 s
                while time.monotonic() < deadline:
                    state = client.health()[label].state
                    if state is not NodeState.DOWN:
                        break
                    time.sleep(0.05)
                seen.append(client.health()[label].state.value)
                found = client.get_many(on_hung)
                served = sum(found.get(k) == value_of(k) for k in on_hung)
                return {"states": seen, "served": served}

            c = start(child, timeout=30)
            time.sleep(0.3)
            hung.resume()  # after the fork
            report = c.result()
        finally:
            client.close()
    assert report["states"][0] == "down", report
    assert report["states"][-1] in ("warming", "up"), report
    assert report["served"] == len(on_hung), report
