"""Key validation: everything is checked before a byte is sent."""

from __future__ import annotations

import re
from collections.abc import Iterable

from memring.engine.defaults import MAX_KEY_LENGTH
from memring.errors import InvalidKey, InvalidKeyType

__all__ = ["encode_key", "encode_keys"]

# Space, every C0 control character and DEL: any of them could end the
# command line early and let the rest of the key run as a second command.
_FORBIDDEN = re.compile(rb"[\x00-\x20\x7f]")


def encode_key(key: str | bytes, prefix: bytes = b"", unicode: bool = True) -> bytes:
    """The wire form of ``key`` (prefix + UTF-8 bytes), or raise :class:`InvalidKey`.

    ``prefix`` must be valid on its own (the client checks its prefix once).
    With ``unicode`` False (pymemcache's ``allow_unicode_keys=False``), a
    str key must be ASCII.

    >>> encode_key("session:1", b"app:")
    b'app:session:1'
    >>> encode_key("a\\r\\nflush_all")
    Traceback (most recent call last):
    ...
    memring.errors.InvalidKey: key contains whitespace or a control character: 'a\\r\\nflush_all'
    """
    if isinstance(key, str):
        raw = key.encode("utf-8")
        # ASCII, printable (no control character or DEL) and no space: the
        # usual key, cleared without a regex scan.
        plain = key.isascii() and key.isprintable() and " " not in key
        if not (plain or unicode or key.isascii()):
            raise InvalidKey(f"non-ASCII key {key!r}: pass allow_unicode_keys=True to "
                             "store it as UTF-8", key=key)
    elif isinstance(key, bytes):
        raw = key
        plain = False
    else:
        raise InvalidKeyType(f"key must be str or bytes, got {type(key).__name__}", key=key)
    if not raw:
        raise InvalidKey("key is empty", key=key)
    full = prefix + raw if prefix else raw
    if len(full) > MAX_KEY_LENGTH:
        raise InvalidKey(
            f"key is {len(full)} bytes with its prefix; memcached allows {MAX_KEY_LENGTH}",
            key=key,
        )
    if not plain and _FORBIDDEN.search(raw):
        raise InvalidKey(f"key contains whitespace or a control character: {key!r}", key=key)
    return full


def encode_keys(keys: Iterable[str | bytes], prefix: bytes = b"", unicode: bool = True
                ) -> dict[bytes, str | bytes]:
    """``{wire form: key}`` for many keys, checked as :func:`encode_key` checks one.

    One scan of all the keys for forbidden bytes instead of one per key (a
    forbidden byte is a single byte, so joining keys cannot make or hide one).
    ``prefix`` must be valid on its own; ``unicode`` as for :func:`encode_key`.
    Raises :class:`InvalidKey` for the first bad key, and
    :class:`InvalidKeyType` if ``keys`` is a single key or not a collection at
    all.

    >>> encode_keys(["a", b"b"], b"p:")
    {b'p:a': 'a', b'p:b': b'b'}
    """
    if isinstance(keys, (str, bytes)) or not isinstance(keys, Iterable):
        what = "a single key" if isinstance(keys, (str, bytes)) else type(keys).__name__
        raise InvalidKeyType(f"keys must be an iterable of keys, not {what}", key=keys)
    out: dict[bytes, str | bytes] = {}
    longest = MAX_KEY_LENGTH - len(prefix)
    for key in keys:
        raw = key.encode("utf-8") if isinstance(key, str) else key
        if not isinstance(raw, bytes) or not raw or len(raw) > longest or (
                not unicode and len(raw) != len(key)):
            encode_key(key, prefix, unicode)  # raises the precise error
        out[prefix + raw if prefix else raw] = key
    if _FORBIDDEN.search(b"".join(out)):
        for key in out.values():
            encode_key(key, prefix)  # raises for the first bad key
    return out
