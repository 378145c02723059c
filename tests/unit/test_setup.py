"""The README's first two commands, ``scripts/setup.sh`` and ``.ci/run`` agree.

``scripts/setup.sh`` runs here against a stand-in virtualenv (a ``python``
that records its arguments) and a stand-in ``memcached`` on PATH, so nothing
is installed: what is checked is what it would install.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SETUP = ROOT / "scripts" / "setup.sh"


def readme_commands() -> list[str]:
    """The shell blocks at the top of the README, before its first rule."""
    top = (ROOT / "README.md").read_text().split("\n---\n", 1)[0]
    return [block.strip() for block in re.findall(r"```sh\n(.*?)```", top, re.S)]


def test_the_readme_starts_with_the_main_job_and_the_tests() -> None:
    main_job, tests = readme_commands()
    # The main job sets up memring alone (no test extra) and measures live.
    assert main_job.startswith("./scripts/setup.sh && .venv/bin/memring keyloss ")
    assert tests == "./scripts/setup.sh --test && .venv/bin/python -m pytest -q"


def test_ci_runs_the_readmes_test_command() -> None:
    _, tests = readme_commands()
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines()
             if line and not line.startswith("#")]
    assert lines[-1] == tests


def test_the_fast_subset_in_the_readme_exists() -> None:
    top = (ROOT / "README.md").read_text().split("\n---\n", 1)[0]
    assert "`.venv/bin/python -m pytest -q tests/unit`" in top
    assert (ROOT / "tests" / "unit").is_dir() and (ROOT / "tests" / "property").is_dir()


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A copy of scripts/setup.sh whose .venv/bin/python logs its arguments."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SETUP, tmp_path / "scripts" / "setup.sh")
    bin_dir = tmp_path / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    fake = bin_dir / "python"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {tmp_path / "pip.log"}\n')
    fake.chmod(0o755)
    tools = tmp_path / "tools"
    tools.mkdir()
    memcached = tools / "memcached"
    memcached.write_text("#!/bin/sh\n")
    memcached.chmod(0o755)
    return tmp_path


def run_setup(sandbox: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{sandbox / 'tools'}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", str(sandbox / "scripts" / "setup.sh"), *args],
                          capture_output=True, text=True, env=env, timeout=60, check=False)


@pytest.mark.parametrize(("args", "target"), [((), "."), (("--test",), ".[test]")])
def test_setup_installs_the_test_extra_only_when_asked(
    sandbox: Path, args: tuple[str, ...], target: str
) -> None:
    proc = run_setup(sandbox, *args)
    assert proc.returncode == 0, proc.stderr
    assert (sandbox / "pip.log").read_text().splitlines() == [
        "-m pip install -q --upgrade pip", f"-m pip install -q -e {target}"]


@pytest.mark.parametrize("args", [("--bogus",), ("--test", "--test")])
def test_setup_refuses_unknown_arguments_before_doing_anything(
    sandbox: Path, args: tuple[str, ...]
) -> None:
    proc = run_setup(sandbox, *args)
    assert proc.returncode == 2
    assert proc.stderr.startswith("usage: scripts/setup.sh [--test]")
    assert not (sandbox / "pip.log").exists()
