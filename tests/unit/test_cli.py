"""Tests for the ``memring`` command line (``memring keyloss``).

These need no memcached: every measurement here is ``--simulate``, and the
live-mode checks stop at argument validation or at the missing binary
(``MEMRING_MEMCACHED`` pointed at a name that does not exist). The live runs
are in ``tests/integration/test_keyloss_live.py``.
"""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

import memring.cli
import memring.tools.keyloss
from memring import __version__
from memring.cli import _Progress, main
from memring.tools.keyloss import NODE_LIMITS

FIELDS = ["nodes", "killed", "mode", "keys", "lost", "lost_fraction", "expected_fraction"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table_by_default_with_all_modes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "keyloss", "--simulate", "--nodes", "3,4", "--keys", "5000")
    assert code == 0
    assert err == ""  # not a TTY, and too quick for a progress line
    lines = out.splitlines()
    assert lines[0] == "simulated: placement math only, no servers (5,000 keys, seed 0)"
    assert lines[1].split()[:4] == ["nodes", "killed", "mode", "keys"]
    body = [line.split() for line in lines[3:]]
    assert [(cells[0], cells[2]) for cells in body] == [
        ("3", "ring"), ("3", "modulo"), ("3", "backup"),
        ("4", "ring"), ("4", "modulo"), ("4", "backup"),
    ]  # fmt: skip
    assert body[0][6] == "33.33%" and body[3][6] == "25.00%"
    assert body[1][6] == "66.67%" and body[2][6] == "0.00%"


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "keyloss", "--simulate", "--nodes", "3,5", "--keys", "4000", "--format", "json"
    )
    assert code == 0
    data = json.loads(out)
    assert len(data) == 6
    assert all(list(obj) == FIELDS for obj in data)
    assert {obj["mode"] for obj in data} == {"ring", "modulo", "backup"}
    assert all(obj["keys"] == 4000 and obj["killed"] == 1 for obj in data)


def test_csv_output_with_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "keyloss", "--simulate", "--nodes", "4", "--keys", "3000", "--kill", "2",
        "--mode", "backup", "--format", "csv", "--seed", "9", "--vnodes", "100",
    )  # fmt: skip
    assert code == 0
    assert out.splitlines()[0] == ",".join(FIELDS)
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert row["mode"] == "backup" and row["killed"] == "2" and row["nodes"] == "4"
    assert float(row["expected_fraction"]) == pytest.approx(1 / 6)


def test_single_mode_and_ketama(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "keyloss", "--simulate", "--nodes", "3", "--keys", "2000", "--mode", "ring",
        "--hash", "ketama", "--format", "json",
    )  # fmt: skip
    assert code == 0
    assert [obj["mode"] for obj in json.loads(out)] == ["ring"]


def test_seed_makes_runs_reproducible(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["keyloss", "--simulate", "--nodes", "5", "--keys", "3000", "--format", "json",
            "--seed", "4"]  # fmt: skip
    _, first, _ = run(capsys, *argv)
    _, second, _ = run(capsys, *argv)
    assert first == second


BAD_INPUT = [
    (["keyloss", "--nodes", "1"], NODE_LIMITS),
    (["keyloss", "--nodes", "2000"], NODE_LIMITS),
    (["keyloss", "--nodes", "3,x"], "--nodes"),
    (["keyloss", "--nodes", ""], "argument --nodes: expected comma-separated node counts"),
    (["keyloss", "--nodes", "3,,4"], "got an empty item in '3,,4'"),
    (["keyloss", "--nodes", "3,4,"], "got an empty item in '3,4,'"),
    (["keyloss", "--nodes", ",3"], "got an empty item"),
    (["keyloss", "--nodes", "2", "--kill", "2"], "cannot kill 2 of 2"),
    (["keyloss", "--nodes", "3,4", "--kill", "3"], "--kill"),
    (["keyloss", "--kill", "3"], "--kill"),
    (["keyloss", "--kill", "one"], "--kill"),
    (["keyloss", "--keys", "0"], "--keys"),
    (["keyloss", "--keys", "many"], "--keys"),
    (["keyloss", "--format", "xml"], "--format"),
    (["keyloss", "--mode", "rendezvous"], "--mode"),
    (["keyloss", "--hash", "crc32"], "--hash"),
    (["keyloss", "--hash", "ketama", "--vnodes", "50"], "--vnodes"),
    (["keyloss", "--bogus"], "unrecognized arguments: --bogus"),
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["frobnicate"], "frobnicate"),
    ([], "required"),
]


def with_flag(argv: list[str], flag: str) -> list[str]:
    return argv[:1] + [flag] + argv[1:] if argv[:1] == ["keyloss"] else argv


@pytest.mark.parametrize(("argv", "needle"), BAD_INPUT)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    code, out, err = run(capsys, *with_flag(argv, "--simulate"))
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n")
    assert re.match(r"memring( keyloss)?: error: ", err)
    assert needle in err


