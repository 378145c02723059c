"""The ``memring`` command line: a thin argparse layer over library functions.

Each subcommand parses its arguments, calls a pure function that returns
dataclasses, and prints them. Invalid input gives a one-line
``memring <command>: error: ...`` on stderr and exit status 2, never a
traceback.

``memring keyloss``
    "If k of N nodes die, what fraction of sessions is lost?" for the
    consistent-hash ring, modulo hashing and backup (two-copy) mode; see
    :mod:`memring.tools.keyloss`. ``--live`` (the default when a memcached binary is
    installed) measures on real memcached processes it starts itself, or on
    the servers named by ``--servers`` with ``--down``; ``--simulate`` does
    the placement math only, with no servers. ``--mode all`` (the default)
    runs ring, modulo and backup. ``--plot FILE.png`` also draws the rows
    (needs the ``plot`` extra).

Exit status: 0 on success; 2 on invalid input (one ``error:`` line on
stderr, never a traceback); 1 when the measurement could not run (no
memcached binary, an unreachable server, a result that can't be trusted),
again as one ``error:`` line; 130 when interrupted (Ctrl-C) and 143 on
SIGTERM, after every process the command started has been stopped.

A command started with SIGINT ignored (``cmd &`` in a script, where the shell
ignores SIGINT for background jobs) keeps ignoring it, as the caller asked;
SIGTERM stops it cleanly.

Run it as ``memring ...`` or ``python -m memring ...``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from types import FrameType
from typing import NoReturn, TextIO

import memring.tools.chaos as chaos
from memring import __version__
from memring.errors import ConfigError, MemringError
from memring.hashring.hashes import HASHES
from memring.tools.keyloss import (
    DEFAULT_KEYS,
    FORMATS,
    MODES,
    NODE_LIMITS,
    KeylossRow,
    PlotUnavailable,
    check_plot_available,
    describe_run,
    format_rows,
    measure_live,
    plot_rows,
    simulate,
)
from memring.tools.local import INSTALL_HINT, MemcachedNotFound, find_memcached

__all__ = ["main"]

PROG = "memring"
EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
EXIT_TERMINATED = 143
DEFAULT_NODES = [3, 4, 5, 10]
#: Seconds between two progress lines when stderr is not a terminal (a CI log).
_PROGRESS_EVERY = 5.0


class _UsageError(Exception):
    """Bad command-line input; the message is the whole line to print."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and do not exit the process."""

    def error(self, message: str) -> NoReturn:
        raise _UsageError(f"{self.prog}: error: {message}")


def _comma_items(text: str, expected: str) -> list[str]:
    """The items of a comma-separated option value, each stripped; none may be empty.

    ``expected`` says what the value should look like, for the error
    (``"node counts such as 3,4,5,10"``): ``3,,4``, ``3,4,`` and ``""`` are
    refused, not read as ``3,4``.
    """
    items = [p.strip() for p in text.split(",")]
    if not all(items):
        what = "an empty value" if not text.strip() else f"an empty item in {text!r}"
        raise argparse.ArgumentTypeError(f"expected comma-separated {expected}; got {what}")
    return items


def _node_counts(text: str) -> list[int]:
    """Parse ``--nodes``: a comma-separated list of integers such as ``3,4,5,10``."""
    expected = "node counts such as 3,4,5,10"
    items = _comma_items(text, expected)
    try:
        return [int(p) for p in items]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated {expected}; "
                                         f"got {text!r}") from None


def _server_list(text: str) -> list[str]:
    """Parse ``--servers``/``--down``: comma-separated ``host:port`` addresses."""
    return _comma_items(text, "host:port addresses such as 10.0.0.1:11211")


