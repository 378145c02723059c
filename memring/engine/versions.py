"""Versions: a hybrid logical clock, and the stored format that carries a version.

Every value memring writes carries a *version*: a 64-bit hybrid logical
clock reading (HLC: Kulkarni et al., "Logical Physical Clocks", 2014), the
wall clock's milliseconds in the top 48 bits and a counter in the low 16.
A process reads its clock for every write; it also moves its clock past
every version it reads, so a write made after reading a value is always
newer than that value, even when this machine's wall clock is behind the
writer's. Whoever moves, repairs or merges copies of a key keeps the newer
version (Dynamo's last-writer-wins), so no acknowledged write is ever
replaced by an older one, however differently clients saw the nodes.

Stored format (:func:`encode`): the value's bytes, then a 12-byte trailer
(the version, and the absolute expiry the writer gave it, 0 for never);
flags are the serde's flags with :data:`FLAG_VERSIONED`, plus
:data:`FLAG_TOMBSTONE` for a delete, plus :data:`FLAG_COPY` for a copy kept
on a node that is not the key's owner (its life there is capped; the
trailer's expiry is its real one). In backup mode a copy also says which of
the key's two home nodes it stands in for (:data:`FLAG_FOR_PRIMARY`,
:data:`FLAG_FOR_BACKUP`): the writer could not reach that one, and wrote the
other one too. A value without :data:`FLAG_VERSIONED`
(written by another client, or by an older memring) reads as version 0:
older than any memring write.

A plain memcached client (pymemcache, PHP's extension) reading memring's
values therefore sees 12 extra bytes at the end and flags with bit 27 set;
memring reads theirs as they are.
"""

from __future__ import annotations

import enum
import logging
import math
import struct
import threading
import time
from collections.abc import Callable
from typing import NamedTuple

__all__ = [
    "FLAG_COPY", "FLAG_FOR_BACKUP", "FLAG_FOR_PRIMARY", "FLAG_TOMBSTONE", "FLAG_VERSIONED",
    "MARKER_FLAGS", "MAX_AHEAD_MS",
    "TRAILER_SIZE", "USER_FLAGS", "VERSION_AT", "pack_trailer",
    "HybridClock", "Kind", "Stored", "absolute_expiry", "clock", "decode", "encode",
    "expiry_from_ttl", "newest", "relative_expiry", "tombstone", "version_ms",
]

log = logging.getLogger("memring")

FLAG_TOMBSTONE = 1 << 24
FLAG_COPY = 1 << 26
FLAG_VERSIONED = 1 << 27
#: A copy kept while the key's first (primary) home node was out of reach.
FLAG_FOR_PRIMARY = 1 << 28
#: A copy kept while the key's second (backup) home node was out of reach.
FLAG_FOR_BACKUP = 1 << 29
_FOR_BITS = FLAG_FOR_PRIMARY | FLAG_FOR_BACKUP
#: The flag bits a plain value never has (memring reserves bits 24-31 of the flags).
MARKER_FLAGS = FLAG_TOMBSTONE | FLAG_COPY | FLAG_VERSIONED
#: The flag bits that belong to the serde.
USER_FLAGS = (1 << 24) - 1

_TRAILER = struct.Struct(">QI")
TRAILER_SIZE = _TRAILER.size
_unpack_trailer = _TRAILER.unpack_from
_pack_trailer = _TRAILER.pack
#: The version at the start of a trailer: ``VERSION_AT(data, len(data) - TRAILER_SIZE)[0]``.
VERSION_AT = struct.Struct(">Q").unpack_from
#: A stored value's trailer: ``pack_trailer(version, absolute expiry)``.
pack_trailer = _pack_trailer
_EXPIRY_MAX = (1 << 32) - 1

#: A version's counter bits: 65,536 writes per millisecond per process.
_LOGICAL_BITS = 16
#: Versions this far ahead of the wall clock are logged: another machine's
#: clock is off, and the versions of writes made here follow it.
_AHEAD_WARNING_MS = 5_000
#: A version further ahead of the wall clock than this is refused: no clock is
#: a day off, and observing it would carry every later write of this process
#: that far into the future, where it would outrank every honest write.
MAX_AHEAD_MS = 24 * 3600 * 1000


def version_ms(version: int) -> int:
    """The wall-clock milliseconds a version was made at."""
    return version >> _LOGICAL_BITS


