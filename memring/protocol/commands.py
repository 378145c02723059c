"""Every command memring sends: its request bytes and the parser of its reply.

:data:`COMMANDS` maps a transport method name to a :class:`Command`. A
transport method ``name(*args)`` writes ``COMMANDS[name].build(*args)`` and
reads with ``COMMANDS[name].parse(buf, start, args, limit)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

from memring.protocol.replies import (
    INCOMPLETE,
    ErrorLine,
    Parser,
    _broken,
    _no_line_yet,
    line_parser,
    parse_item,
    parse_meta,
    parse_number,
    parse_stats,
    parse_values,
    parse_version,
)

__all__ = ["COMMANDS", "Command", "batch_parser", "build_batch"]

#: A raw stored value: the bytes and the 32-bit flags.
Item = tuple[bytes, int]


class Command(NamedTuple):
    build: Callable[..., bytes]
    parse: Parser


_STORED = {b"STORED": True, b"NOT_STORED": False}
_CAS = {b"STORED": True, b"EXISTS": False, b"NOT_FOUND": None}
_DELETED = {b"DELETED": True, b"NOT_FOUND": False}
_TOUCHED = {b"TOUCHED": True, b"NOT_FOUND": False}
_OK = {b"OK": True}


def _storage(name: bytes) -> Callable[[bytes, Item, int], bytes]:
    def build(key: bytes, item: Item, expire: int) -> bytes:
        data, flags = item
        return b"%s %s %d %d %d\r\n%s\r\n" % (name, key, flags, expire, len(data), data)
    return build


def _cas(key: bytes, item: Item, cas: bytes, expire: int) -> bytes:
    data, flags = item
    return b"cas %s %d %d %d %s\r\n%s\r\n" % (key, flags, expire, len(data), cas, data)


def _key(name: bytes) -> Callable[[bytes], bytes]:
    def build(key: bytes) -> bytes:
        return b"%s %s\r\n" % (name, key)
    return build


def _keys(name: bytes) -> Callable[[Sequence[bytes]], bytes]:
    def build(keys: Sequence[bytes]) -> bytes:
        return b"%s %s\r\n" % (name, b" ".join(keys))
    return build


def _meta_many(keys: Sequence[bytes]) -> bytes:
    # k: echo the key (a reply out of step is caught); v: value; f: flags;
    # t: seconds to live (-1: never); c: CAS token.
    return b"".join(b"mg %s k v f t c\r\n" % k for k in keys)


def _touch(key: bytes, expire: int) -> bytes:
    return b"touch %s %d\r\n" % (key, expire)


def _arith(name: bytes) -> Callable[[bytes, int], bytes]:
    def build(key: bytes, delta: int) -> bytes:
        return b"%s %s %d\r\n" % (name, key, delta)
    return build


def _set_many(items: Mapping[bytes, Item], expire: int) -> bytes:
    build = _storage(b"set")
    return b"".join(build(k, item, expire) for k, item in items.items())


_parse_stored = line_parser(_STORED)


def _parse_set_many(buf: bytes, start: int, args: tuple[Any, ...], limit: int
                    ) -> tuple[Any, int]:
    """One STORED/NOT_STORED line per item: the keys that were not stored."""
    not_stored: list[bytes] = []
    pos = start
    for key in args[0]:
        ok, pos = _parse_stored(buf, pos, args, limit)
        if ok is INCOMPLETE:
            return ok, pos
        if not ok:
            not_stored.append(key)
    return not_stored, pos


def _touch_flags(key: bytes, expire: int) -> bytes:
    # f: flags of the item found; T: its new TTL. A miss answers EN.
    return b"mg %s f T%d\r\n" % (key, expire)


def _parse_touch_flags(buf: bytes, start: int, args: tuple[Any, ...], limit: int
                       ) -> tuple[Any, int]:
    """The flags of the item ``mg <key> f T<ttl>`` touched, or None for a miss."""
    eol = buf.find(b"\r\n", start)
    if eol < 0:
        return _no_line_yet(buf, start)
    line = buf[start:eol]
    if line == b"EN":
        return None, eol + 2
    if line.startswith(b"HD f") and line[4:].isdigit() and int(line[4:]) < 1 << 32:
        return int(line[4:]), eol + 2
    raise _broken(line)


def _stats(*args: str) -> bytes:
    return b"stats %s\r\n" % " ".join(args).encode("ascii") if args else b"stats\r\n"


def _flush_all(delay: int) -> bytes:
    return b"flush_all %d\r\n" % delay if delay else b"flush_all\r\n"


def _cache_memlimit(megabytes: int) -> bytes:
    return b"cache_memlimit %d\r\n" % megabytes


def _raw(command: bytes, end_tokens: bytes) -> bytes:
    return command + b"\r\n"


def _is_error_line(line: bytes) -> bool:
    # memcached's own errors also read "ERROR: shutdown not enabled".
    return line.startswith((b"ERROR", b"CLIENT_ERROR ", b"SERVER_ERROR "))


def _parse_raw(buf: bytes, start: int, args: tuple[Any, ...], limit: int) -> tuple[Any, int]:
    """Everything up to ``args[1]`` (the end tokens), which is dropped, as pymemcache's
    ``raw_command`` reads it; an error line raises :class:`ErrorLine`."""
    end_tokens = args[1]
    eol = buf.find(b"\r\n", start)
    if eol >= 0 and _is_error_line(buf[start:eol]):
        raise ErrorLine(buf[start:eol])
    at = buf.find(end_tokens, start)
    if at < 0:
        if len(buf) - start > limit:
            raise _broken(buf[start:start + 64])
        return INCOMPLETE, len(buf) + 1
    return buf[start:at], at + len(end_tokens)


def _shutdown(graceful: bool) -> bytes:
    return b"shutdown graceful\r\n" if graceful else b"shutdown\r\n"


def _parse_shutdown(buf: bytes, start: int, args: tuple[Any, ...], limit: int
                    ) -> tuple[Any, int]:
    """A server that shuts down closes the connection without a reply; one that
    refuses says why in an error line (``ERROR: shutdown not enabled``)."""
    eol = buf.find(b"\r\n", start)
    if eol < 0:
        return _no_line_yet(buf, start)
    if _is_error_line(buf[start:eol]):
        raise ErrorLine(buf[start:eol])
    raise _broken(buf[start:eol])


def build_batch(ops: Sequence[tuple[str, tuple[Any, ...]]]) -> bytes:
    """The requests of several single-reply commands, one after another on one connection."""
    return b"".join(COMMANDS[name].build(*args) for name, args in ops)


def batch_parser(buf: bytes, start: int, args: tuple[Any, ...], limit: int) -> tuple[Any, int]:
    """Reads the replies of :func:`build_batch`'s commands (``args[0]``), in order.

    An error line answering one command is that command's result (an
    :class:`ErrorLine`): the connection is still in step, and the other
    commands' results stand.
    """
    out: list[Any] = []
    pos = start
    for name, op_args in args[0]:
        try:
            result, end = COMMANDS[name].parse(buf, pos, op_args, limit)
        except ErrorLine as exc:
            eol = buf.find(b"\r\n", pos)
            out.append(exc)
            pos = eol + 2
            continue
        if result is INCOMPLETE:
            return result, end
        out.append(result)
        pos = end
    return out, pos


def _parse_ok(buf: bytes, start: int, args: tuple[Any, ...], limit: int) -> tuple[Any, int]:
    eol = buf.find(b"\r\n", start)
    if eol < 0:
        return _no_line_yet(buf, start)
    if buf[start:eol] == b"OK":
        return True, eol + 2
    raise _broken(buf[start:eol])


COMMANDS: dict[str, Command] = {
    "get": Command(_key(b"get"), parse_item),
    "get_many": Command(_keys(b"get"), parse_values(4)),
    "gets_many": Command(_keys(b"gets"), parse_values(5)),
    "meta_many": Command(_meta_many, parse_meta),
    "set": Command(_storage(b"set"), _parse_stored),
    "add": Command(_storage(b"add"), line_parser(_STORED)),
    "replace": Command(_storage(b"replace"), line_parser(_STORED)),
    "cas": Command(_cas, line_parser(_CAS)),
    "set_many": Command(_set_many, _parse_set_many),
    "delete": Command(_key(b"delete"), line_parser(_DELETED)),
    "touch": Command(_touch, line_parser(_TOUCHED)),
    "touch_flags": Command(_touch_flags, _parse_touch_flags),
    "incr": Command(_arith(b"incr"), parse_number),
    "decr": Command(_arith(b"decr"), parse_number),
    "stats": Command(_stats, parse_stats),
    "version": Command(lambda: b"version\r\n", parse_version),
    "flush_all": Command(_flush_all, _parse_ok),
    "cache_memlimit": Command(_cache_memlimit, _parse_ok),
    "raw": Command(_raw, _parse_raw),
    "shutdown": Command(_shutdown, _parse_shutdown),
}
COMMANDS["batch"] = Command(build_batch, batch_parser)