def test_unknown_option_is_named_not_taken_for_a_missing_command(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "--bogus")
    assert (code, out) == (2, "")
    assert err == ("memring: error: unrecognized arguments: --bogus "
                   "(commands: keyloss, chaos; see memring --help)\n")
    code, _, err = run(capsys)
    assert code == 2
    assert err == ("memring: error: the following arguments are required: COMMAND "
                   "(one of: keyloss, chaos; see memring --help)\n")
    code, _, err = run(capsys, "chaos", "--bogus", "--nodes", "3")
    assert code == 2
    assert err == ("memring chaos: error: unrecognized arguments: --bogus "
                   "(see memring chaos --help)\n")


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keyloss", "--help")
    assert code == 0
    assert "--nodes" in out and "--simulate" in out and "--live" in out
    assert "--servers" in out and "--down" in out and "--plot" in out
    assert NODE_LIMITS in " ".join(out.split())  # both limits, as every error states them
    code, out, _ = run(capsys, "--version")
    assert code == 0
    assert __version__ in out


class _TTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_line_is_drawn_and_cleared() -> None:
    stream = _TTY()
    progress = _Progress(stream, label="memring keyloss", delay=0.0)
    progress(0, 200)
    progress(1, 200)  # same percentage: no redraw
    progress(100, 200)
    progress(200, 200)
    text = stream.getvalue()
    assert text.count("\r") == 3
    assert "memring keyloss:  50% (100/200 keys placed)" in text
    assert "100%" in text
    progress.clear()
    assert stream.getvalue().endswith("\r")
    assert stream.getvalue()[len(text) :].strip() == ""


class _Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_off_a_terminal_is_a_plain_line_every_few_seconds() -> None:
    stream, clock = io.StringIO(), _Clock()
    progress = _Progress(stream, label="memring keyloss", tty=False, interval=5.0, clock=clock)
    for t, done in [(0.0, 0), (1.0, 10), (4.9, 20), (5.0, 30), (6.0, 40), (10.0, 50),
                    (10.1, 60), (30.0, 60)]:
        clock.now = 100.0 + t
        progress(done, 100, "3 nodes, ring: writing")
    progress.clear()  # nothing to erase
    assert stream.getvalue() == (
        "memring keyloss:  30% 3 nodes, ring: writing (30/100 keys written+read)\n"
        "memring keyloss:  50% 3 nodes, ring: writing (50/100 keys written+read)\n"
        "memring keyloss:  60% 3 nodes, ring: writing (60/100 keys written+read)\n"
    )


PROGRESS_LINE = re.compile(r"memring keyloss: +\d+% \([\d,]+/[\d,]+ keys placed\)")


def test_a_run_off_a_terminal_prints_progress_lines_on_stderr(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memring.cli, "_PROGRESS_EVERY", 0.0)  # a line at every step
    code, out, err = run(capsys, "keyloss", "--simulate", "--nodes", "3,4", "--keys", "30000",
                         "--format", "json")
    assert code == 0
    assert len(json.loads(out)) == 6  # stdout holds the result alone
    lines = err.splitlines()
    assert "\r" not in err and len(lines) >= 6
    assert all(PROGRESS_LINE.fullmatch(line) for line in lines), err
    assert lines[-1] == "memring keyloss: 100% (180,000/180,000 keys placed)"


def test_progress_waits_before_drawing() -> None:
    stream = _TTY()
    progress = _Progress(stream, label="x", delay=60.0)
    progress(50, 100)
    progress.clear()
    assert stream.getvalue() == ""


def test_python_dash_m_memring() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "memring", "keyloss", "--simulate", "--nodes", "3,4",
         "--keys", "20000", "--format", "json"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    data = json.loads(proc.stdout)
    assert [(d["nodes"], d["mode"]) for d in data] == [
        (3, "ring"), (3, "modulo"), (3, "backup"), (4, "ring"), (4, "modulo"), (4, "backup"),
    ]  # fmt: skip
    ring3, ring4 = data[0], data[3]
    assert abs(ring3["lost_fraction"] - 1 / 3) < 0.07
    assert abs(ring4["lost_fraction"] - 1 / 4) < 0.06


def test_python_dash_m_memring_bad_input() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "memring", "keyloss", "--simulate", "--nodes", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("memring keyloss: error: ")
    assert proc.stderr.count("\n") == 1


# -- live mode, without memcached -------------------------------------------------
NO_MEMCACHED = "memring-test-no-such-memcached"


@pytest.fixture
def no_memcached(monkeypatch: pytest.MonkeyPatch) -> None:
    """No memcached binary: ``find_memcached`` honours MEMRING_MEMCACHED."""
    monkeypatch.setenv("MEMRING_MEMCACHED", NO_MEMCACHED)


def assert_one_error_line(err: str, needle: str) -> None:
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert re.match(r"memring( keyloss)?: error: ", err), err
    assert needle in err


