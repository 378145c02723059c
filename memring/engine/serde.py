"""Serialization, in pymemcache's serde protocol (``serialize``/``deserialize``).

The default, :data:`safe_serde`, stores bytes, str, int and JSON-able data
and never unpickles: a value read from a shared cache can't run code. Pass
``serde=pymemcache.serde.pickle_serde`` to opt into pickle.

Flags are compatible with pymemcache's for bytes, text and integers (so
pymemcache clients read memring's values and the other way round); JSON
uses flag bit 5. Bits 24 and up are reserved for memring's own markers
(tombstones and failover copies, see :mod:`memring.client.client`).
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from pymemcache.serde import FLAG_BYTES, FLAG_INTEGER, FLAG_LONG, FLAG_PICKLE, FLAG_TEXT

from memring.errors import SerializationError

__all__ = ["FLAG_JSON", "RESERVED_FLAGS", "SafeSerde", "Serde", "safe_serde"]

FLAG_JSON = 1 << 5
#: Flag bits memring keeps for itself; a serde must not use them.
RESERVED_FLAGS = 0xFF000000


class Serde(Protocol):
    def serialize(self, key: bytes, value: Any) -> tuple[bytes, int]: ...

    def deserialize(self, key: bytes, value: bytes, flags: int) -> Any: ...


class SafeSerde:
    """bytes, str, int and JSON data; never pickle.

    >>> s = SafeSerde()
    >>> s.serialize(b"k", {"user": 7})
    (b'{"user":7}', 32)
    >>> s.deserialize(b"k", *s.serialize(b"k", {"user": 7}))
    {'user': 7}
    """

    def serialize(self, key: bytes, value: Any) -> tuple[bytes, int]:
        if isinstance(value, bytes):
            return value, FLAG_BYTES
        if isinstance(value, str):
            return value.encode("utf-8"), FLAG_TEXT
        if isinstance(value, int) and not isinstance(value, bool):
            return str(value).encode("ascii"), FLAG_INTEGER
        try:
            return json.dumps(value, separators=(",", ":"), allow_nan=False).encode(), FLAG_JSON
        except (TypeError, ValueError) as exc:
            raise SerializationError(
                f"cannot store {type(value).__name__} with the safe serde (bytes, str, int, "
                f"JSON data); pass serde=pymemcache.serde.pickle_serde to allow pickle"
            ) from exc

    def deserialize(self, key: bytes, value: bytes, flags: int) -> Any:
        if flags == FLAG_BYTES:
            return value
        if flags & FLAG_TEXT:
            return value.decode("utf-8")
        if flags & (FLAG_INTEGER | FLAG_LONG):
            return int(value)
        if flags & FLAG_JSON:
            return json.loads(value)
        if flags & FLAG_PICKLE:
            raise SerializationError(
                f"value of {key!r} was pickled; the safe serde refuses to unpickle it "
                "(pass serde=pymemcache.serde.pickle_serde if you trust every writer)"
            )
        return value


safe_serde = SafeSerde()
