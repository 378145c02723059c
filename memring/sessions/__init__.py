"""Web sessions in memcached: stores, :class:`Session`, WSGI and ASGI middleware.

>>> store = SessionStore(memring.BackupClient(servers), ttl=1800)  # doctest: +SKIP
>>> app = SessionMiddleware(app, store)                             # doctest: +SKIP

>>> store = AsyncSessionStore(memring.AsyncBackupClient(servers))   # doctest: +SKIP
>>> app = ASGISessionMiddleware(app, store)                          # doctest: +SKIP

Session ids are 256-bit random tokens from :mod:`secrets`, checked for their
exact format before any lookup. Sessions are stored as JSON, never pickled.
With a :class:`~memring.BackupClient` a session survives losing any one node.
"""

from memring.sessions.asgi import SCOPE_KEY, ASGISessionMiddleware
from memring.sessions.session import Session, is_valid_session_id, new_session_id
from memring.sessions.store import (
    AsyncSessionStore,
    SessionBackend,
    SessionNotFound,
    SessionStore,
)
from memring.sessions.wsgi import ENVIRON_KEY, SessionMiddleware

__all__ = [
    "ASGISessionMiddleware",
    "AsyncSessionStore",
    "ENVIRON_KEY",
    "SCOPE_KEY",
    "Session",
    "SessionBackend",
    "SessionMiddleware",
    "SessionNotFound",
    "SessionStore",
    "is_valid_session_id",
    "new_session_id",
]
