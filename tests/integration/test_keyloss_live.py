"""``memring keyloss --live`` end to end, on real memcached processes.

Live nodes carry the simulated nodes' names as their ring identity, so a live
run places every key exactly where the simulation does: for the same node
counts, seed and hash, the rows must be *equal*, not merely close. Every test
also checks that no memcached process the command started outlives it.
"""

from __future__ import annotations

import json
import math
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from importlib.util import find_spec
from pathlib import Path
from typing import Any

import pytest
from pymemcache.client.base import Client as PymemcacheClient

import memring.tools.keyloss.live
from memring import HashRing
from memring.cli import main
from memring.hashring import DEFAULT_VNODES
from memring.hashring.hashes import murmur3_key_hash
from memring.tools.keyloss import (
    NODE_LIMITS,
    SERVERS_KEY_PREFIX,
    KeylossError,
    measure_live,
    session_keys,
    simulate,
)
from memring.tools.local import LocalCluster, MemcachedProcess, free_port

pytestmark = pytest.mark.integration

ALL = ("ring", "modulo", "backup")
FIELDS = ["nodes", "killed", "mode", "keys", "lost", "lost_fraction", "expected_fraction"]


# -- processes -------------------------------------------------------------------
def memcached_children(parent: int) -> set[int]:
    """PIDs of the memcached processes (zombies included) whose parent is ``parent``."""
    found = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        if comm == "memcached" and ppid == parent:
            found.add(int(entry))
    return found


def alive(pid: int) -> bool:
    """Whether ``pid`` is a process that still runs (not gone, not a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rindex(")") + 2 :].split()[0] != "Z"


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The PIDs of every memcached process started during the test.

    After the test none may run, and this process has no more memcached
    children than before (the shared session cluster excepted).
    """
    pids: list[int] = []
    original = MemcachedProcess.start

    def start(self: MemcachedProcess, timeout: float = 5.0) -> MemcachedProcess:
        result = original(self, timeout)
        assert self.pid is not None
        pids.append(self.pid)
        return result

    before = memcached_children(os.getpid())
    monkeypatch.setattr(MemcachedProcess, "start", start)
    yield pids
    assert [pid for pid in pids if alive(pid)] == []
    assert memcached_children(os.getpid()) <= before


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


PROGRESS_LINE = re.compile(r"memring keyloss: +\d+% .+ \([\d,]+/[\d,]+ keys written\+read\)")


def assert_only_progress(err: str) -> None:
    """Off a terminal stderr holds plain progress lines, if any, and nothing else."""
    assert "\r" not in err, err
    assert all(PROGRESS_LINE.fullmatch(line) for line in err.splitlines()), err


def assert_one_error_line(err: str, needle: str) -> None:
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert re.match(r"memring keyloss: error: ", err), err
    assert needle in err, err


# -- live agrees with simulated, key for key ----------------------------------------
@pytest.mark.parametrize(
    ("counts", "kill", "hash"),
    [([3, 4], 1, "murmur3"), ([4, 5], 2, "murmur3"), ([3], 1, "ketama")],
)
def test_live_rows_equal_simulated_rows(
    started: list[int], counts: list[int], kill: int, hash: str
) -> None:
    live = measure_live(counts, keys=4000, kill=kill, modes=ALL, seed=3, hash=hash)
    assert live == simulate(counts, keys=4000, kill=kill, modes=ALL, seed=3, hash=hash)
    assert len(started) == sum(counts) * len(ALL)  # a fresh cluster per N and mode
    if kill == 1:
        assert all(r.lost == 0 for r in live if r.mode == "backup")
    else:
        assert all(r.lost > 0 for r in live if r.mode == "backup")


def ring_bound(n: int, keys: int) -> float:
    """How far one node's measured share may be from 1/n: ring imbalance and sampling."""
    imbalance = math.sqrt((n - 1) / (n**3 * DEFAULT_VNODES))
    sampling = math.sqrt((1 / n) * (1 - 1 / n) / keys)
    return 4 * imbalance + 5 * sampling


