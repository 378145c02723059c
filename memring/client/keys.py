"""Key validation: everything is checked before a byte is sent."""

from __future__ import annotations

import re

from memring.client.defaults import MAX_KEY_LENGTH
from memring.errors import InvalidKey

__all__ = ["encode_key"]

# Space, every C0 control character and DEL: any of them could end the
# command line early and let the rest of the key run as a second command.
_FORBIDDEN = re.compile(rb"[\x00-\x20\x7f]")


def encode_key(key: str | bytes, prefix: bytes = b"") -> bytes:
    """The wire form of ``key`` (prefix + UTF-8 bytes), or raise :class:`InvalidKey`.

    >>> encode_key("session:1", b"app:")
    b'app:session:1'
    >>> encode_key("a\\r\\nflush_all")
    Traceback (most recent call last):
    ...
    memring.errors.InvalidKey: key contains whitespace or a control character: 'a\\r\\nflush_all'
    """
    if isinstance(key, str):
        raw = key.encode("utf-8")
    elif isinstance(key, bytes):
        raw = key
    else:
        raise InvalidKey(f"key must be str or bytes, got {type(key).__name__}", key=key)
    if not raw:
        raise InvalidKey("key is empty", key=key)
    full = prefix + raw if prefix else raw
    if len(full) > MAX_KEY_LENGTH:
        raise InvalidKey(
            f"key is {len(full)} bytes with its prefix; memcached allows {MAX_KEY_LENGTH}",
            key=key,
        )
    if _FORBIDDEN.search(full):
        raise InvalidKey(f"key contains whitespace or a control character: {key!r}", key=key)
    return full
