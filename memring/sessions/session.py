"""The session object: an id, two timestamps and a dict of JSON-able attributes."""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator, MutableMapping
from typing import Any

__all__ = ["SESSION_ID_BYTES", "SESSION_ID_PATTERN", "Session", "is_valid_session_id",
           "new_session_id"]

#: Random bytes in a session id: 256 bits from :mod:`secrets`, far above the
#: 128 bits needed to make guessing a live id hopeless.
SESSION_ID_BYTES = 32
#: What every session id looks like: ``secrets.token_urlsafe(32)`` gives 43
#: characters of the URL-safe base64 alphabet. Anything else is rejected
#: before it reaches memcached.
SESSION_ID_PATTERN = re.compile(r"[A-Za-z0-9_-]{43}")


def new_session_id() -> str:
    """A fresh random session id (256 bits, URL- and cookie-safe).

    >>> is_valid_session_id(new_session_id())
    True
    """
    return secrets.token_urlsafe(SESSION_ID_BYTES)


def is_valid_session_id(sid: object) -> bool:
    """True if ``sid`` has the exact shape of an id from :func:`new_session_id`.

    >>> is_valid_session_id("a" * 43), is_valid_session_id("a b\\r\\nflush_all")
    (True, False)
    """
    return isinstance(sid, str) and SESSION_ID_PATTERN.fullmatch(sid) is not None


class Session(MutableMapping[str, Any]):
    """One user's session: ``id``, ``created_at``, ``last_accessed`` and ``data``.

    A session is a mutable mapping of ``str`` keys to JSON-able values::

        session["user_id"] = 7
        session.get("cart", [])

    Setting, deleting or clearing an attribute marks the session
    ``modified``. Changing a value in place (``session["cart"].append(x)``)
    can't be seen: set ``session.modified = True`` after doing that.

    Timestamps are Unix times in seconds. ``is_new`` is True until the
    session has been stored for the first time.

    For the WSGI middleware, :meth:`invalidate` ends the session (it is
    deleted from the store and the cookie is cleared) and
    :meth:`cycle_id` gives it a new id when the response is sent (call it
    right after a login, against session fixation).
    """

    __slots__ = ("_data", "_sid", "created_at", "cycle_requested", "invalidated",
                 "is_new", "last_accessed", "modified")

    def __init__(
        self,
        sid: str,
        data: dict[str, Any] | None = None,
        *,
        created_at: float,
        last_accessed: float | None = None,
        is_new: bool = True,
    ) -> None:
        if not is_valid_session_id(sid):
            raise ValueError("invalid session id (expected 43 URL-safe base64 characters)")
        self._sid = sid
        self._data: dict[str, Any] = {}
        for key, value in (data or {}).items():
            self._data[_check_key(key)] = value
        self.created_at = float(created_at)
        self.last_accessed = float(created_at if last_accessed is None else last_accessed)
        self.is_new = is_new
        self.modified = False
        self.invalidated = False
        self.cycle_requested = False

    @property
    def id(self) -> str:
        """The session id (what the cookie carries)."""
        return self._sid

    @property
    def data(self) -> dict[str, Any]:
        """The attributes, as the dict itself (changes to it are not tracked)."""
        return self._data

    def __getitem__(self, key: str) -> Any:
        return self._data[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[_check_key(key)] = value
        self.modified = True

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        self.modified = True

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        """Remove every attribute (the session itself lives on)."""
        if self._data:
            self._data.clear()
            self.modified = True

    def invalidate(self) -> None:
        """Mark the session for deletion (log out); the middleware deletes it and the cookie."""
        self._data.clear()
        self.invalidated = True
        self.modified = True

    def cycle_id(self) -> None:
        """Ask the middleware for a new id with the same data (call it after a login)."""
        self.cycle_requested = True
        self.modified = True

    def __repr__(self) -> str:
        # The id is a credential: show only a short prefix of it.
        state = " new" if self.is_new else ""
        return f"<Session {self._sid[:6]}...{state} keys={sorted(self._data)!r}>"


def _check_key(key: object) -> str:
    if not isinstance(key, str):
        raise TypeError(f"session attribute names must be str (JSON object keys), "
                        f"got {type(key).__name__}")
    return key
