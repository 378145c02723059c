"""Flask-Session support: ``FlaskSessionClient``, a guard for malformed session cookies.

Flask-Session's memcached backend works with :class:`memring.Client` and
:class:`memring.BackupClient` as they are (it calls ``get``,
``set(key, value, timeout)`` and ``delete``). One gap: it looks up whatever
the session cookie holds, so a request with a malformed cookie (over 250
bytes, or holding a space or control character) makes memring raise
:class:`~memring.InvalidKey` — as pymemcache would — and the request fails
with a 500. Wrap the client to read such a cookie as "no session"::

    app.config.update(
        SESSION_TYPE="memcached",
        SESSION_MEMCACHED=FlaskSessionClient(memring.BackupClient(servers)),
    )
    flask_session.Session(app)

This module does not import Flask.
"""

from __future__ import annotations

from typing import Any

from memring.client import Client
from memring.errors import InvalidKey

__all__ = ["FlaskSessionClient"]


class FlaskSessionClient:
    """The three calls Flask-Session makes, with an invalid key read as a miss.

    ``get`` and ``delete`` of a key memcached could never hold return None
    and False without sending anything. ``set`` is unchanged: Flask-Session
    only writes ids it generated itself, so an invalid key there is a bug
    and still raises. Every other attribute is the wrapped client's.
    """

    def __init__(self, client: Client) -> None:
        self.client = client

    def get(self, key: str, default: Any = None) -> Any:
        try:
            return self.client.get(key, default)
        except InvalidKey:
            return default

    def set(self, key: str, value: Any, expire: int = 0, noreply: bool | None = None) -> bool:
        return self.client.set(key, value, expire, noreply)

    def delete(self, key: str, noreply: bool | None = None) -> bool:
        try:
            return self.client.delete(key, noreply)
        except InvalidKey:
            return False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.client, name)

    def __repr__(self) -> str:
        return f"FlaskSessionClient({self.client!r})"
