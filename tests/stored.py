"""What memring stored, seen through a plain pymemcache client with the raw serde."""

from __future__ import annotations

import time

from memring.engine.versions import Stored, decode

__all__ = ["plain", "stored", "ttl"]


def stored(raw: tuple[bytes, int]) -> Stored:
    """A raw ``(bytes, flags)`` item, decoded: kind, version, value, expiry, copy or not."""
    return decode(raw, time.time())


def plain(raw: tuple[bytes, int] | None) -> tuple[bytes, int] | None:
    """The value's bytes and serde flags, without memring's version trailer."""
    return None if raw is None else stored(raw).item


def ttl(address: tuple[str, int], key: str | bytes) -> int | None:
    """The seconds ``key`` has left on the memcached at ``address`` (-1: never; None: a miss)."""
    import socket

    kb = key.encode() if isinstance(key, str) else key
    with socket.create_connection(address, timeout=2) as sock:
        sock.sendall(b"mg %s t\r\n" % kb)
        reply = b""
        while not reply.endswith(b"\r\n"):
            chunk = sock.recv(256)
            if not chunk:
                break
            reply += chunk
    if reply.startswith(b"EN"):
        return None
    assert reply.startswith(b"HD t"), reply
    return int(reply[4:].strip())
