"""How a memring client reacts to each hostile behaviour: a table to read, not a test.

    python -m tests.netfaults.survey [--cap 5] [--only drip,garbage] [--ops get,set,get_many]

For every behaviour and operation, a fresh ``memring.Client`` of one
hostile server (``Timeouts(connect=0.2, read=0.3)``, other settings at
their defaults) makes the call twice. Each call is given ``--cap``
seconds; a call still running then is reported as hung, and closing the
server ends it. The table shows the outcome (value or exception), the
seconds each call took and the growth of the process's resident memory
during the first.
"""

from __future__ import annotations

import argparse
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import memring
from tests.netfaults import HostileServer, behaviours
from tests.netfaults.behaviours import Behaviour

TIMEOUTS = memring.Timeouts(connect=0.2, read=0.3)

#: The behaviours surveyed, by the name the table shows.
CASES: dict[str, Callable[[], Behaviour]] = {
    "honest": behaviours.honest,
    "drip(0.1)": behaviours.drip,
    "drip(0.01)": lambda: behaviours.drip(0.01),
    "garbage": behaviours.garbage,
    "garbage(hold)": lambda: behaviours.garbage(then="hold"),
    "garbage(line)": lambda: behaviours.garbage(line=True, then="serve"),
    "huge 2GiB then nothing": behaviours.huge_value_header,
    "huge 1TiB then nothing": lambda: behaviours.huge_value_header(2**40),
    "huge 2GiB at 20MB/s": lambda: behaviours.huge_value_header(rate=20_000_000),
    "huge 1TiB at 20MB/s": lambda: behaviours.huge_value_header(2**40, rate=20_000_000),
    "undecodable text": lambda: behaviours.undecodable(b"\xff\xfe", 16),
    "undecodable json": lambda: behaviours.undecodable(b"{nope", 32),
    "undecodable int": lambda: behaviours.undecodable(b"12a", 2),
    "silent": behaviours.silent,
    "close_on_accept": behaviours.close_on_accept,
    "reset": behaviours.reset,
    "reset(accept)": lambda: behaviours.reset("accept"),
    "half_reply_then_close": behaviours.half_reply_then_close,
    "half_reply(hold)": lambda: behaviours.half_reply_then_close(then="hold"),
    "wrong_key": behaviours.wrong_key,
    "extra END": behaviours.extra_reply,
    "extra END 50ms later": lambda: behaviours.extra_reply(gap=0.05),
    "reply twice": lambda: behaviours.extra_reply(None),
    "SERVER_ERROR": behaviours.error_line,
    "CLIENT_ERROR": lambda: behaviours.error_line(b"CLIENT_ERROR bad data chunk"),
    "ERROR": lambda: behaviours.error_line(b"ERROR"),
    "length -5": behaviours.negative_or_bad_length,
    "length x": lambda: behaviours.negative_or_bad_length(b"x"),
    "flags x": lambda: behaviours.negative_or_bad_length(b"5", b"x"),
    "flags 2**32": lambda: behaviours.negative_or_bad_length(b"5", b"4294967296"),
    "last CRLF missing": behaviours.missing_crlf,
    "bare LF": behaviours.bare_lf,
    "no CRLF after value": behaviours.no_value_crlf,
    "endless VALUE blocks": lambda: behaviours.endless_values(interval=0.0005),
    "close_after_reply": behaviours.close_after_reply,
    "out_of_step": behaviours.out_of_step,
    "delayed(0.5)": lambda: behaviours.delayed(0.5),
    "split at 3": lambda: behaviours.split(3, gap=0.01),
    "stop_reading": behaviours.stop_reading,
    "STORED to a get": lambda: behaviours.canned(b"STORED\r\n"),
    "cas token abc": lambda: behaviours.wrong_cas(b"abc"),
    "cas token of 40 digits": lambda: behaviours.wrong_cas(b"9" * 40),
    "length of 1000 digits": lambda: behaviours.negative_or_bad_length(b"0" * 999 + b"5"),
    "flags of 1000 digits": lambda: behaviours.negative_or_bad_length(b"5", b"0" * 1000),
    "flags -1": lambda: behaviours.negative_or_bad_length(b"5", b"-1"),
    "length 2**64": lambda: behaviours.huge_value_header(2**64),
    "one byte past the item limit": lambda: behaviours.huge_value_header(2**20 + 1,
                                                                          rate=50_000_000),
    "1 MiB without a line end": lambda: behaviours.canned(b"\xfe" * (1 << 20), then="hold"),
    "a 1 MiB line": lambda: behaviours.canned(b"\xfe" * (1 << 20) + b"\r\n"),
    "endless line": behaviours.endless_line,
    "garbage then half close": lambda: behaviours.garbage(then="half_close"),
    "half reply then reset": lambda: behaviours.half_reply_then_close(then="reset"),
    "reply twice 50ms apart": lambda: behaviours.extra_reply(None, gap=0.05),
    "NOT_STORED to everything": lambda: behaviours.canned(b"NOT_STORED\r\n"),
    "a number to everything": lambda: behaviours.canned(b"12345\r\n"),
    "future version": behaviours.future_version,
    "drip(0.0005)": lambda: behaviours.drip(0.0005),
    "delayed(0.1)": lambda: behaviours.delayed(0.1),
}

