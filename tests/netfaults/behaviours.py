"""What a hostile server does with each request: actions, and behaviours that choose them.

A behaviour's ``reply(request)`` returns what to do instead of (or on the
way to) the honest reply: bytes to send, an action, a list of both, or
None (answer nothing). ``request.honest()`` is the reply a correct
memcached would give, computed from the server's store and applied to it;
a behaviour that never calls it leaves the store untouched. ``on_accept``,
if given, runs once per connection before anything is read.

Actions:

* :class:`Send` — bytes, at once or in chunks spaced in time;
* :class:`Stream` — chunks from an iterator (possibly endless), spaced in time;
* :class:`Sleep` — wait (bounded: the server's ``close()`` cuts it short);
* :data:`CLOSE` (FIN), :data:`RESET` (RST: ``SO_LINGER`` 0), :data:`HALF_CLOSE`
  (FIN but keep reading);
* :data:`MUTE` — from now on read and record, but answer nothing on this connection;
* :data:`STOP_READING` — from now on read nothing: the client's writes fill
  the socket buffers and then block (a zero TCP window).

Canned behaviours are built by the functions below. Those that corrupt a
value (:func:`undecodable`, :func:`wrong_key`, :func:`huge_value_header`,
:func:`negative_or_bad_length`, :func:`no_value_crlf`,
:func:`endless_values`) corrupt only replies that carry values (``get``,
``gets``, ``gat``, ``gats``, ``mg``) and answer every other command
honestly; the rest apply to every command they are bound to (bind them to
some commands with ``HostileServer.behave(b, "get")``).
"""

from __future__ import annotations

import itertools
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

from tests.netfaults.protocol import Request

__all__ = [
    "CLOSE",
    "FETCH_COMMANDS",
    "HALF_CLOSE",
    "MUTE",
    "RESET",
    "STOP_READING",
    "Action",
    "Behaviour",
    "BehaviourLike",
    "Reply",
    "Send",
    "Sleep",
    "Stream",
    "after",
    "as_behaviour",
    "bare_lf",
    "canned",
    "close_after_reply",
    "close_on_accept",
    "delayed",
    "drip",
    "endless_line",
    "endless_values",
    "error_line",
    "extra_reply",
    "future_version",
    "garbage",
    "half_reply_then_close",
    "honest",
    "honest_reply",
    "huge_value_header",
    "missing_crlf",
    "negative_or_bad_length",
    "no_value_crlf",
    "out_of_step",
    "reset",
    "silent",
    "split",
    "stop_reading",
    "undecodable",
    "wrong_cas",
    "wrong_key",
]

#: Commands whose reply carries values.
FETCH_COMMANDS = frozenset({"get", "gets", "gat", "gats", "mg"})


@dataclass(frozen=True)
class Send:
    """Send ``data``: at once, or ``chunk`` bytes at a time, ``interval`` seconds apart."""

    data: bytes
    chunk: int = 0
    interval: float = 0.0


@dataclass(frozen=True, eq=False)
class Stream:
    """Send each chunk ``chunks`` yields, ``interval`` seconds apart.

    It may be endless: it stops when the client goes away or the server closes.
    """

    chunks: Iterable[bytes]
    interval: float = 0.0


@dataclass(frozen=True)
class Sleep:
    """Wait ``seconds`` (cut short when the server closes)."""

    seconds: float


@dataclass(frozen=True)
class _Signal:
    """An action without arguments: one of the module's constants."""

    name: str

    def __repr__(self) -> str:
        return self.name.upper()


#: Close the connection (FIN), after what was sent so far.
CLOSE = _Signal("close")
#: Reset the connection (RST, via ``SO_LINGER`` 0).
RESET = _Signal("reset")
#: Shut down the sending side (FIN) but keep reading and recording.
HALF_CLOSE = _Signal("half_close")
#: Keep the connection open, read and record, never answer on it again.
MUTE = _Signal("mute")
#: Never read from this connection again (it stays open until the server closes).
STOP_READING = _Signal("stop_reading")

