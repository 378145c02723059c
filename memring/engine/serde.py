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

import codecs
import json
from typing import Any, Protocol

from pymemcache.serde import FLAG_BYTES, FLAG_INTEGER, FLAG_LONG, FLAG_PICKLE, FLAG_TEXT

from memring.errors import ConfigError, SerializationError

__all__ = ["FLAG_JSON", "RESERVED_FLAGS", "SafeSerde", "Serde", "safe_serde"]

FLAG_JSON = 1 << 5
#: Flag bits memring keeps for itself; a serde must not use them.
RESERVED_FLAGS = 0xFF000000


class Serde(Protocol):
    def serialize(self, key: bytes, value: Any) -> tuple[bytes, int]: ...

    def deserialize(self, key: bytes, value: bytes, flags: int) -> Any: ...


class SafeSerde:
    """bytes, str, int and JSON data; never pickle.

    ``encoding`` is how a str value becomes bytes (UTF-8 by default). A
    client made without a serde uses ``SafeSerde(encoding=<its encoding>)``,
    pymemcache's ``"ascii"`` unless it says otherwise, so a non-ASCII str
    raises :class:`~memring.SerializationError` there, as in pymemcache.
    Text is read back as UTF-8 when the encoding is ASCII (its superset:
    another client may have written UTF-8), else in the encoding.

    >>> s = SafeSerde()
    >>> s.serialize(b"k", {"user": 7})
    (b'{"user":7}', 32)
    >>> s.deserialize(b"k", *s.serialize(b"k", {"user": 7}))
    {'user': 7}
    """

    def __init__(self, encoding: str = "utf-8") -> None:
        try:
            self.encoding = codecs.lookup(encoding).name
        except (LookupError, TypeError):
            raise ConfigError(f"unknown encoding {encoding!r}") from None
        self._decoding = "utf-8" if self.encoding == "ascii" else self.encoding

    def __repr__(self) -> str:
        return f"SafeSerde(encoding={self.encoding!r})"

    def serialize(self, key: bytes, value: Any) -> tuple[bytes, int]:
        if isinstance(value, bytes):
            return value, FLAG_BYTES
        if isinstance(value, str):
            try:
                return value.encode(self.encoding), FLAG_TEXT
            except UnicodeEncodeError as exc:
                raise SerializationError(
                    f"str value is not {self.encoding}-encodable ({exc.reason} at "
                    f"{exc.start}): pass encoding='utf-8' to store any text") from exc
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
            return value.decode(self._decoding)
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