def test_known_answers_and_live_is_the_default(
    capsys: pytest.CaptureFixture[str], started: list[int]
) -> None:
    # No --live and no --simulate: memcached is installed, so this is live.
    code, out, err = run(capsys, "keyloss", "--nodes", "3,4", "--keys", "5000", "--format", "json")
    assert code == 0, err
    assert_only_progress(err)  # not a TTY: plain progress lines; the failover warnings hidden
    assert len(started) == (3 + 4) * 3
    rows = {(r["nodes"], r["mode"]): r for r in json.loads(out)}
    assert all(list(r) == FIELDS for r in rows.values())
    for n in (3, 4):
        ring, modulo, backup = rows[n, "ring"], rows[n, "modulo"], rows[n, "backup"]
        assert abs(ring["lost_fraction"] - 1 / n) < ring_bound(n, 10000)  # 33%, 25%
        assert ring["expected_fraction"] == 1 / n
        p = (n - 1) / n
        assert abs(modulo["lost_fraction"] - p) < 5 * math.sqrt(p * (1 - p) / 10000)
        assert backup["lost"] == 0 and backup["expected_fraction"] == 0


def test_table_csv_and_plot(
    capsys: pytest.CaptureFixture[str], started: list[int], tmp_path: Path
) -> None:
    argv = ["keyloss", "--live", "--nodes", "4", "--kill", "2", "--keys", "5000", "--seed", "5"]
    plot = tmp_path / "loss.png"
    with_plot = ["--plot", str(plot)] if find_spec("matplotlib") else []
    code, table, err = run(capsys, *argv, *with_plot)
    assert code == 0, err
    lines = table.splitlines()
    assert lines[0] == ("live: real memcached processes on 127.0.0.1, the dead ones SIGKILLed "
                        "(5,000 keys, seed 5)")
    assert lines[1].split() == ["nodes", "killed", "mode", "keys", "lost", "lost", "%",
                                "expected", "%"]  # fmt: skip
    assert [line.split()[:3] for line in lines[3:]] == [["4", "2", m] for m in ALL]
    if with_plot:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    code, csv_out, _ = run(capsys, *argv, "--format", "csv")
    assert code == 0
    header, *body = csv_out.splitlines()
    assert header == ",".join(FIELDS)
    simulated = simulate([4], keys=5000, kill=2, modes=ALL, seed=5)
    assert [int(line.split(",")[4]) for line in body] == [r.lost for r in simulated]


# -- the caller's servers -------------------------------------------------------------
def recount(servers: list[str], down: list[str], keys: int) -> dict[str, int]:
    """The loss each mode must measure, counted from placement alone."""
    ring = HashRing(servers)
    dead = {ring.nodes[servers.index(d)] for d in down}
    names = [SERVERS_KEY_PREFIX + k for k in session_keys(keys, 0)]
    survivors = [i for i, s in enumerate(servers) if s not in down]
    n, m = len(servers), len(survivors)
    return {
        "ring": sum(ring.node_for(k) in dead for k in names),
        "modulo": sum(survivors[h % m] != h % n for h in map(murmur3_key_hash, names)),
        "backup": sum(dead.issuperset(ring.nodes_for(k, 2)) for k in names),
    }


def raw_stats(server: str) -> dict[bytes, Any]:
    host, port = server.split(":")
    client = PymemcacheClient((host, int(port)), connect_timeout=1.0, timeout=1.0)
    try:
        return dict(client.stats())
    finally:
        client.close()


@pytest.mark.parametrize("down_count", [1, 2])
def test_servers_and_down(
    capsys: pytest.CaptureFixture[str], fresh_cluster: LocalCluster, down_count: int
) -> None:
    servers = fresh_cluster.servers
    down = servers[1 : 1 + down_count]
    code, out, err = run(
        capsys, "keyloss", "--servers", ",".join(servers), "--down", ",".join(down),
        "--keys", "6000", "--format", "json",
    )  # fmt: skip
    assert code == 0, err
    rows = json.loads(out)
    assert [(r["nodes"], r["killed"], r["mode"]) for r in rows] == [(4, down_count, m) for m in ALL]
    assert {r["mode"]: r["lost"] for r in rows} == recount(servers, down, 6000)
    for server in servers:
        stats = raw_stats(server)
        if server in down:  # never contacted, though it is running
            assert stats[b"cmd_get"] == 0 and stats[b"cmd_set"] == 0
        assert stats[b"curr_items"] == 0  # nothing left behind
    assert all(p.running for p in fresh_cluster.processes)  # none of them was stopped