#: Faults of the server itself rather than of its replies: applied to a fresh server.
SERVER_CASES: dict[str, Callable[[HostileServer], None]] = {
    "listen queue full": lambda server: server.hold_accepts(),
}

KEYS = ["k", "k2", "k3"]


@dataclass
class Call:
    outcome: str
    seconds: float
    rss_growth_mb: float
    state: str = ""


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096 / 1e6


def _run(op: str, client: memring.Client) -> object:
    if op == "get":
        return client.get("k")
    if op == "set":
        return client.set("k", "new value")
    return client.get_many(KEYS)


def _chain(exc: BaseException | None) -> str:
    """``Outer<Cause<RootCause``: the exception and what it was raised from."""
    names: list[str] = []
    while exc is not None and len(names) < 4:
        names.append(type(exc).__name__)
        exc = exc.__cause__ or exc.__context__
    return "<".join(names)


def _state(client: memring.Client) -> str:
    return "/".join(s.state.value for s in client.health().values())


def _call(op: str, client: memring.Client, server: HostileServer, cap: float) -> Call:
    box: list[str] = []
    peak = [_rss_mb()]
    base = peak[0]

    def target() -> None:
        try:
            box.append(f"ok {_run(op, client)!r}"[:60])
        except BaseException as exc:
            box.append(f"{_chain(exc)}: {str(exc).split(' (node=')[0]}"[:110])

    start = time.monotonic()
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    while thread.is_alive() and time.monotonic() - start < cap:
        thread.join(0.01)
        peak[0] = max(peak[0], _rss_mb())
    seconds = time.monotonic() - start
    if thread.is_alive():
        server.close()  # ends the call: its connection closes
        thread.join(cap)
        return Call(f"HUNG (>{cap:g}s), then {box[0] if box else '?'}", seconds, peak[0] - base,
                    _state(client))
    return Call(box[0], seconds, peak[0] - base, _state(client))


def survey(cases: list[str], ops: list[str], cap: float) -> None:
    print(f"{'behaviour':24} {'op':8} {'1st s':>6} {'RSS MB':>7} {'node':5} outcome of 1st call"
          f" | 2nd call: seconds, node, outcome")
    for name in cases:
        for op in ops:
            server = HostileServer()
            try:
                for key in KEYS:
                    server.store.put(key.encode(), b'"stored"', 32)
                if name in SERVER_CASES:
                    SERVER_CASES[name](server)
                else:
                    server.behave(CASES[name]())
                client = memring.Client([server.server], timeouts=TIMEOUTS)
                try:
                    first = _call(op, client, server, cap)
                    second = _call(op, client, server, cap) if "HUNG" not in first.outcome \
                        else None
                finally:
                    client.close()
            finally:
                try:
                    server.close()
                except Exception as exc:  # a behaviour's own error: say so, go on
                    print(f"  (server: {exc})")
            tail = f" | {second.seconds:.2f} {second.state} {second.outcome}" if second else ""
            print(f"{name:24} {op:8} {first.seconds:6.2f} {first.rss_growth_mb:7.1f} "
                  f"{first.state:5} {first.outcome}{tail}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--cap", type=float, default=5.0, help="seconds a call may take")
    parser.add_argument("--only", help="comma-separated behaviour names")
    parser.add_argument("--ops", default="get,set,get_many")
    args = parser.parse_args()
    cases = args.only.split(",") if args.only else [*CASES, *SERVER_CASES]
    survey(cases, args.ops.split(","), args.cap)


if __name__ == "__main__":
    main()