Action = Send | Stream | Sleep | _Signal
#: What a behaviour returns: bytes, an action, a sequence of either, or None.
Reply = bytes | Action | Sequence[bytes | Action] | None
ReplyFn = Callable[[Request], Reply]
#: ``on_accept(connection_number)``.
AcceptFn = Callable[[int], Reply]
Then = Literal["close", "reset", "half_close", "hold", "serve"]

_THEN: dict[str, list[Action]] = {
    "close": [CLOSE], "reset": [RESET], "half_close": [HALF_CLOSE], "hold": [MUTE], "serve": [],
}


def _then(then: Then) -> list[Action]:
    """The actions after a hostile reply: close, reset, half-close, hold (mute) or serve on."""
    try:
        return list(_THEN[then])
    except KeyError:
        raise ValueError(f"then must be one of {sorted(_THEN)}, got {then!r}") from None


def honest_reply(request: Request) -> Reply:
    """What a correct memcached does: the honest reply; ``quit`` closes."""
    if request.command == "quit":
        return CLOSE
    return request.honest()


class Behaviour:
    """A named pair of functions: ``reply(request)`` and, optionally, ``on_accept(conn)``.

    >>> slow_get = Behaviour("slow", reply=lambda req: [Sleep(0.5), req.honest()])
    """

    def __init__(self, name: str, reply: ReplyFn = honest_reply,
                 on_accept: AcceptFn | None = None) -> None:
        self.name = name
        self._reply = reply
        self._on_accept = on_accept

    def reply(self, request: Request) -> Reply:
        return self._reply(request)

    def on_accept(self, connection: int) -> Reply:
        return self._on_accept(connection) if self._on_accept is not None else None

    def __repr__(self) -> str:
        return f"<Behaviour {self.name}>"


#: A behaviour, or a plain ``reply(request)`` function.
BehaviourLike = Behaviour | ReplyFn


def as_behaviour(obj: BehaviourLike) -> Behaviour:
    """``obj`` if it is a behaviour; a plain function becomes one's ``reply``."""
    if isinstance(obj, Behaviour):
        return obj
    if callable(obj):
        return Behaviour(getattr(obj, "__name__", "custom"), reply=obj)
    raise TypeError(f"a behaviour or a reply(request) function, not {obj!r}")


def _values_only(name: str, hostile: ReplyFn) -> Behaviour:
    """A behaviour that answers fetch commands with ``hostile`` and the rest honestly."""

    def reply(req: Request) -> Reply:
        return hostile(req) if req.command in FETCH_COMMANDS else honest_reply(req)

    return Behaviour(name, reply)


def _header(req: Request, key: bytes, flags: bytes | int, length: bytes | int) -> bytes:
    """A value's header in the reply format of ``req``'s command."""
    if req.command == "mg":
        return b"VA %s f%s k%s\r\n" % (_b(length), _b(flags), key)
    cas = b" 1" if req.command in ("gets", "gats") else b""
    return b"VALUE %s %s %s%s\r\n" % (key, _b(flags), _b(length), cas)


def _end(req: Request) -> bytes:
    return b"" if req.command == "mg" else b"END\r\n"


def _b(value: bytes | int) -> bytes:
    return value if isinstance(value, bytes) else b"%d" % value


def _asked(req: Request) -> tuple[bytes, ...]:
    return req.keys or (b"key",)


# -- canned behaviours -------------------------------------------------------------

def honest() -> Behaviour:
    """Answer like memcached."""
    return Behaviour("honest")


def drip(interval: float = 0.1, size: int = 1) -> Behaviour:
    """The honest reply, ``size`` bytes every ``interval`` seconds."""
    return Behaviour(f"drip({interval})",
                     lambda req: Send(req.honest(), chunk=size, interval=interval))


def split(at: int, gap: float = 0.05) -> Behaviour:
    """The honest reply in two writes, cut at byte ``at`` (negative: from the end),
    ``gap`` seconds apart: try every ``at`` to test a reader at every boundary."""

    def reply(req: Request) -> Reply:
        data = req.honest()
        cut = max(0, min(len(data), at if at >= 0 else len(data) + at))
        return [data[:cut], Sleep(gap), data[cut:]]

    return Behaviour(f"split({at})", reply)


