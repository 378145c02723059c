"""Web sessions in memcached: :class:`SessionStore`, :class:`Session` and a WSGI middleware.

>>> store = SessionStore(memring.BackupClient(servers), ttl=1800)  # doctest: +SKIP
>>> app = SessionMiddleware(app, store)                             # doctest: +SKIP

Session ids are 256-bit random tokens from :mod:`secrets`, checked for their
exact format before any lookup. Sessions are stored as JSON, never pickled.
With a :class:`~memring.BackupClient` a session survives losing any one node.
"""

from memring.sessions.session import Session, is_valid_session_id, new_session_id
from memring.sessions.store import SessionBackend, SessionNotFound, SessionStore
from memring.sessions.wsgi import ENVIRON_KEY, SessionMiddleware

__all__ = [
    "ENVIRON_KEY",
    "Session",
    "SessionBackend",
    "SessionMiddleware",
    "SessionNotFound",
    "SessionStore",
    "is_valid_session_id",
    "new_session_id",
]
