"""memcached's text protocol, as much of it as a fake server needs.

* :class:`RequestFramer` cuts a byte stream into :class:`Request` objects:
  a command line, plus the data block of a storage command (``set``,
  ``add``, ``replace``, ``append``, ``prepend``, ``cas``, meta ``ms``) of
  the length its line states.
* :class:`MiniMemcached` is a small in-memory memcached (items with flags,
  CAS tokens and TTLs) that gives the honest reply to a request, so that a
  hostile behaviour can corrupt some replies and leave the rest correct.

Replies follow memcached 1.6's wording for everything memring and
pymemcache read.
"""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import quote_from_bytes

__all__ = [
    "ITEM_SIZE_MAX",
    "MAX_LINE",
    "STORAGE_COMMANDS",
    "MiniMemcached",
    "Request",
    "RequestFramer",
]

#: memcached's default item size limit (``-I 1m``).
ITEM_SIZE_MAX = 1024 * 1024
#: A command line longer than this, still without its newline, is refused.
MAX_LINE = 1024 * 1024
MAX_KEY = 250
THIRTY_DAYS = 30 * 24 * 3600
VERSION = b"1.6.21"

#: Commands followed by a data block whose length is on the command line.
STORAGE_COMMANDS = frozenset({"set", "add", "replace", "append", "prepend", "cas"})
#: Where the data length is on a storage line: ``cmd key flags exptime <bytes>``.
_LENGTH_FIELD = {**dict.fromkeys(STORAGE_COMMANDS, 4), "ms": 2}
#: Commands whose every argument is a key.
_MULTI_KEY = frozenset({"get", "gets"})
#: Commands whose first argument is the one key.
_ONE_KEY = STORAGE_COMMANDS | {"delete", "touch", "incr", "decr", "mg", "ms", "md", "ma"}


