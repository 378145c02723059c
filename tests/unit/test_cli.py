"""Tests for the ``memring`` command line (``memring keyloss``)."""

from __future__ import annotations

import csv
import io
import json
import re
import subprocess
import sys

import pytest

from memring import __version__
from memring.cli import _Progress, main

FIELDS = ["nodes", "killed", "mode", "keys", "lost", "lost_fraction", "expected_fraction"]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_table_by_default_with_all_modes(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(capsys, "keyloss", "--nodes", "3,4", "--keys", "5000")
    assert code == 0
    assert err == ""  # not a TTY: no progress line
    lines = out.splitlines()
    assert lines[0].split()[:4] == ["nodes", "killed", "mode", "keys"]
    body = [line.split() for line in lines[2:]]
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
        capsys, "keyloss", "--nodes", "4", "--keys", "3000", "--kill", "2",
        "--mode", "backup", "--format", "csv", "--seed", "9", "--vnodes", "100",
    )  # fmt: skip
    assert code == 0
    assert out.splitlines()[0] == ",".join(FIELDS)
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert row["mode"] == "backup" and row["killed"] == "2" and row["nodes"] == "4"
    assert float(row["expected_fraction"]) == pytest.approx(1 / 6)


def test_single_mode_and_ketama(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(
        capsys, "keyloss", "--nodes", "3", "--keys", "2000", "--mode", "ring",
        "--hash", "ketama", "--format", "json",
    )  # fmt: skip
    assert code == 0
    assert [obj["mode"] for obj in json.loads(out)] == ["ring"]


def test_seed_makes_runs_reproducible(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["keyloss", "--nodes", "5", "--keys", "3000", "--format", "json", "--seed", "4"]
    _, first, _ = run(capsys, *argv)
    _, second, _ = run(capsys, *argv)
    assert first == second


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["keyloss", "--nodes", "1"], "node counts"),
        (["keyloss", "--nodes", "3,x"], "--nodes"),
        (["keyloss", "--nodes", ""], "--nodes"),
        (["keyloss", "--nodes", "2", "--kill", "2"], "cannot kill 2 of 2"),
        (["keyloss", "--kill", "3"], "--kill"),
        (["keyloss", "--kill", "one"], "--kill"),
        (["keyloss", "--keys", "0"], "--keys"),
        (["keyloss", "--keys", "many"], "--keys"),
        (["keyloss", "--format", "xml"], "--format"),
        (["keyloss", "--mode", "rendezvous"], "--mode"),
        (["keyloss", "--hash", "crc32"], "--hash"),
        (["keyloss", "--hash", "ketama", "--vnodes", "50"], "--vnodes"),
        (["keyloss", "--bogus"], "--bogus"),
        (["frobnicate"], "frobnicate"),
        ([], "required"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], argv: list[str], needle: str
) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "Traceback" not in err
    assert err.count("\n") == 1 and err.endswith("\n")
    assert re.match(r"memring( keyloss)?: error: ", err)
    assert needle in err


def test_help_and_version(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(capsys, "keyloss", "--help")
    assert code == 0
    assert "--nodes" in out and "--simulate" in out
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


def test_progress_waits_before_drawing() -> None:
    stream = _TTY()
    progress = _Progress(stream, label="x", delay=60.0)
    progress(50, 100)
    progress.clear()
    assert stream.getvalue() == ""


def test_python_dash_m_memring() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "memring", "keyloss", "--nodes", "3,4", "--keys", "20000",
         "--format", "json"],
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
        [sys.executable, "-m", "memring", "keyloss", "--nodes", "1"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.startswith("memring keyloss: error: ")
    assert proc.stderr.count("\n") == 1