def test_unreachable_server_is_one_line_and_exit_1(
    capsys: pytest.CaptureFixture[str], started: list[int]
) -> None:
    nowhere = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    code, out, err = run(capsys, "keyloss", "--servers", ",".join(nowhere), "--down", nowhere[0])
    assert code == 1
    assert out == ""
    assert_one_error_line(err, f"cannot reach memcached at {nowhere[1]}")
    assert started == []


# -- bad input, failures and interrupts -------------------------------------------------
@pytest.mark.parametrize(
    ("argv", "code", "needle"),
    [
        (["--nodes", "4,1"], 2, NODE_LIMITS),
        (["--nodes", "4,,5"], 2, "empty item"),
        (["--nodes", "3,many"], 2, "--nodes"),
        (["--nodes", "3", "--kill", "3"], 2, "--kill"),
        (["--nodes", "2", "--kill", "2"], 2, "cannot kill 2 of 2"),
        (["--nodes", "3", "--format", "yaml"], 2, "--format"),
        (["--nodes", "500"], 2, NODE_LIMITS),
    ],
)
def test_bad_input_is_one_line(
    capsys: pytest.CaptureFixture[str], started: list[int], argv: list[str], code: int,
    needle: str,
) -> None:  # fmt: skip
    got, out, err = run(capsys, "keyloss", "--live", *argv)
    assert (got, out) == (code, "")
    assert_one_error_line(err, needle)
    assert started == []