@pytest.mark.usefixtures("no_memcached")
@pytest.mark.parametrize(("argv", "needle"), BAD_INPUT)
def test_live_bad_input_is_rejected_before_anything_starts(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    # Arguments are checked before the binary is looked up, let alone started.
    code, out, err = run(capsys, *with_flag(argv, "--live"))
    assert code == 2
    assert out == ""
    assert_one_error_line(err, needle)


@pytest.mark.usefixtures("no_memcached")
def test_live_without_memcached_is_one_line_with_the_install_hint(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "keyloss", "--live", "--nodes", "3", "--keys", "100")
    assert code == 1
    assert out == ""
    assert_one_error_line(err, "memcached binary not found")
    assert "apt-get install -y memcached" in err


@pytest.mark.usefixtures("no_memcached")
def test_default_without_memcached_falls_back_to_simulation(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run(capsys, "keyloss", "--nodes", "3", "--keys", "2000", "--format", "json")
    assert code == 0
    assert [row["mode"] for row in json.loads(out)] == ["ring", "modulo", "backup"]
    assert err.count("\n") == 1
    assert "memcached not found, so this is a simulation" in err
    assert "apt-get install -y memcached" in err and "--simulate" in err


SERVERS = "127.0.0.1:21211,127.0.0.1:21212,127.0.0.1:21213"


@pytest.mark.usefixtures("no_memcached")
@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--servers", SERVERS], "--servers needs --down"),
        (["--down", "127.0.0.1:21211"], "--down needs --servers"),
        (["--servers", SERVERS, "--down", "127.0.0.1:9"], "is not one of --servers"),
        (["--servers", SERVERS, "--down", "127.0.0.1:21211,127.0.0.1:21211"], "duplicate"),
        (
            ["--servers", "127.0.0.1:1 a,127.0.0.1:1 b", "--down", "127.0.0.1:1,127.0.0.1:1 c"],
            "twice",
        ),
        (["--servers", SERVERS, "--down", SERVERS], "1 or 2 servers"),
        (["--servers", "127.0.0.1:21211", "--down", "127.0.0.1:21211"], "from 2 to 64 servers"),
        (["--servers", "127.0.0.1:1,127.0.0.1:2", "--down", "127.0.0.1:1,127.0.0.1:2"], "2 of 2"),
        (["--servers", SERVERS, "--down", "127.0.0.1:21211", "--nodes", "3"], "--nodes"),
        (["--servers", SERVERS, "--down", "127.0.0.1:21211", "--kill", "2"], "--kill 2"),
        (["--servers", SERVERS, "--down", "127.0.0.1:21211", "--simulate"], "--simulate"),
        (["--servers", "127.0.0.1:1,127.0.0.1:1", "--down", "127.0.0.1:1"], "duplicate server"),
        (["--servers", "127.0.0.1:x,127.0.0.1:2", "--down", "127.0.0.1:2"], "port"),
        (["--servers", ",", "--down", "127.0.0.1:2"], "--servers"),
        (["--live", "--simulate"], "not allowed with"),
    ],
)
def test_servers_and_down_bad_input(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    # Rejected before any server is contacted or any process is started.
    code, out, err = run(capsys, "keyloss", *argv)
    assert code == 2
    assert out == ""
    assert_one_error_line(err, needle)


# -- --plot ---------------------------------------------------------------------
def test_plot_without_matplotlib_is_one_line_with_the_install_hint(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)  # makes the import fail
    target = tmp_path / "loss.png"
    code, out, err = run(capsys, "keyloss", "--simulate", "--nodes", "3", "--plot", str(target))
    assert code == 2
    assert out == ""  # checked before measuring
    assert_one_error_line(err, "pip install 'memring[plot]'")
    assert not target.exists()
    with pytest.raises(memring.tools.keyloss.PlotUnavailable):
        memring.tools.keyloss.plot_rows(memring.tools.keyloss.simulate([3], keys=10), str(target))


def test_plot_into_a_missing_directory_is_rejected_before_measuring(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "nowhere" / "loss.png"
    code, out, err = run(capsys, "keyloss", "--simulate", "--plot", str(target))
    assert code == 2
    assert out == ""
    assert_one_error_line(err, "does not exist")


def test_plot_writes_a_png(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    target = tmp_path / "loss.png"
    code, out, err = run(
        capsys, "keyloss", "--simulate", "--nodes", "3,4,5", "--keys", "3000",
        "--plot", str(target),
    )  # fmt: skip
    assert code == 0, err
    assert len(out.splitlines()) == 1 + 2 + 9  # the table is printed as usual
    assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- progress of a live run ---------------------------------------------------
def test_progress_shows_the_live_phase() -> None:
    stream = _TTY()
    progress = _Progress(stream, label="memring keyloss", delay=0.0)
    progress(0, 400, "3 nodes, ring: starting 3 memcached processes")
    progress(0, 400, "3 nodes, ring: writing")  # same percentage, new phase: redraw
    progress(1, 400, "3 nodes, ring: writing")  # same percentage and phase: no redraw
    progress(200, 400, "3 nodes, ring: killing 1 of 3 nodes")
    text = stream.getvalue()
    assert text.count("\r") == 3
    assert "memring keyloss:   0% 3 nodes, ring: writing (0/400 keys written+read)" in text
    assert "memring keyloss:  50% 3 nodes, ring: killing 1 of 3 nodes" in text
    progress.clear()
    assert stream.getvalue()[len(text) :].strip() == ""