def build_parser() -> argparse.ArgumentParser:
    """The parser for every ``memring`` subcommand."""
    parser = _Parser(
        prog=PROG,
        description="memring: a Memcached client for web sessions that survives losing nodes.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    # Not required=True: argparse would then report a missing COMMAND before an
    # unknown option (``memring --bogus``); _parse says which is wrong.
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    keyloss = commands.add_parser(
        "keyloss",
        help="measure the share of keys lost when nodes die",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Measure the share of keys (sessions) lost when KILL of N nodes die, for the\n"
            "consistent-hash ring, modulo hashing and backup mode (two copies), next to the\n"
            "expected share: KILL/N for the ring, the exact remap share for modulo ((N-1)/N\n"
            "with one node down), 0 for backup with one node down and 2/(N(N-1)) with two."
        ),
        epilog=(
            "live mode (the default when memcached is installed):\n"
            "  For each N and mode, start N memcached processes on free loopback ports, write\n"
            "  --keys session keys through memring, SIGKILL the nodes that die (the same nodes\n"
            "  a simulation with the same --seed picks), read every key back and count the\n"
            "  misses. Live nodes are placed on the ring under the simulated nodes' names, so\n"
            "  live and simulated runs place every key alike. Every process is stopped (by\n"
            "  PID) when the command ends, also on Ctrl-C.\n"
            "\n"
            "your own servers (--servers with --down):\n"
            "  N is the number of --servers and KILL the number of --down servers (1 or 2).\n"
            "  memring never contacts a --down server (it may be running or stopped) and never\n"
            "  stops any of yours. For each mode it starts a stand-in memcached on loopback for\n"
            "  every --down server, under that server's ring identity, so keys are placed over\n"
            "  all N servers as your clients place them; it writes the keys, SIGKILLs the\n"
            "  stand-ins (the down servers' share is lost as in a crash), reads every key back\n"
            "  from your live servers and counts the misses. Keys are prefixed with\n"
            "  'memring-keyloss:', expire after an hour and are deleted before and after each\n"
            "  mode. Every server not in --down must be reachable.\n"
            "\n"
            "examples:\n"
            "  memring keyloss --nodes 3,4,5,10 --keys 100000\n"
            "  memring keyloss --nodes 4 --kill 2 --mode backup --format json\n"
            "  memring keyloss --simulate --nodes 3,4,5,10 --plot keyloss.png\n"
            "  memring keyloss --servers 10.0.0.1:11211,10.0.0.2:11211,10.0.0.3:11211 \\\n"
            "                  --down 10.0.0.2:11211"
        ),
    )
    where = keyloss.add_mutually_exclusive_group()
    where.add_argument(
        "--live",
        action="store_true",
        help="measure on real memcached processes (the default when memcached is installed)",
    )
    where.add_argument(
        "--simulate",
        action="store_true",
        help="placement math only, no servers (the default when memcached is not installed)",
    )
    keyloss.add_argument(
        "--nodes",
        type=_node_counts,
        default=None,
        metavar="N[,N...]",
        help=f"cluster sizes to measure, each {NODE_LIMITS} (default: 3,4,5,10); "
        "each gets fresh processes",
    )
    keyloss.add_argument(
        "--servers",
        type=_server_list,
        default=None,
        metavar="HOST:PORT[,...]",
        help="measure these memcached servers instead of starting processes (needs --down)",
    )
    keyloss.add_argument(
        "--down",
        type=_server_list,
        default=None,
        metavar="HOST:PORT[,...]",
        help="the 1 or 2 of --servers to treat as dead; they are never contacted",
    )
    keyloss.add_argument(
        "--keys", type=int, default=DEFAULT_KEYS, help=f"keys to place (default: {DEFAULT_KEYS})"
    )
    keyloss.add_argument(
        "--kill",
        type=int,
        default=None,
        help="nodes that die: 1 or 2 (default: 1; with --servers, the number of --down)",
    )
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
    keyloss.add_argument(
        "--plot",
        default=None,
        metavar="FILE.png",
        help="also draw measured vs expected loss per N, one series per mode "
        "(needs matplotlib: pip install 'memring[plot]')",
    )
    keyloss.set_defaults(handler=_run_keyloss, prog=keyloss.prog)
    _add_chaos_parser(commands)
    return parser


class _Failure(Exception):
    """The command could not do its job (exit 1); the message is one line."""