def delayed(seconds: float) -> Behaviour:
    """The honest reply, ``seconds`` late: it lands on a connection the client gave up on."""
    return Behaviour(f"delayed({seconds})", lambda req: [Sleep(seconds), req.honest()])


def garbage(size: int = 64, *, seed: int = 0, line: bool = False,
            then: Then = "close") -> Behaviour:
    """``size`` random bytes (seeded) instead of the reply, none of them a line end.

    ``line=True`` ends them with CRLF, so a line reader sees one bad line.
    ``then``: "close" (default), "reset", "half_close", "hold" (keep the
    connection open and answer nothing more) or "serve" (answer on).
    """
    rng = random.Random(seed)
    lock = threading.Lock()
    after_ = _then(then)

    def reply(req: Request) -> Reply:
        with lock:
            noise = bytes(rng.randrange(0x80, 0x100) for _ in range(size))
        return [noise + (b"\r\n" if line else b""), *after_]

    return Behaviour(f"garbage(then={then})", reply)


def huge_value_header(size: int = 2**31, *, flags: int = 0, rate: float | None = None,
                      chunk: int = 65536) -> Behaviour:
    """``VALUE <key> <flags> <size>`` with ``size`` past any item limit (2 GiB; try 2**40).

    Then nothing (``rate=None``: the connection stays open, answering
    nothing more), or value bytes at ``rate`` bytes per second in chunks of
    ``chunk``, for as long as the client reads (the whole value and
    ``END`` only after ``size`` bytes).
    """
    filler = b"x" * chunk

    def body() -> Iterator[bytes]:
        left = size
        while left > 0:
            n = min(chunk, left)
            yield filler if n == chunk else filler[:n]
            left -= n
        yield b"\r\nEND\r\n"

    def hostile(req: Request) -> Reply:
        head = _header(req, _asked(req)[0], flags, size)
        if rate is None:
            return [head, MUTE]
        return [head, Stream(body(), interval=chunk / rate), MUTE]

    return _values_only(f"huge_value_header({size}, rate={rate})", hostile)


def undecodable(data: bytes = b"\xff\xfe\xfd", flags: int = 16) -> Behaviour:
    """Every key asked is found, holding ``data`` under ``flags``, with a correct header.

    The test picks bytes the flags cannot decode: invalid UTF-8 under the
    text flag (16, the default), non-JSON under memring's JSON flag (32),
    non-digits under the integer flag (2).
    """

    def hostile(req: Request) -> Reply:
        blocks = [_header(req, k, flags, len(data)) + data + b"\r\n" for k in _asked(req)]
        return b"".join(blocks) + _end(req)

    return _values_only(f"undecodable(flags={flags})", hostile)


def silent() -> Behaviour:
    """Accept, read and record, never answer (a hung server whose kernel still reads)."""
    return Behaviour("silent", lambda req: None)


def close_on_accept() -> Behaviour:
    """Close (FIN) every connection as soon as it is accepted."""
    return Behaviour("close_on_accept", lambda req: CLOSE, on_accept=lambda conn: CLOSE)


def reset(on: Literal["request", "accept"] = "request") -> Behaviour:
    """Reset (RST) the connection at the first request, or as soon as it is accepted."""
    if on not in ("request", "accept"):
        raise ValueError(f"on must be 'request' or 'accept', got {on!r}")
    return Behaviour(f"reset(on={on})", lambda req: RESET,
                     on_accept=(lambda conn: RESET) if on == "accept" else None)


def half_reply_then_close(fraction: float = 0.5, then: Then = "close") -> Behaviour:
    """The first ``fraction`` of the honest reply (at least one byte, never all), then
    ``then`` ("close" by default; "hold" leaves the client waiting for the rest)."""
    after_ = _then(then)

    def reply(req: Request) -> Reply:
        data = req.honest()
        if len(data) < 2:
            return [data, *after_]
        cut = max(1, min(len(data) - 1, int(len(data) * fraction)))
        return [data[:cut], *after_]

    return Behaviour(f"half_reply_then_close({fraction}, then={then})", reply)


