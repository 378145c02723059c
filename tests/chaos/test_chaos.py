"""Chaos: session load from 8 threads while memcached nodes are killed, hung and restarted.

Runs :func:`memring.tools.chaos.run_chaos` once per client mode (``next`` and
``backup``), 32 s each with every fault kind and a fixed seed, and asserts the
invariants on its report:

* Invariant S: no stale read, no read of a deleted key;
* keys lost: none in backup mode; in mode "next" only keys of a node that
  failed (about 1/N of the keys per kill or restart);
* with ``HealthPolicy(failure_threshold=1)`` no error reaches the caller;
* no call takes longer than one connect plus one read timeout, plus a margin.

Each failure message carries the whole report table, with examples (key,
op history, timing) to start from. Plus the command line end to end.

Together about 75 s on 2 cores.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from memring.tools.chaos import (
    DEFAULT_FAULTS,
    ChaosConfig,
    ChaosReport,
    FaultEvent,
    fit_schedule,
    format_report,
    run_chaos,
)
from memring.tools.local import MemcachedNotFound, find_memcached

pytestmark = pytest.mark.chaos

#: Long enough for every fault kind once (a fault and its warming window take
#: about 7 s with the engine's failover_ttl of 3 s; fit_schedule says about
#: 27 s), short enough for CI.
DURATION = 32.0
SEED = 1
#: A hung node is marked down by the first call that waits a read timeout on
#: it; the health poller, thread scheduling and a busy machine add to that.
DETECT_SLACK = 0.25


@pytest.fixture(scope="module", autouse=True)
def memcached_binary() -> str:
    try:
        return find_memcached()
    except MemcachedNotFound as exc:
        pytest.fail(f"the chaos tests need a memcached binary: {exc}", pytrace=False)


def _run(mode: str) -> ChaosReport:
    report = run_chaos(ChaosConfig(mode=mode, duration=DURATION, seed=SEED))
    # Shown with -rA / on failure: the report of the run the assertions judge.
    print(format_report(report))
    return report


@pytest.fixture(scope="module")
def next_report() -> ChaosReport:
    return _run("next")


@pytest.fixture(scope="module")
def backup_report() -> ChaosReport:
    return _run("backup")


@pytest.fixture(params=["next", "backup"])
def report(request: pytest.FixtureRequest) -> ChaosReport:
    fixture: ChaosReport = request.getfixturevalue(f"{request.param}_report")
    return fixture


def _table(report: ChaosReport) -> str:
    return "\n" + format_report(report)


def _examples(report: ChaosReport, what: str) -> str:
    found = [e for e in report.examples if e["what"] == what]
    return "\n" + json.dumps(found, indent=1, default=str)


def test_every_fault_kind_was_injected(report: ChaosReport) -> None:
    # DURATION is long enough for one turn of every kind, by the schedule's own estimate.
    assert fit_schedule(report.config).skipped == ()
    kinds = {e.kind for e in report.events}
    assert kinds == set(DEFAULT_FAULTS), _table(report)
    assert report.skipped_faults == {}, _table(report)


def test_no_stale_reads(report: ChaosReport) -> None:
    assert report.stale_reads == 0, _table(report) + _examples(report, "stale")


def test_no_resurrected_deletes(report: ChaosReport) -> None:
    assert report.resurrected_deletes == 0, _table(report) + _examples(report, "resurrected")


def test_no_error_reaches_the_caller(report: ChaosReport) -> None:
    # With failure_threshold=1 the first failure marks the node down and the
    # call fails over: nothing is left for the caller to see.
    assert report.config.health.failure_threshold == 1
    assert report.errors == {}, _table(report) + _examples(report, "error")


def test_every_call_is_bounded(report: ChaosReport) -> None:
    bound = report.config.latency_bound
    assert bound == pytest.approx(
        report.config.timeouts.connect + report.config.timeouts.read
        + report.config.latency_margin)
    # Time the whole process was frozen by the OS (an overloaded machine) is not
    # the client's: slow_calls leaves it out, slow_calls_in_stalls and the table show it.
    assert report.slow_calls == 0, _table(report) + "\n" + json.dumps(report.slowest, indent=1)
    if report.max_stall_s == 0:
        assert report.max_latency_s <= bound


#: Socket timeouts are kernel timers: they fire up to two scheduler ticks late.
TIMER_SLACK = 0.05


def noticeable(e: FaultEvent, read_timeout: float) -> bool:
    """Could a client see this fault? A hang shorter than the read timeout fails no call."""
    if e.kind != "flap":
        return e.kind in ("kill", "hang")
    for action in e.actions:  # "hang 0.31s", "kill 0.25s"
        kind, hold = action.split()
        if kind == "kill" or float(hold.rstrip("s")) >= read_timeout + TIMER_SLACK:
            return True
    return False


def test_faults_are_detected_and_recovered_quickly(report: ChaosReport) -> None:
    cfg = report.config
    for e in report.events:
        if noticeable(e, cfg.timeouts.read):
            # A kill is seen at the next call (refused); a hang after one read timeout.
            assert e.detect_s is not None, _table(report)
            assert e.detect_s <= cfg.timeouts.read + DETECT_SLACK, _table(report)
        if e.detect_s is not None:
            # Back at the next probe once it answers.
            assert e.recover_s is not None, _table(report)
            assert e.recover_s <= cfg.probe_delay_max + DETECT_SLACK, _table(report)


def test_next_mode_loses_only_keys_of_failed_nodes(next_report: ChaosReport) -> None:
    r = next_report
    assert r.unexpected_lost_keys == 0, _table(r) + _examples(r, "lost")
    n = r.config.nodes
    for e in r.events:
        # Most keys hold a session when a fault starts, and are read during it.
        assert e.keys_checked >= 0.25 * r.config.threads * r.config.keys_per_thread, _table(r)
        if e.kind in ("kill", "restart"):
            # The victim's keys die with it, and only those: its ring share, about 1/N.
            assert e.missing_fraction == pytest.approx(e.victim_share, abs=0.03), _table(r)
            assert e.missing_fraction == pytest.approx(1 / n, abs=0.08), _table(r)
        else:
            assert e.missing_fraction <= e.victim_share + 0.01, _table(r)


def test_backup_mode_loses_no_key(backup_report: ChaosReport) -> None:
    r = backup_report
    assert r.lost_keys == 0, _table(r) + _examples(r, "lost")
    assert all(e.keys_missing == 0 for e in r.events), _table(r)


def test_the_report_is_whole(report: ChaosReport) -> None:
    d = report.as_dict()
    json.dumps(d)  # serializable
    assert d["ok"] == (not report.violations)
    assert [p["phase"] for p in d["latency"]] == ["healthy", "fault", "recovery"]
    assert all(p["ops"] > 0 for p in d["latency"])
    assert report.ops > 10_000
    assert report.elapsed_s == pytest.approx(DURATION, abs=1.0)
    assert sum(report.ops_by_kind.values()) == report.ops
    assert report.ops_by_kind["get"] > 0.8 * report.ops
    _assert_stopped(report.pids)


def _assert_stopped(pids: list[int]) -> None:
    """Each memcached process the run started (restarts too) is gone."""
    assert pids
    for pid in pids:
        cmdline = Path(f"/proc/{pid}/cmdline")
        try:
            argv = cmdline.read_bytes().split(b"\0")
        except (FileNotFoundError, ProcessLookupError):
            continue  # gone
        assert b"memcached" not in argv[0], f"memcached pid {pid} is still running"


def test_command_line_end_to_end() -> None:
    """``memring chaos ... --format json`` exits 0 and leaves no memcached behind."""
    start = time.monotonic()
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [sys.executable, "-m", "memring", "chaos", "--duration", "5", "--nodes", "3",
         "--threads", "4", "--faults", "hang", "--seed", "3", "--format", "json"],
        capture_output=True, text=True, timeout=60, env=env,
    )
    elapsed = time.monotonic() - start
    assert done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    assert done.returncode == 0, json.dumps(report["violations"])
    assert report["ok"] is True
    assert report["config"]["nodes"] == 3 and report["config"]["faults"] == ["hang"]
    assert [e["kind"] for e in report["events"]] == ["hang"]
    assert report["ops"] > 0 and report["stale_reads"] == 0
    assert elapsed < 20, f"a 5 s run took {elapsed:.1f} s"
    _assert_stopped(report["pids"])


def test_command_line_async_face() -> None:
    """``memring chaos --async``: the workload's calls are tasks of one event loop; in
    backup mode no key may be lost (the modes' other promises are the sync runs')."""
    mode = "backup"
    env = {**os.environ, "PYTHONWARNINGS": "error"}
    done = subprocess.run(
        [sys.executable, "-m", "memring", "chaos", "--async", "--mode", mode, "--duration", "14",
         "--nodes", "3", "--threads", "4", "--faults", "kill,hang", "--seed", "3",
         "--format", "json"],
        capture_output=True, text=True, timeout=90, env=env,
    )
    assert done.stderr == "", done.stderr
    report = json.loads(done.stdout)
    assert done.returncode == 0, json.dumps(report["violations"])
    assert report["config"]["face"] == "async"
    kinds = [e["kind"] for e in report["events"]]
    assert kinds and set(kinds) <= {"hang", "kill"}  # a busy machine may leave time for one
    assert report["ops"] > 1000
    assert report["stale_reads"] == 0 and report["resurrected_deletes"] == 0
    assert report["lost_keys"] == 0
    _assert_stopped(report["pids"])


def test_command_line_rejects_bad_input_in_one_line() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "memring", "chaos", "--nodes", "1"],
        capture_output=True, text=True, timeout=30,
    )
    assert done.returncode == 2
    assert done.stdout == ""
    assert done.stderr.strip().splitlines() == [
        "memring chaos: error: nodes must be an integer from 2 to 32, got 1"]


def test_a_rolling_restart_waits_for_redundancy_and_loses_nothing() -> None:
    """Backup mode: every node restarted in turn, the next once ``wait_redundant()``
    returns; then once more without waiting, whose losses are counted, not hidden."""
    report = run_chaos(ChaosConfig(mode="backup", duration=30.0, seed=SEED,
                                   faults=("rolling", "rolling-nowait")))
    print(format_report(report))
    rolls = {e.kind: e for e in report.events}
    assert set(rolls) == {"rolling", "rolling-nowait"}, _table(report)
    waited = rolls["rolling"]
    assert len(waited.rolled) == report.config.nodes
    assert all(w is not None and 0 <= w < 60 for w in waited.waits_s), _table(report)
    assert rolls["rolling-nowait"].waits_s == [None] * report.config.nodes
    # keys lost are exactly those whose two nodes the non-waiting restart took
    assert report.lost_keys == report.nowait_lost_keys, _table(report)
    assert report.ok, _table(report)
    assert report.stale_reads == 0 and report.resurrected_deletes == 0