def _run_keyloss(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """``memring keyloss``: measure (live or simulated), then print the rows."""
    modes = MODES if args.mode == "all" else (args.mode,)
    live = _live_mode(args, stderr)
    own_servers = args.servers is not None or args.down is not None
    if args.plot is not None:
        _check_plot_target(args.plot)
    progress = _Progress(stderr, label=args.prog, tty=_isatty(stderr), interval=_PROGRESS_EVERY)
    try:
        if live:
            with _quiet_failover_log():
                rows = measure_live(
                    args.nodes if own_servers else args.nodes or DEFAULT_NODES,
                    keys=args.keys,
                    kill=args.kill,
                    modes=modes,
                    seed=args.seed,
                    hash=args.hash,
                    vnodes=args.vnodes,
                    servers=args.servers,
                    down=args.down,
                    progress=progress,
                )
        else:
            rows = simulate(
                args.nodes or DEFAULT_NODES,
                keys=args.keys,
                kill=1 if args.kill is None else args.kill,
                modes=modes,
                seed=args.seed,
                hash=args.hash,
                vnodes=args.vnodes,
                progress=progress,
            )
    finally:
        progress.clear()
    servers = len(args.servers) if live and args.servers is not None else None
    heading = describe_run(live=live, keys=args.keys, seed=args.seed, servers=servers)
    stdout.write(format_rows(rows, args.format, heading=heading))
    stdout.flush()
    if args.plot is not None:
        how = "live" if live else "simulated"
        title = (
            f"Keys lost when {_killed(rows)} of N nodes die ({how}, {args.keys:,} keys, "
            f"seed {args.seed})"
        )
        try:
            plot_rows(rows, args.plot, title=title)
        except (OSError, ValueError) as exc:
            raise _Failure(f"cannot write the plot to {args.plot}: {exc}") from exc
    return EXIT_OK


def _live_mode(args: argparse.Namespace, stderr: TextIO) -> bool:
    """Whether to measure live: asked for, implied by --servers, or memcached is installed."""
    if args.simulate:
        if args.servers is not None or args.down is not None:
            raise _UsageError(
                f"{args.prog}: error: --servers/--down measure live servers; "
                "they cannot be combined with --simulate"
            )
        return False
    if args.live or args.servers is not None or args.down is not None:
        return True
    try:
        find_memcached()
    except MemcachedNotFound:
        print(
            f"{args.prog}: memcached not found, so this is a simulation "
            f"({INSTALL_HINT}, or pass --simulate)",
            file=stderr,
        )
        return False
    return True


def _check_plot_target(path: str) -> None:
    """Fail before any measurement if ``--plot`` cannot be honoured."""
    try:
        check_plot_available()
    except PlotUnavailable as exc:
        raise ConfigError(f"--plot: {exc}") from exc
    directory = os.path.dirname(path) or "."
    if not os.path.isdir(directory):
        raise ConfigError(f"--plot: directory {directory!r} does not exist")


def _killed(rows: Sequence[KeylossRow]) -> str:
    return "/".join(str(k) for k in sorted({r.killed for r in rows}))


@contextlib.contextmanager
def _quiet_failover_log() -> Iterator[None]:
    """Hide the client's warnings while a live run kills nodes on purpose.

    The measurement itself fails if a node it did not kill goes down, so
    those warnings would only repeat what it expects. Errors still show.
    """
    logger = logging.getLogger("memring")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``memring`` command with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 2 on invalid input (after printing
    one ``error:`` line on stderr), 1 when the command could not do its job
    (also one ``error:`` line), 130 when interrupted (Ctrl-C), 143 on SIGTERM.
    """
    stdout, stderr = sys.stdout, sys.stderr
    parser = build_parser()
    try:
        args = _parse(parser, argv)
    except _UsageError as exc:
        print(exc, file=stderr)
        return EXIT_USAGE
    except SystemExit as exc:  # --help and --version
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    handler: Callable[[argparse.Namespace, TextIO, TextIO], int] = args.handler
    try:
        with _terminate_as_interrupt():
            return handler(args, stdout, stderr)
    except _UsageError as exc:
        print(exc, file=stderr)
        return EXIT_USAGE
    except (ConfigError, ValueError) as exc:
        print(f"{args.prog}: error: {_one_line(exc)}", file=stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{args.prog}: interrupted", file=stderr)
        return EXIT_INTERRUPTED
    except _Terminated:
        print(f"{args.prog}: terminated", file=stderr)
        return EXIT_TERMINATED
    except BrokenPipeError:
        # The reader went away (``memring keyloss | head``): not an error.
        # Point stdout at /dev/null so the interpreter's final flush stays quiet.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stdout.fileno())
        os.close(devnull)
        return EXIT_OK
    except (_Failure, MemringError, OSError) as exc:
        print(f"{args.prog}: error: {_one_line(exc)}", file=stderr)
        return EXIT_FAILURE


class _Terminated(BaseException):
    """SIGTERM arrived: unwind like Ctrl-C, stopping every process on the way out.

    A BaseException, as KeyboardInterrupt is, so that no ``except Exception``
    on the way takes it for an ordinary error.
    """


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """While the command runs, SIGTERM stops it as Ctrl-C does.

    Without this, SIGTERM ends Python at once and leaves the memcached
    processes the command started running. It matters most where Ctrl-C
    cannot reach the command: started with SIGINT ignored (a background
    job of a script), it keeps ignoring SIGINT, as POSIX tools do and Python
    itself does — the caller asked for that — and SIGTERM is how to stop it.
    Only the first SIGTERM is turned into :class:`_Terminated`: more are
    ignored while the processes are being stopped. Nothing changes when
    SIGTERM is ignored already, or off the main thread (no handler there).
    """
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGTERM) == signal.SIG_IGN):
        yield
        return

    def terminate(signum: int, frame: FrameType | None) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise _Terminated

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _parse(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; a :class:`_UsageError` names what is wrong.

    An unknown option is reported as unknown, before a missing command
    (``memring --bogus``), and both errors list the commands.
    """
    args, unknown = parser.parse_known_args(argv)
    commands = ", ".join(_command_names(parser))
    command: str | None = args.command
    if unknown:
        prog = args.prog if command is not None else PROG
        where = f"commands: {commands}; " if command is None else ""
        raise _UsageError(
            f"{prog}: error: unrecognized arguments: {' '.join(unknown)} "
            f"({where}see {prog} --help)"
        )
    if command is None:
        raise _UsageError(
            f"{PROG}: error: the following arguments are required: COMMAND "
            f"(one of: {commands}; see {PROG} --help)"
        )
    return args


def _command_names(parser: argparse.ArgumentParser) -> list[str]:
    """The subcommands of ``parser``, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return list(action.choices)
    return []


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


class _Progress:
    """Progress of a long run on ``stream``: in place on a terminal, plain lines elsewhere.

    Called as ``progress(done, total)`` by a simulation (keys placed) or as
    ``progress(done, total, phase)`` by a live run (key writes and reads, and
    what it is doing: ``"4 nodes, ring: reading"``).

    On a terminal (``tty=True``) one ``\\r`` line is redrawn when the whole
    percentage or the phase changes, once the run has taken ``delay``
    seconds; :meth:`clear` erases it so the result prints cleanly. Elsewhere
    (a CI log, a pipe) a plain line is written at most every ``interval``
    seconds, the first after ``interval``: a quick run prints nothing, a
    long one is never silent for long.
    """

    def __init__(self, stream: TextIO, *, label: str, tty: bool = True, delay: float = 0.3,
                 interval: float = 5.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._stream = stream
        self._label = label
        self._tty = tty
        self._clock = clock
        self._start = self._shown_at = clock()
        self._delay = delay
        self._interval = interval
        self._last: tuple[int, str | None] = (-1, None)
        self._width = 0

    def __call__(self, done: int, total: int, phase: str | None = None) -> None:
        percent = 100 * done // total if total else 100
        if (percent, phase) == self._last:
            return
        now = self._clock()
        if self._tty and now - self._start < self._delay:
            return
        if not self._tty and now - self._shown_at < self._interval:
            return
        self._last = (percent, phase)
        self._shown_at = now
        if phase is None:
            line = f"{self._label}: {percent:3d}% ({done:,}/{total:,} keys placed)"
        else:
            line = f"{self._label}: {percent:3d}% {phase} ({done:,}/{total:,} keys written+read)"
        if self._tty:
            self._width = max(self._width, len(line))
            self._stream.write("\r" + line.ljust(self._width))
        else:
            self._stream.write(line + "\n")
        self._stream.flush()

    def clear(self) -> None:
        """Erase the progress line, if one was drawn in place."""
        if self._width:
            self._stream.write("\r" + " " * self._width + "\r")
            self._stream.flush()
            self._width = 0


# -- memring chaos ---------------------------------------------------------------


def _fault_list(text: str) -> tuple[str, ...]:
    """Parse ``--faults``: comma-separated fault kinds, or ``none``."""
    if text.strip() == "none":
        return ()
    expected = f"fault kinds from {', '.join(chaos.FAULTS)} (or none)"
    faults = tuple(dict.fromkeys(_comma_items(text, expected)))
    if any(f not in chaos.FAULTS for f in faults):
        raise argparse.ArgumentTypeError(f"expected comma-separated {expected}; got {text!r}")
    return faults


def _hold_range(text: str) -> tuple[float, float]:
    """Parse ``--hold``: ``MIN,MAX`` seconds (or one number for both)."""
    try:
        parts = [float(p) for p in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) == 1:
        parts *= 2
    if len(parts) != 2:
        raise argparse.ArgumentTypeError(f"expected MIN,MAX seconds such as 0.5,1.2; got {text!r}")
    return parts[0], parts[1]


def _add_chaos_parser(commands: argparse._SubParsersAction[_Parser]) -> None:
    """Register ``memring chaos`` (see :mod:`memring.tools.chaos`)."""
    defaults = chaos.ChaosConfig()
    p = commands.add_parser(
        "chaos",
        help="run session load while memcached nodes are killed, hung and restarted",
        description=(
            "Start N memcached processes on loopback, run a session-like workload from "
            "several threads sharing one client, and inject one fault at a time (kill, "
            "hang, restart, flap). Report ops/s, latency per phase, errors that reached "
            "the caller, stale reads, resurrected deletes, keys lost against what the "
            "mode promises, and time to detect and recover. Exit status: 0 when no "
            "invariant broke, 1 when one did, 2 on invalid input."
        ),
    )
    p.add_argument("--nodes", type=int, default=defaults.nodes,
                   help=f"memcached processes to start (default: {defaults.nodes})")
    turn = math.ceil(chaos.fit_schedule(defaults).needed_s)
    p.add_argument("--duration", type=float, default=defaults.duration, metavar="SECONDS",
                   help=f"how long the load runs (default: {defaults.duration:g}); one turn "
                   f"of every fault kind takes about {turn} s, and a shorter run says up "
                   "front which kinds it skips")
    p.add_argument("--threads", type=int, default=defaults.threads,
                   help=f"worker threads sharing one client (default: {defaults.threads})")
    p.add_argument("--mode", choices=chaos.MODES, default=defaults.mode,
                   help="next = one copy with Failover('next'); backup = BackupClient "
                   f"(default: {defaults.mode})")
    p.add_argument("--faults", type=_fault_list, default=defaults.faults,
                   metavar="KIND[,KIND...]",
                   help=f"faults to inject, from {','.join(chaos.FAULTS)}; none for a "
                   f"baseline (default: {','.join(chaos.DEFAULT_FAULTS)}; rolling restarts "
                   "every node in turn, the next once redundancy is back, rolling-nowait "
                   "without waiting, and reports the keys that costs)")
    p.add_argument("--seed", type=int, default=defaults.seed,
                   help="seed of the fault schedule and the workload (default: 0)")
    p.add_argument("--format", choices=chaos.FORMATS, default="table",
                   help="output format (default: table)")
    p.add_argument("--keys-per-thread", type=int, default=defaults.keys_per_thread,
                   help=f"session keys each thread owns (default: {defaults.keys_per_thread})")
    p.add_argument("--failover-ttl", type=int, default=defaults.failover_ttl,
                   metavar="SECONDS",
                   help=f"the client's Failover failover_ttl (default: {defaults.failover_ttl})")
    p.add_argument("--hold", type=_hold_range, default=defaults.hold, metavar="MIN,MAX",
                   help="seconds a killed or hung node stays out (default: "
                   f"{defaults.hold[0]:g},{defaults.hold[1]:g})")
    p.add_argument("--connect-timeout", type=float, default=defaults.timeouts.connect,
                   metavar="SECONDS",
                   help=f"client connect timeout (default: {defaults.timeouts.connect:g})")
    p.add_argument("--read-timeout", type=float, default=defaults.timeouts.read,
                   metavar="SECONDS",
                   help=f"client read timeout (default: {defaults.timeouts.read:g})")
    p.add_argument("--async", dest="async_face", action="store_true",
                   help="run the workload on the asyncio face: an AsyncClient (AsyncBackupClient "
                   "in backup mode) on an event loop of its own, every call a task of it")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="log faults, detection and recovery on stderr as they happen")
    p.set_defaults(handler=_run_chaos, prog=p.prog)


def _run_chaos(args: argparse.Namespace, stdout: TextIO, stderr: TextIO) -> int:
    """``memring chaos``: run the engine, print the report; 1 if an invariant broke."""
    from memring import Timeouts

    config = chaos.ChaosConfig(
        nodes=args.nodes, duration=args.duration, threads=args.threads, mode=args.mode,
        faults=args.faults, seed=args.seed, keys_per_thread=args.keys_per_thread,
        failover_ttl=args.failover_ttl, hold=args.hold,
        timeouts=Timeouts(connect=args.connect_timeout, read=args.read_timeout),
        face="async" if args.async_face else "sync",
    )

    def log(message: str) -> None:
        print(f"{args.prog}: {message}", file=stderr, flush=True)

    note = chaos.fit_schedule(config).note
    if note is not None:
        log(f"note: {note}")
    with _quiet_failover_log():  # nodes fail on purpose: the report says what matters
        report = chaos.run_chaos(config, log=log if args.verbose else None)
    stdout.write(chaos.format_report(report, args.format))
    stdout.flush()
    return EXIT_OK if report.ok else EXIT_FAILURE
