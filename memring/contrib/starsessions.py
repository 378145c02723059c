"""A store for ``starsessions`` (server-side sessions for Starlette and FastAPI).

::

    from starsessions import SessionMiddleware, SessionAutoloadMiddleware
    from memring.contrib.starsessions import MemringStore

    store = MemringStore(memring.AsyncBackupClient(["10.0.0.1:11211", "10.0.0.2:11211"]))
    app.add_middleware(SessionAutoloadMiddleware)
    app.add_middleware(SessionMiddleware, store=store)

starsessions serializes the session (JSON by default) and hands the store
bytes; memring stores them as bytes, with its failover (and, with an
:class:`~memring.AsyncBackupClient`, a second copy) underneath.
"""

from __future__ import annotations

import secrets
from typing import Any

from starsessions.stores.base import SessionStore

from memring.engine.keys import encode_key
from memring.errors import ConfigError, InvalidKey

__all__ = ["MemringStore"]

#: memcached reads an expire over 30 days as a Unix time: a longer TTL is capped.
_THIRTY_DAYS = 30 * 24 * 3600


class MemringStore(SessionStore):
    """starsessions' ``SessionStore`` on an asyncio memring client.

    client
        :class:`memring.AsyncClient`, or :class:`memring.AsyncBackupClient`
        (a session survives losing any one node).
    prefix
        Prepended to the session id to make the memcached key.
    gc_ttl
        Seconds to keep a session whose cookie has no lifetime (a browser
        session cookie), as starsessions' Redis store does; at most 30 days.

    A session id that cannot be a memcached key (a forged cookie) reads as
    no session, and a write under such an id gets a new id: nothing of it is
    ever sent to memcached.
    """

    def __init__(self, client: Any, *, prefix: str = "starsessions.",
                 gc_ttl: int = _THIRTY_DAYS) -> None:
        for name in ("get", "set", "delete"):
            if not callable(getattr(client, name, None)):
                raise ConfigError(f"client has no {name}() method; pass a memring.AsyncClient")
        if isinstance(gc_ttl, bool) or not isinstance(gc_ttl, int) or not 1 <= gc_ttl <= (
                _THIRTY_DAYS):
            raise ConfigError(f"gc_ttl must be an int of seconds in 1..{_THIRTY_DAYS}")
        self.client = client
        self.prefix = prefix
        self.gc_ttl = gc_ttl

    def _key(self, session_id: str) -> bytes | None:
        """The key of ``session_id``, or None if it cannot be one."""
        try:
            return encode_key(self.prefix + session_id)
        except (InvalidKey, TypeError):
            return None

    async def read(self, session_id: str, lifetime: int) -> bytes:
        key = self._key(session_id)
        if key is None:
            return b""
        value = await self.client.get(key)
        if isinstance(value, str):
            return value.encode("utf-8")
        return value if isinstance(value, bytes) else b""

    async def write(self, session_id: str, data: bytes, lifetime: int, ttl: int) -> str:
        key = self._key(session_id)
        if key is None:  # a forged id: the session gets one of ours
            session_id = secrets.token_hex(16)
            key = self._key(session_id)
            assert key is not None
        expire = self.gc_ttl if lifetime == 0 else min(max(1, int(ttl)), _THIRTY_DAYS)
        await self.client.set(key, bytes(data), expire=expire)
        return session_id

    async def remove(self, session_id: str) -> None:
        key = self._key(session_id)
        if key is not None:
            await self.client.delete(key)

    async def exists(self, session_id: str) -> bool:
        key = self._key(session_id)
        return key is not None and await self.client.get(key) is not None