def wrong_key(key: bytes = b"not-asked", data: bytes = b"value", flags: int = 0) -> Behaviour:
    """A well-formed value for a key the client did not ask for."""
    return _values_only(
        "wrong_key",
        lambda req: _header(req, key, flags, len(data)) + data + b"\r\n" + _end(req))


def extra_reply(extra: bytes | None = b"END\r\n", gap: float = 0.0) -> Behaviour:
    """The honest reply followed by ``extra`` (None: the honest reply twice).

    With a ``gap`` (seconds) the extra bytes come in a later write, so a
    client that drops what is left of its read buffer after a reply still
    finds them at the start of its next one.
    """

    def reply(req: Request) -> Reply:
        data = req.honest()
        more = data if extra is None else extra
        return [data, Sleep(gap), more] if gap else data + more

    return Behaviour(f"extra_reply({extra!r}, gap={gap})", reply)


def error_line(line: bytes = b"SERVER_ERROR out of memory storing object") -> Behaviour:
    """One error line instead of the reply (``SERVER_ERROR ...``, ``CLIENT_ERROR ...``,
    ``ERROR``); the request is not applied."""
    data = line if line.endswith(b"\r\n") else line + b"\r\n"
    return Behaviour(f"error_line({line!r})", lambda req: data)


def canned(data: bytes, then: Then = "serve") -> Behaviour:
    """Exactly ``data`` instead of the reply (e.g. ``STORED`` to a ``get``)."""
    after_ = _then(then)
    return Behaviour(f"canned({data[:32]!r})", lambda req: [data, *after_])


def negative_or_bad_length(length: bytes = b"-5", flags: bytes = b"0",
                           data: bytes = b"hello") -> Behaviour:
    """``VALUE <key> <flags> <length>`` with a length or flags that are not a number
    (``-5``, ``x``, ``5.0``) or out of range (flags ``4294967296``), then ``data`` and END."""
    return _values_only(
        f"negative_or_bad_length({length!r}, {flags!r})",
        lambda req: _header(req, _asked(req)[0], flags, length) + data + b"\r\n" + _end(req))


def missing_crlf(index: int = -1, replacement: bytes = b"") -> Behaviour:
    """The honest reply with its ``index``-th CRLF (default: the last) replaced by
    ``replacement`` (b"": dropped; b"\\n": a bare line feed)."""

    def reply(req: Request) -> Reply:
        data = req.honest()
        parts = data.split(b"\r\n")
        ends = len(parts) - 1
        if ends == 0:
            return data
        i = index % ends
        return b"\r\n".join(parts[:i + 1]) + replacement + b"\r\n".join(parts[i + 1:])

    return Behaviour(f"missing_crlf({index}, {replacement!r})", reply)


def bare_lf() -> Behaviour:
    """The honest reply with every CRLF sent as a bare LF."""
    return Behaviour("bare_lf", lambda req: req.honest().replace(b"\r\n", b"\n"))


def no_value_crlf() -> Behaviour:
    """Values of the right length but without the CRLF after them (needs stored values)."""

    def hostile(req: Request) -> Reply:
        data, out, pos = req.honest(), [], 0
        while pos < len(data):
            eol = data.index(b"\r\n", pos)
            head = data[pos:eol].split()
            if head[:1] in ([b"VALUE"], [b"VA"]):
                length = int(head[3] if head[0] == b"VALUE" else head[1])
                out.append(data[pos:eol + 2 + length])
                pos = eol + 4 + length
            else:
                out.append(data[pos:eol + 2])
                pos = eol + 2
        return b"".join(out)

    return _values_only("no_value_crlf", hostile)


def endless_values(interval: float = 0.001, data: bytes = b"x", flags: int = 0) -> Behaviour:
    """``VALUE`` blocks for the first key asked, again and again, never ``END``.

    ``interval`` spaces them (0: as fast as the client reads).
    """

    def hostile(req: Request) -> Reply:
        block = _header(req, _asked(req)[0], flags, len(data)) + data + b"\r\n"
        return [Stream(itertools.repeat(block), interval=interval), MUTE]

    return _values_only(f"endless_values({interval})", hostile)


