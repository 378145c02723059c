"""The session cookie, for both middlewares (WSGI and ASGI).

:class:`SessionCookie` checks the cookie's attributes once, reads the
session id from a ``Cookie`` header, and decides at the end of a request
what to do with the session and what ``Set-Cookie`` to send
(:meth:`SessionCookie.commit`). That decision calls the store (save,
delete, regenerate), so it is written as a generator of store calls, which
each middleware makes on its own store: a :class:`~memring.sessions.SessionStore`
for WSGI, an :class:`~memring.sessions.AsyncSessionStore` for ASGI.
"""

from __future__ import annotations

import re
from collections.abc import Generator
from typing import Any

from memring.errors import ConfigError
from memring.sessions.session import Session, is_valid_session_id

__all__ = ["SessionCookie", "StoreCall"]

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 6265 cookie-name
_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}
_EXPIRED = "Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"

#: A call of a session store: its method name and argument.
StoreCall = tuple[str, Any]
Header = tuple[str, str]


class SessionCookie:
    """The session cookie's name and attributes, checked once (see the middlewares)."""

    def __init__(self, *, cookie_name: str = "sid", secure: bool = True, httponly: bool = True,
                 samesite: str | None = "Lax", path: str = "/",
                 domain: str | None = None) -> None:
        if not isinstance(cookie_name, str) or not _TOKEN.fullmatch(cookie_name):
            raise ConfigError(f"cookie_name {cookie_name!r} is not a valid cookie name")
        if samesite is not None:
            if not isinstance(samesite, str) or samesite.lower() not in _SAMESITE:
                raise ConfigError(f"samesite must be 'Lax', 'Strict', 'None' or None, "
                                  f"got {samesite!r}")
            samesite = _SAMESITE[samesite.lower()]
            if samesite == "None" and not secure:
                raise ConfigError("SameSite=None needs secure=True (browsers reject it otherwise)")
        for name, value in (("path", path), ("domain", domain)):
            if value is not None and (not isinstance(value, str) or _bad_attribute(value)):
                raise ConfigError(f"{name} {value!r} can't go in a cookie attribute")
        if not path.startswith("/"):
            raise ConfigError(f"path must start with '/', got {path!r}")
        self.name = cookie_name
        attrs = [f"Path={path}"]
        if domain:
            attrs.append(f"Domain={domain}")
        if secure:
            attrs.append("Secure")
        if httponly:
            attrs.append("HttpOnly")
        if samesite is not None:
            attrs.append(f"SameSite={samesite}")
        self.attributes = "; ".join(attrs)

    # -- reading the request's cookies -------------------------------------------
    def values(self, header: object) -> list[str]:
        """The values of every cookie of our name in a ``Cookie`` header."""
        if not isinstance(header, str):
            return []
        values = []
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name.strip() == self.name:
                values.append(value.strip().strip('"'))
        return values

    def sid(self, header: object) -> tuple[str | None, bool]:
        """The first well-formed session id among them, and whether there was any cookie."""
        values = self.values(header)
        return next((v for v in values if is_valid_session_id(v)), None), bool(values)

    # -- the response ------------------------------------------------------------
    def set(self, sid: str) -> Header:
        return ("Set-Cookie", f"{self.name}={sid}; {self.attributes}")

    def clear(self) -> Header:
        return ("Set-Cookie", f"{self.name}=; {_EXPIRED}; {self.attributes}")

    def commit(self, session: Any, cookie_sid: str | None, had_cookie: bool, where: str
               ) -> Generator[StoreCall, Any, tuple[Session, list[Header]]]:
        """Save, delete or regenerate the request's session (yields the store calls);
        returns the session the request ends with and the headers to send."""
        if not isinstance(session, Session):
            raise TypeError(f"{where} must be a memring Session, got {type(session).__name__}")
        if session.invalidated:
            if not session.is_new:
                yield ("delete", session.id)
            if cookie_sid is not None and cookie_sid != session.id:
                yield ("delete", cookie_sid)
            return session, [self.clear()] if had_cookie else []
        if session.cycle_requested:
            session = yield ("regenerate", session)
            return session, [self.set(session.id)]
        if session.modified and not (yield ("save", session)):
            return session, [self.clear()] if had_cookie else []  # expired or deleted meanwhile
        if not session.is_new and session.id != cookie_sid:
            return session, [self.set(session.id)]
        if session.is_new and had_cookie:
            return session, [self.clear()]  # a stale or forged cookie: drop it
        return session, []


def _bad_attribute(value: str) -> bool:
    return any(c in value for c in ";,") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value)
