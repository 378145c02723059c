"""Sans-I/O readers of memcached's replies (see :mod:`memring.protocol`).

A parser is ``parse(buf, start, args, limit) -> (result, end)``; while the
reply is not all in ``buf`` it returns ``(INCOMPLETE, need)``. Parsers never
read a socket and never keep state between calls: a transport that gets
more bytes parses again from ``start``. Each returns as soon as it can tell
the reply is broken, so neither a lying header nor a stream of garbage is
ever buffered beyond a few lines.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Mapping
from typing import Any, Final

__all__ = [
    "INCOMPLETE", "MAX_LINE", "BadReply", "ErrorLine", "MetadumpReader", "Parser",
    "line_parser", "parse_item", "parse_meta", "parse_number", "parse_stats", "parse_values",
    "parse_version",
]


class _Incomplete:
    __slots__ = ()

    def __repr__(self) -> str:
        return "INCOMPLETE"


#: What a parser returns (with the length ``buf`` must reach) before a reply is whole.
INCOMPLETE: Final = _Incomplete()

#: Longest reply line memring accepts. A ``VALUE`` header is at most about
#: 300 bytes (a 250-byte key and four numbers); memcached's error lines are
#: shorter still. A server that sends this much without a line end is not
#: speaking the protocol.
MAX_LINE = 2048

#: The most digits a number of a reply may have: flags are 32-bit (10 digits);
#: lengths, CAS tokens and counters 64-bit (20). memcached never pads them, so a
#: longer number is not its.
FLAG_DIGITS = 10
NUMBER_DIGITS = 20

Parser = Callable[[bytes, int, tuple[Any, ...], int], tuple[Any, int]]


class ErrorLine(Exception):
    """The server answered ``ERROR``, ``CLIENT_ERROR <msg>`` or ``SERVER_ERROR <msg>``.

    The connection is still in step: the error line was the whole reply.
    """

    def __init__(self, line: bytes) -> None:
        super().__init__(line.decode("ascii", "replace"))
        self.line = line

    @property
    def kind(self) -> str:
        """``"server"`` (SERVER_ERROR), ``"client"`` (CLIENT_ERROR) or ``"command"`` (ERROR)."""
        if self.line.startswith(b"SERVER_ERROR"):
            return "server"
        if self.line.startswith(b"CLIENT_ERROR"):
            return "client"
        return "command"


class BadReply(Exception):
    """Bytes that are not a reply to the request: the connection is out of step."""


def _broken(line: bytes) -> Exception:
    """The exception for a reply line that is not one the command expects."""
    if line == b"ERROR" or line.startswith((b"CLIENT_ERROR ", b"SERVER_ERROR ")):
        return ErrorLine(line)
    return BadReply(f"unexpected reply {line[:64]!r}")


def _no_line_yet(buf: bytes, pos: int) -> tuple[Any, int]:
    """No CRLF after ``pos`` yet: wait for more, unless the line is already too long."""
    if len(buf) - pos > MAX_LINE:
        raise BadReply(f"a reply line of over {MAX_LINE} bytes: {buf[pos:pos + 64]!r}")
    return INCOMPLETE, len(buf) + 1


def _split_values(buf: bytes, wanted: Container[bytes], fields: int, limit: int
                  ) -> dict[bytes, Any] | None:
    """The values of a whole reply that fills ``buf``, split at every CRLF; None if it
    does not parse so (a value holding a CRLF, a cut reply, an error line, a header
    :func:`_scan_values` would refuse).

    Exact, not a guess: each value must be exactly as long as its header says.
    It is 2-4 times as fast as :func:`_scan_values` on a batch of small values.
    """
    parts = buf.split(b"\r\n")
    last = len(parts) - 2  # parts[-1] is the empty tail after the final CRLF
    out: dict[bytes, Any] = {}
    i = 0
    try:
        while i < last:
            header = parts[i].split(b" ")
            data = parts[i + 1]
            if (len(header) != fields or header[0] != b"VALUE" or len(data) != int(header[3])
                    or len(data) > limit or header[1] not in wanted or header[1] in out
                    or len(header[2]) > FLAG_DIGITS or len(header[3]) > NUMBER_DIGITS):
                return None
            flags = 0 if header[2] == b"0" else int(header[2])
            if flags >> 32 or flags < 0:
                return None
            if fields == 4:
                out[header[1]] = (data, flags)
            elif header[4].isdigit() and len(header[4]) <= NUMBER_DIGITS:
                out[header[1]] = ((data, flags), header[4])
            else:
                return None
            i += 2
    except ValueError:
        return None
    return out if i == last and parts[last] == b"END" else None


def _scan_values(buf: bytes, pos: int, wanted: Container[bytes], fields: int, limit: int
                 ) -> tuple[Any, int]:
    """``VALUE`` blocks then ``END``, from ``buf[pos:]``."""
    out: dict[bytes, Any] = {}
    n = len(buf)
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return _no_line_yet(buf, pos)
        if buf.startswith(b"VALUE ", pos):
            header = buf[pos:eol].split(b" ")
            if (len(header) != fields or not header[2].isdigit() or not header[3].isdigit()
                    or len(header[2]) > FLAG_DIGITS or len(header[3]) > NUMBER_DIGITS
                    or (fields == 5 and not (header[4].isdigit()
                                             and len(header[4]) <= NUMBER_DIGITS))):
                raise BadReply(f"malformed value header {buf[pos:eol][:80]!r}")
            size = int(header[3])
            if size > limit:
                raise BadReply(f"a value of {size} bytes claimed; the item limit is {limit}")
            key = header[1]
            if key not in wanted or key in out:
                raise BadReply(f"a value for {key[:80]!r}, which was not asked for")
            flags = int(header[2])
            if flags >= 1 << 32:
                raise BadReply(f"flags {flags} do not fit 32 bits")
            start = eol + 2
            end = start + size
            if n < end + 2:
                return INCOMPLETE, end + 2
            if buf[end:end + 2] != b"\r\n":
                raise BadReply(f"the value of {key[:80]!r} is longer than its header says")
            item = (buf[start:end], flags)
            out[key] = item if fields == 4 else (item, header[4])
            pos = end + 2
        elif eol == pos + 3 and buf.startswith(b"END", pos):
            return out, eol + 2
        else:
            raise _broken(buf[pos:eol])


def parse_values(fields: int) -> Parser:
    """Reads a ``get`` (``fields=4``) or ``gets`` (5) reply to the keys of ``args[0]``:
    ``{key: item}`` or ``{key: (item, cas token)}``."""

    def parse(buf: bytes, start: int, args: tuple[Any, ...], limit: int) -> tuple[Any, int]:
        wanted = args[0]
        if not isinstance(wanted, (set, frozenset, dict)):
            wanted = frozenset(wanted)
        if start == 0 and buf.endswith(b"END\r\n"):
            out = _split_values(buf, wanted, fields, limit)
            if out is not None:
                return out, len(buf)
        return _scan_values(buf, start, wanted, fields, limit)

    return parse


def parse_item(buf: bytes, start: int, args: tuple[Any, ...], limit: int) -> tuple[Any, int]:
    """Reads the reply to a ``get`` of one key (``args[0]``): its item, or None.

    The usual whole reply, ``VALUE <key> <flags> <length>`` + value + ``END``,
    is taken apart at once, checked as :func:`_scan_values` checks it.
    """
    key = args[0]
    if start == 0:
        if buf == b"END\r\n":
            return None, 5
        eol = buf.find(b"\r\n")
        header = buf[:eol].split(b" ")
        if (len(header) == 4 and header[0] == b"VALUE" and header[1] == key
                and header[3].isdigit() and header[2].isdigit() and int(header[3]) <= limit
                and len(header[2]) <= FLAG_DIGITS and len(header[3]) <= NUMBER_DIGITS
                and len(buf) == eol + 9 + int(header[3]) and buf.endswith(b"\r\nEND\r\n")
                and int(header[2]) < 1 << 32):
            return (buf[eol + 2:-7], int(header[2])), len(buf)
    got, end = _scan_values(buf, start, (key,), 4, limit)
    if got is INCOMPLETE:
        return got, end
    return got.get(key), end


def parse_meta(buf: bytes, start: int, args: tuple[Any, ...], limit: int) -> tuple[Any, int]:
    """Reads the replies to one ``mg <key> k v f t c`` per key of ``args[0]``:
    ``{key: (item, cas token, seconds to live or -1)}`` for the keys found."""
    out: dict[bytes, tuple[tuple[bytes, int], bytes, int]] = {}
    pos = start
    n = len(buf)
    for asked in args[0]:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            return _no_line_yet(buf, pos)
        if buf.startswith(b"EN", pos) and (eol == pos + 2 or buf.startswith(b"EN ", pos)):
            # A miss: "EN", or (memcached 1.6.10 and later) "EN k<key>".
            echoed = buf[pos + 3:eol] if eol > pos + 2 else b""
            if echoed and echoed != b"k" + asked:
                raise BadReply(f"a meta miss for {echoed[:80]!r}; {asked[:80]!r} was asked")
            pos = eol + 2
            continue
        if not buf.startswith(b"VA ", pos):
            raise _broken(buf[pos:eol])
        tokens = buf[pos + 3:eol].split(b" ")
        fields = {t[:1]: t[1:] for t in tokens[1:]}
        try:
            size = int(tokens[0])
            flags = int(fields[b"f"])
            ttl = int(fields[b"t"])
            cas = fields[b"c"]
            key = fields[b"k"]
        except (KeyError, ValueError):
            raise BadReply(f"malformed meta reply {buf[pos:eol][:80]!r}") from None
        if (size < 0 or size > limit or not 0 <= flags < 1 << 32 or not cas.isdigit()
                or max(len(tokens[0]), len(fields[b"f"]), len(fields[b"t"]), len(cas))
                > NUMBER_DIGITS):
            raise BadReply(f"malformed meta reply {buf[pos:eol][:80]!r}")
        if key != asked:
            raise BadReply(f"a meta reply for {key[:80]!r}; {asked[:80]!r} was asked")
        begin = eol + 2
        end = begin + size
        if n < end + 2:
            return INCOMPLETE, end + 2
        if buf[end:end + 2] != b"\r\n":
            raise BadReply(f"the value of {key[:80]!r} is longer than its header says")
        out[key] = ((buf[begin:end], flags), cas, ttl)
        pos = end + 2
    return out, pos


def line_parser(replies: Mapping[bytes, Any]) -> Parser:
    """Reads a one-line reply and returns what ``replies`` maps it to."""
    whole = {line + b"\r\n": meaning for line, meaning in replies.items()}

    def parse(buf: bytes, start: int, args: tuple[Any, ...], limit: int) -> tuple[Any, int]:
        if start == 0 and buf in whole:  # the usual case: the whole reply, alone
            return whole[buf], len(buf)
        eol = buf.find(b"\r\n", start)
        if eol < 0:
            return _no_line_yet(buf, start)
        line = buf[start:eol]
        if line in replies:
            return replies[line], eol + 2
        raise _broken(line)

    return parse


def parse_number(buf: bytes, start: int, args: tuple[Any, ...], limit: int) -> tuple[Any, int]:
    """Reads an ``incr``/``decr`` reply: the new value, or None for ``NOT_FOUND``."""
    eol = buf.find(b"\r\n", start)
    if eol < 0:
        return _no_line_yet(buf, start)
    line = buf[start:eol]
    if line.isdigit() and len(line) <= 20:
        return int(line), eol + 2
    if line == b"NOT_FOUND":
        return None, eol + 2
    raise _broken(line)


def parse_version(buf: bytes, start: int, args: tuple[Any, ...], limit: int) -> tuple[Any, int]:
    """Reads a ``version`` reply: the version string's bytes."""
    eol = buf.find(b"\r\n", start)
    if eol < 0:
        return _no_line_yet(buf, start)
    line = buf[start:eol]
    if line.startswith(b"VERSION "):
        return line[8:], eol + 2
    raise _broken(line)