def close_after_reply(then: Then = "close") -> Behaviour:
    """The honest reply, then close the connection (an idle-connection reaper, a
    restart between two calls): the client's next call on it finds it dead."""
    after_ = _then(then)
    return Behaviour(f"close_after_reply(then={then})",
                     lambda req: [req.honest(), *after_])


def stop_reading() -> Behaviour:
    """Never read a connection (a zero TCP window): the client's writes block once
    the socket buffers are full. Give the server a small ``rcvbuf`` to get there soon."""
    return Behaviour("stop_reading", lambda req: STOP_READING,
                     on_accept=lambda conn: STOP_READING)


def out_of_step() -> Behaviour:
    """Each request gets the honest reply of the one before it on its connection (the
    first gets nothing): a stream one reply behind, as after a timed-out call."""
    previous: dict[int, bytes] = {}
    lock = threading.Lock()

    def reply(req: Request) -> Reply:
        data = req.honest()
        with lock:
            before = previous.get(req.connection, b"")
            previous[req.connection] = data
        return before

    return Behaviour("out_of_step", reply)


def after(n: int, behaviour: BehaviourLike, before: BehaviourLike | None = None) -> Behaviour:
    """``before`` (default: honest) for the first ``n`` requests it sees, then ``behaviour``.

    Counted across connections; new connections get the ``on_accept`` of the
    phase they arrive in.
    """
    then_b = as_behaviour(behaviour)
    first_b = as_behaviour(before) if before is not None else honest()
    seen = [0]
    lock = threading.Lock()

    def reply(req: Request) -> Reply:
        with lock:
            seen[0] += 1
            current = first_b if seen[0] <= n else then_b
        return current.reply(req)

    def on_accept(conn: int) -> Reply:
        with lock:
            current = first_b if seen[0] < n else then_b
        return current.on_accept(conn)

    return Behaviour(f"after({n}, {then_b.name})", reply, on_accept)


def wrong_cas(token: bytes) -> Behaviour:
    """Honest values, but every ``gets``/``gats`` value carries ``token`` as its CAS
    (``abc``, 40 digits), and every ``mg`` value ``token`` followed by an ``x``."""

    def hostile(req: Request) -> Reply:
        lines = req.honest().split(b"\r\n")
        if req.command in ("gets", "gats"):
            lines = [b" ".join([*ln.split(b" ")[:4], token]) if ln.startswith(b"VALUE ")
                     else ln for ln in lines]
        elif req.command == "mg":
            lines = [ln.replace(b" c", b" c" + token + b"x", 1) if ln.startswith(b"VA ")
                     else ln for ln in lines]
        return b"\r\n".join(lines)

    return _values_only(f"wrong_cas({token[:10]!r})", hostile)


def future_version(years: float = 100.0, data: bytes = b'"from the future"') -> Behaviour:
    """Every key asked is found, holding a memring value (JSON flag, version trailer)
    whose version is ``years`` ahead of the clock: it would outrank every honest write."""
    from memring.engine.versions import FLAG_VERSIONED, pack_trailer

    version = (int(time.time() * 1000) + int(years * 365 * 86400 * 1000)) << 16
    stored = data + pack_trailer(version, 0)
    flags = 32 | FLAG_VERSIONED

    def hostile(req: Request) -> Reply:
        if req.command == "mg":
            return b"".join(b"VA %d f%d t-1 c1 k%s\r\n%s\r\n" % (len(stored), flags, k, stored)
                            for k in _asked(req))
        return b"".join(_header(req, k, flags, len(stored)) + stored + b"\r\n"
                        for k in _asked(req)) + _end(req)

    return _values_only(f"future_version({years})", hostile)


def endless_line(chunk: int = 4096) -> Behaviour:
    """A reply line that never ends: bytes and no line end, as fast as they are read."""
    return Behaviour("endless_line",
                     lambda req: [Stream(itertools.repeat(b"A" * chunk)), MUTE])