@dataclass(eq=False)
class Request:
    """One request as the server framed it.

    ``raw`` is every byte of it (line and data block); ``data`` is the data
    block without its CRLF, or None. ``error`` is set when the request could
    not be framed as memcached frames it (its honest reply is then that
    ``CLIENT_ERROR``/``SERVER_ERROR`` line). ``connection`` and ``index``
    say which connection it came on (numbered from 0 in accept order) and
    its place there.
    """

    command: str
    args: tuple[bytes, ...]
    raw: bytes
    data: bytes | None = None
    error: bytes | None = None
    connection: int = 0
    index: int = 0
    store: MiniMemcached | None = field(default=None, repr=False)
    #: ``time.monotonic()`` when the request was complete.
    arrived: float = field(default_factory=time.monotonic, repr=False)
    _honest: bytes | None = field(default=None, repr=False)

    @property
    def line(self) -> bytes:
        """The command line, without its line end."""
        return self.raw.split(b"\n", 1)[0].rstrip(b"\r")

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The keys this request names (none for ``stats``, ``version``, ...)."""
        if self.command in _MULTI_KEY:
            return self.args
        if self.command in ("gat", "gats"):
            return self.args[1:]
        if self.command in _ONE_KEY and self.args:
            return self.args[:1]
        return ()

    @property
    def key(self) -> bytes | None:
        """The first key, or None."""
        keys = self.keys
        return keys[0] if keys else None

    @property
    def noreply(self) -> bool:
        """A classic command sent with ``noreply``: an honest server answers nothing."""
        return bool(self.args) and self.args[-1] == b"noreply" and not self.command.startswith("m")

    def honest(self) -> bytes:
        """The reply a correct memcached would send, applying the request to the store.

        Computed (and applied) once, however many times it is asked for. A
        behaviour that never asks leaves the store untouched: a corrupted
        ``set`` stored nothing.
        """
        if self._honest is None:
            if self.store is None:
                raise RuntimeError("this request has no store to answer it from")
            self._honest = self.store.execute(self)
        return self._honest


class RequestFramer:
    """Cuts the bytes of one connection into requests, as memcached does.

    A line ends at ``\\n`` (a ``\\r`` before it is dropped). A storage
    command waits for its whole data block; a data block not followed by
    CRLF is a ``CLIENT_ERROR bad data chunk``; a stated length that is not
    a number is a ``CLIENT_ERROR bad command line format`` and, as in
    memcached, no data block is taken; a length over the item limit is a
    ``SERVER_ERROR object too large for cache`` and its data is swallowed.
    A line longer than :data:`MAX_LINE` is a ``CLIENT_ERROR line too long``
    (``close_after`` is then set: memcached drops such a connection).
    """

    def __init__(self, *, item_size_max: int = ITEM_SIZE_MAX, connection: int = 0,
                 store: MiniMemcached | None = None) -> None:
        self._buf = bytearray()
        self._swallow = 0
        self._swallowed = bytearray()
        self._pending_error: Request | None = None
        self._count = 0
        self.item_size_max = item_size_max
        self.connection = connection
        self.store = store
        self.close_after = False

    def feed(self, data: bytes) -> list[Request]:
        """Take more bytes; return the requests they complete, in order."""
        out: list[Request] = []
        if self._swallow:  # the data block of a value over the item limit
            take = min(self._swallow, len(data))
            self._swallowed += data[:take]
            self._swallow -= take
            data = data[take:]
            if self._swallow:
                return out
            req, self._pending_error = self._pending_error, None
            assert req is not None
            req.raw += bytes(self._swallowed)
            self._swallowed.clear()
            out.append(req)
        self._buf += data
        out += self._drain()
        return out

    def _drain(self) -> list[Request]:
        out: list[Request] = []
        while not self.close_after and not self._swallow:
            req = self._next()
            if req is None:
                break
            out.append(req)
        return out

    def _make(self, command: str, args: tuple[bytes, ...], raw: bytes, data: bytes | None = None,
              error: bytes | None = None) -> Request:
        req = Request(command, args, raw, data, error, self.connection, self._count, self.store)
        self._count += 1
        return req

    def _next(self) -> Request | None:
        buf = self._buf
        eol = buf.find(b"\n")
        if eol < 0:
            if len(buf) > MAX_LINE:
                raw = bytes(buf)
                buf.clear()
                self.close_after = True
                return self._make("", (), raw, error=b"CLIENT_ERROR line too long")
            return None
        line = bytes(buf[:eol])
        if line.endswith(b"\r"):
            line = line[:-1]
        tokens = line.split()
        command = tokens[0].decode("latin-1") if tokens else ""
        args = tuple(tokens[1:])
        end = eol + 1
        where = _LENGTH_FIELD.get(command)
        if where is None:
            raw = bytes(buf[:end])
            del buf[:end]
            return self._make(command, args, raw)
        length = _length(tokens, where, command)
        if length is None:
            raw = bytes(buf[:end])
            del buf[:end]
            return self._make(command, args, raw, error=b"CLIENT_ERROR bad command line format")
        if length > self.item_size_max:
            have = len(buf) - end
            take = min(have, length + 2)
            raw = bytes(buf[:end + take])
            del buf[:end + take]
            req = self._make(command, args, raw,
                             error=b"SERVER_ERROR object too large for cache")
            if take < length + 2:
                self._swallow = length + 2 - take
                self._pending_error = req
                return None
            return req
        need = end + length + 2
        if len(buf) < need:
            return None
        data = bytes(buf[end:end + length])
        ok = buf[end + length:need] == b"\r\n"
        raw = bytes(buf[:need])
        del buf[:need]
        return self._make(command, args, raw, data,
                          None if ok else b"CLIENT_ERROR bad data chunk")


def _length(tokens: list[bytes], where: int, command: str) -> int | None:
    """The data length a storage line states, or None if the line is malformed."""
    if command == "cas":
        if len(tokens) not in (6, 7):
            return None
    elif command == "ms":
        if len(tokens) < 3:
            return None
    elif len(tokens) not in (5, 6):
        return None
    field_ = tokens[where]
    return int(field_) if field_.isdigit() else None


@dataclass
class _Item:
    data: bytes
    flags: int
    expires: float  # absolute time.time(); 0 = never
    cas: int


def _digits(token: bytes) -> int | None:
    return int(token) if token.isdigit() else None


def _signed(token: bytes) -> int | None:
    body = token[1:] if token[:1] == b"-" else token
    return int(token) if body.isdigit() else None


class MiniMemcached:
    """A small in-memory memcached: what an honest server would answer.

    Thread-safe (one store is shared by every connection of a server).
    TTLs follow memcached: 0 never expires, up to 30 days is relative,
    more is a Unix time, negative is already expired. ``clock`` is
    ``time.time`` unless a test gives its own.
    """

    def __init__(self, *, clock: Callable[[], float] = time.time,
                 item_size_max: int = ITEM_SIZE_MAX) -> None:
        self._items: dict[bytes, _Item] = {}
        self._lock = threading.Lock()
        self._cas = itertools.count(1)
        self._clock = clock
        self.item_size_max = item_size_max
        self.started = clock()
        self.pid = os.getpid()
        #: Connections the server has accepted so far (for ``stats``).
        self.total_connections = 0
        self.curr_connections = 0

    # -- direct access, for tests ------------------------------------------
    def put(self, key: bytes, data: bytes, flags: int = 0, exptime: int = 0) -> None:
        """Store an item as a ``set`` would."""
        with self._lock:
            self._store(key, data, flags, exptime)

    def lookup(self, key: bytes) -> tuple[bytes, int] | None:
        """``(data, flags)`` of a live item, or None."""
        with self._lock:
            item = self._live(key)
            return (item.data, item.flags) if item else None

    def keys(self) -> list[bytes]:
        """The keys of the live items."""
        with self._lock:
            return [k for k in list(self._items) if self._live(k)]

    def clear(self) -> None:
        with self._lock:
            self._items.clear()

    # -- the honest reply ----------------------------------------------------
    def execute(self, req: Request) -> bytes:
        """Apply ``req`` and return memcached's reply to it (b"" for noreply)."""
        if req.error is not None:
            return req.error + b"\r\n"
        name = req.command
        handler = getattr(self, "_cmd_" + name, None) if name.replace("_", "").isalpha() else None
        if handler is None:
            return b"ERROR\r\n"
        with self._lock:
            reply: bytes = handler(req)
        return reply

    def _expiry(self, exptime: int) -> float:
        now = self._clock()
        if exptime == 0:
            return 0.0
        if exptime < 0:
            return now - 1
        if exptime <= THIRTY_DAYS:
            return now + exptime
        return float(exptime)

    def _live(self, key: bytes) -> _Item | None:
        item = self._items.get(key)
        if item is not None and item.expires and item.expires <= self._clock():
            del self._items[key]
            return None
        return item

    def _store(self, key: bytes, data: bytes, flags: int, exptime: int) -> _Item:
        item = _Item(data, flags, self._expiry(exptime), next(self._cas))
        self._items[key] = item
        return item

    def _ttl(self, item: _Item) -> int:
        return -1 if not item.expires else max(0, int(item.expires - self._clock()))

    # get, gets, gat, gats
    def _values(self, keys: tuple[bytes, ...], with_cas: bool, touch: int | None) -> bytes:
        if not keys or any(len(k) > MAX_KEY for k in keys):
            return b"ERROR\r\n" if not keys else b"CLIENT_ERROR bad command line format\r\n"
        out = []
        for key in keys:
            item = self._live(key)
            if item is None:
                continue
            if touch is not None:
                item.expires = self._expiry(touch)
            cas = b" %d" % item.cas if with_cas else b""
            out.append(b"VALUE %s %d %d%s\r\n%s\r\n" % (key, item.flags, len(item.data), cas,
                                                         item.data))
        out.append(b"END\r\n")
        return b"".join(out)

    def _cmd_get(self, req: Request) -> bytes:
        return self._values(req.args, False, None)

    def _cmd_gets(self, req: Request) -> bytes:
        return self._values(req.args, True, None)

    def _gat(self, req: Request, with_cas: bool) -> bytes:
        exptime = _signed(req.args[0]) if req.args else None
        if exptime is None:
            return b"CLIENT_ERROR bad command line format\r\n"
        return self._values(req.args[1:], with_cas, exptime)

    def _cmd_gat(self, req: Request) -> bytes:
        return self._gat(req, False)

    def _cmd_gats(self, req: Request) -> bytes:
        return self._gat(req, True)

    # set, add, replace, append, prepend, cas
    def _storage(self, req: Request) -> bytes:
        key, flags_t, exptime_t = req.args[0], req.args[1], req.args[2]
        flags, exptime = _digits(flags_t), _signed(exptime_t)
        if flags is None or flags >= 1 << 32 or exptime is None or len(key) > MAX_KEY:
            return b"CLIENT_ERROR bad command line format\r\n"
        assert req.data is not None
        data, cmd = req.data, req.command
        item = self._live(key)
        if cmd == "cas":
            token = _digits(req.args[4])
            if token is None:
                reply = b"CLIENT_ERROR bad command line format"
            elif item is None:
                reply = b"NOT_FOUND"
            elif item.cas != token:
                reply = b"EXISTS"
            else:
                self._store(key, data, flags, exptime)
                reply = b"STORED"
        elif cmd == "set" or (cmd == "add" and item is None) or (
                cmd == "replace" and item is not None):
            self._store(key, data, flags, exptime)
            reply = b"STORED"
        elif cmd in ("append", "prepend") and item is not None:
            item.data = item.data + data if cmd == "append" else data + item.data
            item.cas = next(self._cas)
            reply = b"STORED"
        else:
            reply = b"NOT_STORED"
        return b"" if req.noreply else reply + b"\r\n"

    _cmd_set = _cmd_add = _cmd_replace = _cmd_append = _cmd_prepend = _cmd_cas = _storage

    def _cmd_delete(self, req: Request) -> bytes:
        if not req.args:
            return b"ERROR\r\n"
        found = self._live(req.args[0]) is not None
        if found:
            del self._items[req.args[0]]
        reply = b"DELETED" if found else b"NOT_FOUND"
        return b"" if req.noreply else reply + b"\r\n"

    def _arith(self, req: Request) -> bytes:
        if len(req.args) < 2:
            return b"ERROR\r\n"
        delta = _digits(req.args[1])
        if delta is None or delta >= 1 << 64:
            return b"CLIENT_ERROR invalid numeric delta argument\r\n"
        item = self._live(req.args[0])
        if item is None:
            reply = b"NOT_FOUND"
        else:
            value = _digits(item.data.rstrip(b" "))
            if value is None:
                reply = b"CLIENT_ERROR cannot increment or decrement non-numeric value"
            else:
                value = (value + delta) % (1 << 64) if req.command == "incr" else max(
                    0, value - delta)
                item.data = b"%d" % value
                item.cas = next(self._cas)
                reply = item.data
        return b"" if req.noreply else reply + b"\r\n"

    _cmd_incr = _cmd_decr = _arith

    def _cmd_touch(self, req: Request) -> bytes:
        exptime = _signed(req.args[1]) if len(req.args) >= 2 else None
        if exptime is None:
            return b"CLIENT_ERROR bad command line format\r\n"
        item = self._live(req.args[0])
        if item is not None:
            item.expires = self._expiry(exptime)
        reply = b"TOUCHED" if item is not None else b"NOT_FOUND"
        return b"" if req.noreply else reply + b"\r\n"

    def _cmd_version(self, req: Request) -> bytes:
        return b"VERSION %s\r\n" % VERSION

    def _cmd_verbosity(self, req: Request) -> bytes:
        return b"" if req.noreply else b"OK\r\n"

    def _cmd_flush_all(self, req: Request) -> bytes:
        delay = _digits(req.args[0]) if req.args and req.args[0] != b"noreply" else 0
        if delay is None:
            return b"CLIENT_ERROR bad command line format\r\n"
        if delay == 0:
            self._items.clear()
        else:
            until = self._clock() + delay
            for item in self._items.values():
                if not item.expires or item.expires > until:
                    item.expires = until
        return b"" if req.noreply else b"OK\r\n"

    def _cmd_quit(self, req: Request) -> bytes:
        return b""

    def _cmd_stats(self, req: Request) -> bytes:
        if req.args:  # "stats items", "stats slabs", ...: nothing to tell
            return b"END\r\n"
        now = self._clock()
        rows = [
            (b"pid", b"%d" % self.pid),
            (b"uptime", b"%d" % int(now - self.started)),
            (b"time", b"%d" % int(now)),
            (b"version", VERSION),
            (b"curr_connections", b"%d" % self.curr_connections),
            (b"total_connections", b"%d" % self.total_connections),
            (b"curr_items", b"%d" % sum(1 for k in list(self._items) if self._live(k))),
            (b"limit_maxbytes", b"%d" % (64 * 1024 * 1024)),
            (b"threads", b"1"),
        ]
        return b"".join(b"STAT %s %s\r\n" % row for row in rows) + b"END\r\n"

    def _cmd_lru_crawler(self, req: Request) -> bytes:
        if req.args[:1] != (b"metadump",):
            return b"ERROR\r\n"
        lines = []
        for key in list(self._items):
            item = self._live(key)
            if item is None:
                continue
            exp = -1 if not item.expires else int(item.expires)
            lines.append(b"key=%s exp=%d la=%d cas=%d fetch=no cls=1 size=%d\n" % (
                quote_from_bytes(key).encode(), exp, int(self._clock()), item.cas,
                len(key) + len(item.data) + 50))
        return b"".join(lines) + b"END\r\n"

    # -- meta commands ----------------------------------------------------------
    def _meta_flags(self, tokens: tuple[bytes, ...]) -> dict[str, bytes]:
        return {chr(t[0]): t[1:] for t in tokens if t}

    def _meta_echo(self, flags: dict[str, bytes], key: bytes) -> list[bytes]:
        out = []
        if "O" in flags:
            out.append(b"O" + flags["O"])
        if "k" in flags:
            out.append(b"k" + key)
        return out

    @staticmethod
    def _meta_line(code: bytes, ret: list[bytes]) -> bytes:
        return b" ".join([code, *ret]) + b"\r\n"

    def _cmd_mn(self, req: Request) -> bytes:
        return b"MN\r\n"

    def _cmd_mg(self, req: Request) -> bytes:
        if not req.args:
            return b"CLIENT_ERROR bad command line format\r\n"
        key, flags = req.args[0], self._meta_flags(req.args[1:])
        item = self._live(key)
        if item is None:
            return b"" if "q" in flags else self._meta_line(b"EN", [])
        if "T" in flags:
            ttl = _signed(flags["T"])
            if ttl is not None:
                item.expires = self._expiry(ttl)
        ret = []
        for name in flags:
            if name == "f":
                ret.append(b"f%d" % item.flags)
            elif name == "c":
                ret.append(b"c%d" % item.cas)
            elif name == "t":
                ret.append(b"t%d" % self._ttl(item))
            elif name == "s":
                ret.append(b"s%d" % len(item.data))
        ret += self._meta_echo(flags, key)
        if "v" in flags:
            return b"VA %d%s\r\n%s\r\n" % (len(item.data), b"".join(b" " + r for r in ret),
                                           item.data)
        return self._meta_line(b"HD", ret)

    def _cmd_ms(self, req: Request) -> bytes:
        key, flags = req.args[0], self._meta_flags(req.args[2:])
        assert req.data is not None
        mode = flags.get("M", b"S")[:1].upper() or b"S"
        item = self._live(key)
        cas = _digits(flags["C"]) if "C" in flags else None
        client_flags = _digits(flags.get("F", b"0")) or 0
        ttl = _signed(flags.get("T", b"0")) or 0
        if cas is not None and item is None:
            code = b"NF"
        elif cas is not None and item is not None and item.cas != cas:
            code = b"EX"
        elif mode == b"S" or (mode == b"E" and item is None) or (mode == b"R" and item):
            item = self._store(key, req.data, client_flags, ttl)
            code = b"HD"
        elif mode in (b"A", b"P") and item is not None:
            item.data = item.data + req.data if mode == b"A" else req.data + item.data
            item.cas = next(self._cas)
            code = b"HD"
        else:
            code = b"NS"
        if code == b"HD" and "q" in flags:
            return b""
        ret = self._meta_echo(flags, key)
        if code == b"HD" and "c" in flags and item is not None:
            ret.insert(0, b"c%d" % item.cas)
        return self._meta_line(code, ret)

    def _cmd_md(self, req: Request) -> bytes:
        if not req.args:
            return b"CLIENT_ERROR bad command line format\r\n"
        key, flags = req.args[0], self._meta_flags(req.args[1:])
        item = self._live(key)
        cas = _digits(flags["C"]) if "C" in flags else None
        if item is None:
            code = b"NF"
        elif cas is not None and cas != item.cas:
            code = b"EX"
        else:
            del self._items[key]
            code = b"HD"
        if code == b"HD" and "q" in flags:
            return b""
        return self._meta_line(code, self._meta_echo(flags, key))

    def _cmd_ma(self, req: Request) -> bytes:
        if not req.args:
            return b"CLIENT_ERROR bad command line format\r\n"
        key, flags = req.args[0], self._meta_flags(req.args[1:])
        item = self._live(key)
        delta = _digits(flags.get("D", b"1"))
        if delta is None:
            return b"CLIENT_ERROR invalid numeric delta argument\r\n"
        if item is None and "N" in flags:
            initial = _digits(flags.get("J", b"0")) or 0
            item = self._store(key, b"%d" % initial, 0, _signed(flags["N"]) or 0)
            code = b"HD"
        elif item is None:
            return b"" if "q" in flags else self._meta_line(b"NF", self._meta_echo(flags, key))
        else:
            value = _digits(item.data.rstrip(b" "))
            if value is None:
                return b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
            decr = flags.get("M", b"I")[:1] in (b"D", b"d", b"-")
            value = max(0, value - delta) if decr else (value + delta) % (1 << 64)
            item.data = b"%d" % value
            item.cas = next(self._cas)
            code = b"HD"
        ret = []
        if "t" in flags:
            ret.append(b"t%d" % self._ttl(item))
        if "c" in flags:
            ret.append(b"c%d" % item.cas)
        ret += self._meta_echo(flags, key)
        if "v" in flags:
            return b"VA %d%s\r\n%s\r\n" % (len(item.data), b"".join(b" " + r for r in ret),
                                           item.data)
        if "q" in flags:
            return b""
        return self._meta_line(code, ret)
