"""The upstream jobs' own machinery, without servers: extraction, records, verdicts, stand-ins."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

import memring
from tests.upstream import jobs
from tests.upstream.known_failures import Known, judge
from tests.upstream.pymemcache_plugin import backup_client, dropping
from tests.upstream.record import Recorder, where


def _sdist(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_extract_takes_only_what_is_asked_and_is_reused(tmp_path: Path) -> None:
    archive = _sdist(tmp_path / "p-1.0.tar.gz", {
        "p-1.0/pkg/test/conftest.py": b"c", "p-1.0/pkg/test/test_x.py": b"t",
        "p-1.0/pkg/other.py": b"o", "p-1.0/tests/cache/a.py": b"a",
        "p-1.0/tests/cache/sub/b.py": b"b", "p-1.0/tests/cachet.py": b"no",
    })
    flat = jobs.extract(archive, ["pkg/test/conftest.py", "pkg/test/test_x.py"],
                        tmp_path / "flat", flatten=True)
    assert sorted(p.name for p in flat.iterdir()) == [".complete", "conftest.py", "test_x.py"]
    tree = jobs.extract(archive, ["tests/cache/"], tmp_path / "tree")
    assert sorted(str(p.relative_to(tree)) for p in tree.rglob("*.py")) == [
        "tests/cache/a.py", "tests/cache/sub/b.py"]
    (flat / "conftest.py").write_text("kept")
    jobs.extract(archive, ["pkg/test/conftest.py"], tmp_path / "flat", flatten=True)
    assert (flat / "conftest.py").read_text() == "kept"  # complete: reused, not redone


def test_extract_refuses_an_archive_that_lacks_a_member(tmp_path: Path) -> None:
    archive = _sdist(tmp_path / "p-1.0.tar.gz", {"p-1.0/a.py": b"a"})
    with pytest.raises(jobs.UpstreamUnavailable, match="lacks b.py"):
        jobs.extract(archive, ["a.py", "b.py"], tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["p-1.0.tar.gz"]  # no half tree left


def test_the_cached_sdist_is_found_without_pip(tmp_path: Path) -> None:
    (tmp_path / "sdists").mkdir()
    (tmp_path / "sdists" / "django-5.2.19.tar.gz").write_bytes(b"")
    assert jobs.sdist("Django", "5.2.19", tmp_path).name == "django-5.2.19.tar.gz"


def test_records_round_trip_and_unfinished_tests_show(tmp_path: Path) -> None:
    path = tmp_path / "r.jsonl"
    recorder = Recorder(str(path))
    recorder.start("t1")
    try:
        raise memring.ConfigError("unknown Client options: socket_module")
    except memring.ConfigError as exc:
        recorder.finish("t1", "failed", exc)
    recorder.start("t2")  # then killed
    recorder.close()
    outcomes = jobs.read_outcomes(path)
    assert outcomes["t1"].outcome == "failed"
    assert outcomes["t1"].message == (
        "memring.errors.ConfigError: unknown Client options: socket_module")
    assert outcomes["t2"].outcome == "unfinished"
    assert all(json.loads(line) for line in path.read_text().splitlines())


def test_where_names_the_innermost_memring_line() -> None:
    try:
        memring.Client([])
    except memring.ConfigError as exc:
        memring_line, test_line = where(exc)
    assert memring_line.startswith("memring/") and ".py:" in memring_line
    assert test_line == ""  # the jobs' own files (this one too) are never "the test line"


def test_judge_is_strict_both_ways() -> None:
    known = {"job": (Known(("a::*",), r"ConfigError: .*socket_module", "socket_module"),
                     Known(("b",), r"AttributeError", "fixed already"))}
    verdict = judge("job", [("a::1", "ConfigError: unknown Client options: socket_module"),
                            ("a::2", "AssertionError: assert None == b'v'")], known)
    assert verdict.unexpected == [("a::2", "AssertionError: assert None == b'v'")]
    assert [k.cause for k in verdict.stale] == ["fixed already"]
    assert not verdict.ok
    assert judge("other", [], known).ok


def test_the_backup_stand_in_adds_the_peers_beside_the_suites_server() -> None:
    seen: list[object] = []

    class Recording(memring.BackupClient):
        def __init__(self, servers: object, **kwargs: object) -> None:
            seen.append((servers, kwargs))

    suite = ("127.0.0.1", 1)
    cls = backup_client(suite, [("127.0.0.1", 2)])
    cls.__bases__ = (Recording,)
    cls(suite, serde=None)
    cls([suite])
    cls(("127.0.0.1", 9))
    assert seen == [
        ([suite, ("127.0.0.1", 2)], {"serde": None}),  # Client((host, port))
        ([suite, ("127.0.0.1", 2)], {}),  # HashClient([(host, port)])
        (("127.0.0.1", 9), {}),  # another server: passed as it is
    ]


def test_dropping_removes_only_the_named_keyword_arguments() -> None:
    seen: list[object] = []

    class Base:
        def __init__(self, *args: object, **kwargs: object) -> None:
            seen.append((args, kwargs))

    dropping(Base, {"socket_module"})("s", socket_module=1, key_prefix=b"p")
    assert seen == [(("s",), {"key_prefix": b"p"})]