def test_a_result_that_cannot_be_trusted_is_an_error(
    capsys: pytest.CaptureFixture[str], started: list[int], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Memory so small that memcached evicts: evictions would pass for lost keys.
    monkeypatch.setattr(memring.tools.keyloss.live, "_memory_mb", lambda keys, n, mode: 2)
    code, out, err = run(capsys, "keyloss", "--live", "--nodes", "3", "--keys", "40000",
                         "--mode", "ring")  # fmt: skip
    assert code == 1
    assert out == ""
    assert_one_error_line(err, "evicted")
    assert len(started) == 3


def test_interrupt_stops_every_process(
    capsys: pytest.CaptureFixture[str], started: list[int]
) -> None:
    def killer(cluster: LocalCluster, indices: list[int]) -> Callable[[], None]:
        def interrupt() -> None:  # Ctrl-C just as the nodes are to be killed
            raise KeyboardInterrupt

        return interrupt

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(memring.tools.keyloss.live, "_killer", killer)
        code, out, err = run(capsys, "keyloss", "--live", "--nodes", "3", "--keys", "3000")
    assert code == 130
    assert out == "" and err == "memring keyloss: interrupted\n"
    assert len(started) == 3
    assert [pid for pid in started if alive(pid)] == []

    def interrupt_while_reading(done: int, total: int, phase: str) -> None:
        if phase.endswith("reading"):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        measure_live([4], keys=3000, modes=("backup",), progress=interrupt_while_reading)
    assert len(started) == 3 + 4
    assert [pid for pid in started if alive(pid)] == []


@pytest.mark.parametrize("mode", ["ring", "backup"])
def test_a_survivor_failing_is_an_error_not_a_loss(started: list[int], mode: str) -> None:
    # A node the measurement did not mean to kill dies too: its keys must not
    # be counted as lost.
    original = memring.tools.keyloss.live._killer

    def kill_one_more(cluster: LocalCluster, indices: list[int]) -> Callable[[], None]:
        extra = next(i for i in range(len(cluster)) if i not in indices)
        return original(cluster, [*indices, extra])

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(memring.tools.keyloss.live, "_killer", kill_one_more)
        with pytest.raises(KeylossError, match="failed during the"):
            measure_live([4], keys=2000, modes=(mode,))
    assert len(started) == 4


# -- as a separate process -----------------------------------------------------------
#: Runs ``python -m memring ARGS`` with SIGINT set to ``sys.argv[1]`` ("default" or
#: "ignore") first: exec keeps an ignored signal ignored and resets a handled one.
_WITH_SIGINT = (
    "import os, signal, sys; "
    "how = {'default': signal.SIG_DFL, 'ignore': signal.SIG_IGN}[sys.argv[1]]; "
    "signal.signal(signal.SIGINT, how); "
    "os.execv(sys.executable, [sys.executable, '-m', 'memring', *sys.argv[2:]])"
)


class Watched:
    """A ``python -m memring`` child, and the memcached PIDs seen under it.

    ``sigint="default"`` starts it as a shell starts a command in the
    foreground, where Ctrl-C reaches it, whatever this process does with
    SIGINT (pytest run as a background job of a script ignores it, and
    children inherit that). ``"ignore"`` starts it as such a background job.
    None: as this process has it.
    """

    def __init__(self, *argv: str, sigint: str | None = None) -> None:
        command = [sys.executable, "-m", "memring", *argv]
        if sigint is not None:
            command = [sys.executable, "-c", _WITH_SIGINT, sigint, *argv]
        self.proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        self.seen: set[int] = set()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._done.is_set() and self.proc.poll() is None:
            self.seen |= memcached_children(self.proc.pid)
            time.sleep(0.01)

    def communicate(self, timeout: float) -> tuple[str, str]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self._done.set()
            self._thread.join()
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            for pid in self.seen:  # never leave one behind, even when the test fails
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
        return out, err


def test_python_dash_m_memring_live() -> None:
    child = Watched("keyloss", "--live", "--nodes", "3,4", "--keys", "5000", "--format", "json")
    out, err = child.communicate(timeout=120)
    assert child.proc.returncode == 0, err
    assert_only_progress(err)
    simulated = simulate([3, 4], keys=5000, modes=ALL)
    assert json.loads(out) == [r.as_dict() for r in simulated]
    assert child.seen  # it did start processes...
    assert [pid for pid in child.seen if alive(pid)] == []  # ...and stopped them all


def _into_the_writes(child: Watched) -> None:
    """Wait until ``child`` has started its 3 memcached processes and is writing."""
    deadline = time.monotonic() + 60
    while len(child.seen) < 3 and child.proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert child.proc.poll() is None, "finished before it could be interrupted"


LONG_RUN = ("keyloss", "--live", "--nodes", "3", "--keys", "400000", "--mode", "ring")


def test_ctrl_c_stops_every_process_and_exits_130() -> None:
    child = Watched(*LONG_RUN, sigint="default")
    _into_the_writes(child)
    child.proc.send_signal(signal.SIGINT)  # to the command only, not to memcached
    _assert_stopped(child, 130, "memring keyloss: interrupted")


def test_started_with_sigint_ignored_it_ignores_it_and_sigterm_stops_it() -> None:
    # As a background job of a script: the caller asked that Ctrl-C not reach it.
    child = Watched(*LONG_RUN, sigint="ignore")
    _into_the_writes(child)
    child.proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    assert child.proc.poll() is None, "SIGINT stopped a command started with it ignored"
    child.proc.send_signal(signal.SIGTERM)  # and it still stops every process it started
    _assert_stopped(child, 143, "memring keyloss: terminated")


def _assert_stopped(child: Watched, status: int, last_line: str) -> None:
    """``child`` ends with ``status`` and ``last_line``, its 3 memcached processes gone."""
    out, err = child.communicate(timeout=60)
    assert child.proc.returncode == status, err
    assert out == ""
    assert err.endswith(last_line + "\n") and "Traceback" not in err
    assert len(child.seen) == 3
    assert [pid for pid in child.seen if alive(pid)] == []


def test_missing_memcached_binary_in_a_separate_process() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "memring", "keyloss", "--live", "--nodes", "3"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "MEMRING_MEMCACHED": "memring-test-no-such-memcached"},
    )  # fmt: skip
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert_one_error_line(proc.stderr, "install it with: apt-get install -y memcached")