class HybridClock:
    """A hybrid logical clock. Thread-safe; :func:`clock` is the process's one instance.

    >>> c = HybridClock(lambda: 1_000)
    >>> c.now(), c.now()
    (65536000, 65536001)
    >>> c.observe(70_000_000 << 16)
    >>> c.now() > 70_000_000 << 16
    True
    """

    __slots__ = ("_lock", "_ms", "_warned", "last")

    def __init__(self, wall_ms: Callable[[], int] | None = None) -> None:
        self._ms = wall_ms
        #: The newest version made or observed (read it freely; only the clock writes it).
        self.last = 0
        self._lock = threading.Lock()
        self._warned = False

    def now(self) -> int:
        """A new version, greater than every version made or observed before."""
        ms = self._ms
        wall = (time.time_ns() // 1_000_000 if ms is None else ms()) << _LOGICAL_BITS
        lock = self._lock
        lock.acquire()
        last = self.last
        version = wall if wall > last else last + 1
        self.last = version
        lock.release()
        return version

    def observe(self, version: int) -> None:
        """Move past ``version`` (one read from a node), so later writes are newer.

        Raises ``ValueError`` for a version more than :data:`MAX_AHEAD_MS`
        ahead of this machine's clock (a corrupt or hostile item), and does
        not move.
        """
        if version <= self.last:
            return
        if version_ms(version) - self.wall_ms() > MAX_AHEAD_MS:
            raise ValueError(f"its version is {(version_ms(version) - self.wall_ms()) / 3.6e6:.0f}"
                             " hours ahead of this machine's clock")
        with self._lock:
            if version > self.last:
                self.last = version
        if not self._warned and version_ms(version) - self.wall_ms() > _AHEAD_WARNING_MS:
            self._warned = True
            log.warning("a value's version is %.1f s ahead of this machine's clock: keep "
                        "the app servers' clocks in step (NTP)",
                        (version_ms(version) - self.wall_ms()) / 1000)

    def wall_ms(self) -> int:
        return time.time_ns() // 1_000_000 if self._ms is None else int(self._ms())

    def _after_fork(self) -> None:
        """A lock another thread held at fork time is held for ever in the child."""
        self._lock = threading.Lock()


_clock = HybridClock()


def clock() -> HybridClock:
    """This process's clock: one for every client, so their versions are ordered too."""
    return _clock


class Kind(enum.Enum):
    VALUE = 1
    TOMBSTONE = 2


class Stored(NamedTuple):
    """One stored item, decoded."""

    kind: Kind
    version: int
    #: The value's bytes and serde flags (empty for a tombstone).
    item: tuple[bytes, int]
    #: Absolute expiry in Unix seconds as the writer set it (0: never, or unknown).
    expiry: int
    #: Kept on a node that does not own the key, with a capped life.
    copy: bool
    #: A copy's :data:`FLAG_FOR_PRIMARY` / :data:`FLAG_FOR_BACKUP` bits (0: not known).
    stands_for: int = 0


_EMPTY = (b"", 0)


def encode(item: tuple[bytes, int], version: int, expiry: int, copy: bool = False,
           stands_for: int = 0) -> tuple[bytes, int]:
    """The stored form of ``item`` (``(bytes, serde flags)``) at ``version``;
    ``stands_for``: a copy's ``FLAG_FOR_*`` bits."""
    data, flags = item
    marker = FLAG_VERSIONED | FLAG_COPY | (stands_for & _FOR_BITS) if copy else FLAG_VERSIONED
    return data + _pack_trailer(version, min(max(expiry, 0), _EXPIRY_MAX)), flags | marker


def tombstone(version: int, copy: bool = False, stands_for: int = 0) -> tuple[bytes, int]:
    """The stored form of a delete made at ``version``."""
    marker = FLAG_VERSIONED | FLAG_TOMBSTONE | (
        FLAG_COPY | (stands_for & _FOR_BITS) if copy else 0)
    return _pack_trailer(version, 0), marker


def decode(raw: tuple[bytes, int], now: float) -> Stored:
    """What a stored item is. A copy whose own value has expired reads as a
    tombstone: its outage value is gone, so an older value elsewhere must not
    come back either."""
    data, flags = raw
    if not flags & FLAG_VERSIONED:
        return Stored(Kind.VALUE, 0, raw, 0, False)
    if len(data) < TRAILER_SIZE:
        raise ValueError(f"a memring item of {len(data)} bytes has no trailer")
    version, expiry = _unpack_trailer(data, len(data) - TRAILER_SIZE)
    copy = bool(flags & FLAG_COPY)
    stands_for = flags & _FOR_BITS if copy else 0
    if flags & FLAG_TOMBSTONE or (copy and expiry and expiry <= now):
        return Stored(Kind.TOMBSTONE, version, _EMPTY, 0, copy, stands_for)
    return Stored(Kind.VALUE, version, (data[:-TRAILER_SIZE], flags & USER_FLAGS), expiry, copy,
                  stands_for)


def newest(a: Stored | None, b: Stored | None) -> Stored | None:
    """The newer of two items (None: a miss). Equal versions: a tombstone wins, then
    the larger bytes, so every client merging the same two picks the same one."""
    if a is None:
        return b
    if b is None:
        return a
    if a.version != b.version:
        return a if a.version > b.version else b
    if a.kind is not b.kind:
        return a if a.kind is Kind.TOMBSTONE else b
    return a if a.item >= b.item else b


_THIRTY_DAYS = 30 * 24 * 3600


def absolute_expiry(expire: int, now: float) -> int:
    """memcached's expire argument as an absolute Unix time (0: never; past: already over)."""
    if expire == 0:
        return 0
    if expire < 0:
        return int(now) - 1
    if expire > _THIRTY_DAYS:
        return expire
    return int(now) + expire


def relative_expiry(abs_expiry: int, now: float, cap: int | None = None) -> int:
    """The expire argument to send for an absolute expiry, at most ``cap`` seconds.

    Returns -1 for an expiry already past (memcached then stores nothing).
    """
    if abs_expiry == 0:
        return cap if cap is not None else 0
    remaining = math.ceil(abs_expiry - now)
    if remaining <= 0:
        return -1
    if cap is not None:
        return min(cap, remaining)
    return remaining if remaining <= _THIRTY_DAYS else abs_expiry


def expiry_from_ttl(ttl: int, now: float) -> int:
    """An absolute expiry from memcached's remaining TTL (``mg ... t``: -1 is never)."""
    return 0 if ttl < 0 else int(now) + max(ttl, 1)