#: The most bytes a ``stats`` reply may take (memcached's is a few kilobytes).
MAX_STATS = 1 << 20


def parse_stats(buf: bytes, start: int, args: tuple[Any, ...], limit: int) -> tuple[Any, int]:
    """Reads ``STAT <name> <value>`` lines up to ``END``: ``{name: value}`` (both bytes).

    ``stats cachedump`` answers ``ITEM <key> <details>`` lines: ``{key: details}``,
    as pymemcache reads them."""
    out: dict[bytes, bytes] = {}
    pos = start
    while True:
        eol = buf.find(b"\r\n", pos)
        if eol < 0:
            if len(buf) - start > MAX_STATS:
                raise BadReply(f"a stats reply of over {MAX_STATS} bytes")
            return _no_line_yet(buf, pos)
        line = buf[pos:eol]
        if line == b"END":
            return out, eol + 2
        if not line.startswith((b"STAT ", b"ITEM ")):
            raise _broken(line)
        _, name, value = (line.split(b" ", 2) + [b""])[:3]
        out[name] = value
        pos = eol + 2


class MetadumpReader:
    """Reads ``lru_crawler metadump all`` incrementally: feed it chunks until it is done.

    The reply can be many megabytes (one line per item), so it is parsed as
    it arrives instead of being buffered and parsed again at every read.
    Entries end in ``\\n``, the reply in ``END\\r\\n``. Keys are URL-quoted.
    """

    def __init__(self) -> None:
        self.keys: list[bytes] = []
        self._tail = b""
        self.done = False

    def feed(self, chunk: bytes) -> bool:
        """Take the next bytes read; True once the reply is complete."""
        from urllib.parse import unquote_to_bytes

        data = self._tail + chunk
        lines = data.split(b"\n")
        self._tail = lines.pop()
        if len(self._tail) > MAX_LINE:
            raise BadReply(f"a metadump line of over {MAX_LINE} bytes")
        for line in lines:
            if line.startswith(b"key="):
                self.keys.append(unquote_to_bytes(line[4:].split(b" ", 1)[0]))
            elif line == b"END\r":
                if self._tail:
                    raise BadReply("data after the end of a metadump")
                self.done = True
                return True
            elif line:
                line = line.rstrip(b"\r")
                raise ErrorLine(line) if line.startswith(
                    (b"ERROR", b"CLIENT_ERROR", b"SERVER_ERROR", b"BUSY")) else BadReply(
                    f"unexpected metadump line {line[:64]!r}")
        return False
