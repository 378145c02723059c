"""What the upstream jobs' child processes write: one JSON object a line, as each test ends.

Used by :mod:`.pymemcache_plugin` and :mod:`.django_runner`; read back by
:func:`.jobs.read_outcomes`. A line is written (and flushed) when a test
starts and when it ends, so a child killed for overrunning its time still
says which test was running.
"""

from __future__ import annotations

import json
import os
import traceback
from pathlib import Path
from types import TracebackType
from typing import Any

import memring

PACKAGE = Path(memring.__file__).resolve().parent
#: The jobs' own modules: never "the test line".
HARNESS = Path(__file__).resolve().parent
#: The environment variable naming the results file.
RESULTS_ENV = "MEMRING_UPSTREAM_RESULTS"


def describe(exc: BaseException, limit: int = 600) -> str:
    """``Type: message`` of an exception, on one line, cut to ``limit`` characters."""
    text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
    text = " | ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _frames(tb: TracebackType | None, cause: BaseException | None) -> list[tuple[str, int]]:
    """(file, line) of every frame of ``tb``, then of the exceptions it was raised from."""
    out = [(f.filename, f.lineno or 0) for f in traceback.extract_tb(tb)]
    seen: set[int] = set()
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        out += [(f.filename, f.lineno or 0) for f in traceback.extract_tb(cause.__traceback__)]
        cause = cause.__cause__ or cause.__context__
    return out


def where(exc: BaseException) -> tuple[str, str]:
    """(innermost memring line, innermost line outside memring) of ``exc``'s traceback.

    The memring line is the last memring frame of the exception itself,
    else of its cause. The other is the upstream test line that called it.
    """
    memring_line = test_line = ""
    for filename, lineno in _frames(exc.__traceback__, None):
        path = Path(filename).resolve()
        if path.is_relative_to(PACKAGE):
            memring_line = f"memring/{path.relative_to(PACKAGE)}:{lineno}"
        elif ("site-packages" not in path.parts and "/unittest/" not in filename
              and not path.is_relative_to(HARNESS)):
            test_line = f"{path.name}:{lineno}"
    if not memring_line:
        for filename, lineno in _frames(None, exc.__cause__ or exc.__context__):
            path = Path(filename).resolve()
            if path.is_relative_to(PACKAGE):
                memring_line = f"memring/{path.relative_to(PACKAGE)}:{lineno}"
    return memring_line, test_line


class Recorder:
    """Appends the outcome records to the file named by ``$MEMRING_UPSTREAM_RESULTS``."""

    def __init__(self, path: str | None = None) -> None:
        path = path or os.environ.get(RESULTS_ENV)
        self._file = open(path, "a", encoding="utf-8") if path else None  # noqa: SIM115

    def _write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def start(self, test: str) -> None:
        self._write({"start": test})

    def finish(self, test: str, outcome: str, exc: BaseException | None = None,
               message: str = "") -> None:
        memring_line = test_line = ""
        if exc is not None:
            message = message or describe(exc)
            memring_line, test_line = where(exc)
        self._write({"test": test, "outcome": outcome, "message": message,
                     "where": memring_line, "test_line": test_line})

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
