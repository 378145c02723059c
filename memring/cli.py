"""The ``memring`` command line: a thin argparse layer over library functions.

Each subcommand parses its arguments, calls a pure function that returns
dataclasses, and prints them. Invalid input gives a one-line
``memring <command>: error: ...`` on stderr and exit status 2, never a
traceback.

``memring keyloss``
    "If k of N nodes die, what fraction of sessions is lost?" for the
    consistent-hash ring, modulo hashing and backup (two-copy) mode; see
    :mod:`memring.keyloss`. Simulated mode (placement math only, no servers) is
    the default and currently the only mode; ``--simulate`` says so explicitly.
    ``--mode all`` (the default) runs ring, modulo and backup.

Run it as ``memring ...`` or ``python -m memring ...``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import NoReturn, TextIO

from memring import __version__
from memring.errors import ConfigError
from memring.hashring.hashes import HASHES
from memring.keyloss import DEFAULT_KEYS, FORMATS, MODES, format_rows, simulate

__all__ = ["main"]

PROG = "memring"
EXIT_OK = 0
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class _UsageError(Exception):
    """Bad command-line input; the message is the whole line to print."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and do not exit the process."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message}")


def _node_counts(text: str) -> list[int]:
    """Parse ``--nodes``: a comma-separated list of integers such as ``3,4,5,10``."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    try:
        counts = [int(p) for p in parts]
    except ValueError:
        counts = []
    if not counts:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated node counts such as 3,4,5,10; got {text!r}"
        )
    return counts


def build_parser() -> argparse.ArgumentParser:
    """The parser for every ``memring`` subcommand."""
    parser = _Parser(
        prog=PROG,
        description="memring: a Memcached client for web sessions that survives losing nodes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    keyloss = commands.add_parser(
        "keyloss",
        help="measure the share of keys lost when nodes die",
        description=(
            "Measure the share of keys (sessions) lost when KILL of N nodes die, for the "
            "consistent-hash ring, modulo hashing and backup mode (two copies), next to "
            "the expected share: KILL/N for the ring, the exact remap share for modulo "
            "((N-1)/N with one node down), 0 for backup with one node down and "
            "2/(N(N-1)) with two."
        ),
    )
    where = keyloss.add_mutually_exclusive_group()
    where.add_argument(
        "--simulate",
        action="store_true",
        help="placement math only, no servers (the default and, for now, the only mode)",
    )
    keyloss.add_argument(
        "--nodes",
        type=_node_counts,
        default=[3, 4, 5, 10],
        metavar="N[,N...]",
        help="cluster sizes to measure (default: 3,4,5,10)",
    )
    keyloss.add_argument(
        "--keys", type=int, default=DEFAULT_KEYS, help=f"keys to place (default: {DEFAULT_KEYS})"
    )
    keyloss.add_argument("--kill", type=int, default=1, help="nodes that die: 1 or 2 (default: 1)")
    keyloss.add_argument(
        "--mode",
        choices=(*MODES, "all"),
        default="all",
        help="placement to measure; all = ring, modulo and backup (default: all)",
    )
    keyloss.add_argument(
        "--format", choices=FORMATS, default="table", help="output format (default: table)"
    )
    keyloss.add_argument(
        "--seed", type=int, default=0, help="seed for the keys and the killed nodes (default: 0)"
    )
    keyloss.add_argument(
        "--hash", choices=HASHES, default="murmur3", help="ring hash (default: murmur3)"
    )
    keyloss.add_argument(
        "--vnodes",
        type=int,
        default=None,
        help="virtual nodes per node on the murmur3 ring (default: the library default)",
    )
    keyloss.set_defaults(handler=_run_keyloss, prog=keyloss.prog)
    return parser


def _run_keyloss(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """``memring keyloss``: simulate, then print the rows."""
    modes = MODES if args.mode == "all" else (args.mode,)
    progress = _Progress(stderr, label=args.prog) if _isatty(stderr) else None
    try:
        rows = simulate(
            args.nodes,
            keys=args.keys,
            kill=args.kill,
            modes=modes,
            seed=args.seed,
            hash=args.hash,
            vnodes=args.vnodes,
            progress=progress,
        )
    finally:
        if progress is not None:
            progress.clear()
    stdout.write(format_rows(rows, args.format))
    stdout.flush()
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``memring`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 2 on invalid input (after printing
    one ``error:`` line on stderr), 130 when interrupted.
    """
    stdout, stderr = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        print(exc, file=stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    handler: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.handler
    try:
        return handler(args, stdout, stderr)
    except (ConfigError, ValueError) as exc:
        print(f"{args.prog}: error: {exc}", file=stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted", file=stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``memring keyloss | head``): not an error.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
        os.close(devnull)
        return EXIT_OK


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    """A one-line ``\\r`` progress display, drawn only once a run takes a moment.

    Called as ``progress(done, total)``; redraws when the whole percentage
    changes. :meth:`clear` erases the line so the result prints cleanly.
    """

    def __init__(self, stream: TextIO, *, label: str, delay: float = 0.3) -> None:
        self._stream = stream
        self._label = label
        self._start = time.monotonic()
        self._delay = delay
        self._last = -1
        self._width = 0

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if percent == self._last or time.monotonic() - self._start < self._delay:
            return
        self._last = percent
        line = f"{self._label}: {percent:3d}% ({done:,}/{total:,} keys placed)"
        self._width = max(self._width, len(line))
        self._stream.write("\r" + line.ljust(self._width))
        self._stream.flush()

    def clear(self) -> None:
        """Erase the progress line, if one was drawn."""
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0
