"""How failover copies, tombstones and "settled" markers are stored.

While a key's home node is down, the key lives on its failover node as a
*copy*: the value's bytes followed by 8 bytes holding the original absolute
expiry, flagged ``FLAG_COPY | original_flags``. A delete made then leaves a
*tombstone* (empty, ``FLAG_TOMBSTONE``). When a returning node has taken a
copy home, the copy is replaced (by CAS) with a *settled* marker
(``FLAG_SETTLED``), meaning "the home node is authoritative again".

All three use flag bits 24..26, which no serde may use, and all of them
live at most ``failover_ttl`` seconds after their home node returns: while
it is down, the client that wrote them keeps them alive (``touch``) so that
an outage longer than ``failover_ttl`` loses none of them.
"""

from __future__ import annotations

import enum
import math
import struct

from memring.client.transport import Item

__all__ = [
    "FLAG_COPY", "FLAG_SETTLED", "FLAG_TOMBSTONE", "HOME_TOMBSTONE_TTL", "MARKER_FLAGS", "SETTLED",
    "TOMBSTONE",
    "Kind", "absolute_expiry", "copy_expiry", "decode", "encode_copy", "relative_expiry",
]

FLAG_TOMBSTONE = 1 << 24
FLAG_SETTLED = 1 << 25
FLAG_COPY = 1 << 26
MARKER_FLAGS = FLAG_TOMBSTONE | FLAG_SETTLED | FLAG_COPY

TOMBSTONE: Item = (b"", FLAG_TOMBSTONE)
#: Life of a tombstone that settling puts on a home node in place of a value
#: deleted during the outage. It only has to hide that value: once it is
#: gone, the key is simply missing, which is what a delete leaves.
HOME_TOMBSTONE_TTL = 2
SETTLED: Item = (b"", FLAG_SETTLED)

_EXPIRY = struct.Struct(">q")
_THIRTY_DAYS = 30 * 24 * 3600


class Kind(enum.Enum):
    VALUE = 1       # a plain value, or a copy (decoded)
    TOMBSTONE = 2   # deleted while the home node was down
    SETTLED = 3     # the home node is authoritative


def encode_copy(item: Item, abs_expiry: int) -> Item:
    data, flags = item
    return (data + _EXPIRY.pack(abs_expiry), flags | FLAG_COPY)


def decode(item: Item, now: float) -> tuple[Kind, Item, int]:
    """Classify a stored item: ``(kind, plain item, absolute expiry or 0)``.

    An expired copy reads as a tombstone: its outage value is gone, so the
    home node's older value must not come back either.
    """
    data, flags = item
    if not flags & MARKER_FLAGS:
        return Kind.VALUE, item, 0
    if flags & FLAG_TOMBSTONE:
        return Kind.TOMBSTONE, TOMBSTONE, 0
    if flags & FLAG_SETTLED:
        return Kind.SETTLED, SETTLED, 0
    (expiry,) = _EXPIRY.unpack(data[-8:])
    if expiry and expiry <= now:
        return Kind.TOMBSTONE, TOMBSTONE, 0
    return Kind.VALUE, (data[:-8], flags & ~FLAG_COPY), expiry


def absolute_expiry(expire: int, now: float) -> int:
    """memcached's expire argument as an absolute Unix time (0 = never)."""
    if expire == 0:
        return 0
    if expire < 0:
        return int(now) - 1
    if expire > _THIRTY_DAYS:
        return expire
    return int(now) + expire


def copy_expiry(abs_expiry: int, now: float, cap: int) -> int:
    """The expire argument for a failover copy: ``cap``, or -1 if its value has expired.

    A copy is kept for ``cap`` seconds even when its value expires sooner:
    read after its value's expiry it is a tombstone, so the home node's older
    value cannot come back once the newer value has expired.
    """
    if abs_expiry and math.ceil(abs_expiry - now) <= 0:
        return -1
    return cap


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
