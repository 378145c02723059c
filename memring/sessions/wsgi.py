"""A WSGI middleware that gives every request a session from a :class:`SessionStore`."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from memring.errors import ConfigError
from memring.sessions.session import Session, is_valid_session_id
from memring.sessions.store import SessionStore

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ENVIRON_KEY", "SessionMiddleware"]

#: Where the middleware puts the request's :class:`Session` in the WSGI environ.
ENVIRON_KEY = "memring.session"

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 6265 cookie-name
_SAMESITE = {"lax": "Lax", "strict": "Strict", "none": "None"}
_EXPIRED = "Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT"


class SessionMiddleware:
    """Load the request's session into ``environ["memring.session"]``; save it after.

    >>> app = SessionMiddleware(app, SessionStore(memring.Client(servers)))  # doctest: +SKIP

    The application reads and writes the :class:`Session` like a dict::

        session = environ["memring.session"]
        session["user_id"] = 7      # marks it modified: saved, cookie set
        session.cycle_id()          # after a login: new id, same data
        session.invalidate()        # logout: deleted, cookie cleared

    A request without a (valid, live) session cookie gets a new, unsaved
    session; it is stored, and the cookie sent, only if the application
    puts something in it. Sessions are saved when the application calls
    ``start_response`` (the cookie has to go out with the headers), so
    changes made while the body is produced are not saved. The
    application may also replace ``environ["memring.session"]`` with a
    session it got from the store (say, from :meth:`SessionStore.regenerate`);
    the cookie follows it.

    The cookie carries only the id, with ``HttpOnly``, ``Secure`` and
    ``SameSite=Lax`` by default, and no ``Max-Age`` (it ends with the
    browser session; the store's ``ttl`` ends the session itself).
    ``secure=False`` is for plain-HTTP development only. ``samesite`` is
    ``"Lax"``, ``"Strict"``, ``"None"`` (needs ``secure=True``) or None to
    leave the attribute out.
    """

    def __init__(
        self,
        app: WSGIApplication,
        store: SessionStore,
        *,
        cookie_name: str = "sid",
        secure: bool = True,
        httponly: bool = True,
        samesite: str | None = "Lax",
        path: str = "/",
        domain: str | None = None,
    ) -> None:
        if not isinstance(store, SessionStore):
            raise ConfigError(f"store must be a SessionStore, got {type(store).__name__}")
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
        self.app = app
        self.store = store
        self.cookie_name = cookie_name
        attrs = [f"Path={path}"]
        if domain:
            attrs.append(f"Domain={domain}")
        if secure:
            attrs.append("Secure")
        if httponly:
            attrs.append("HttpOnly")
        if samesite is not None:
            attrs.append(f"SameSite={samesite}")
        self._attributes = "; ".join(attrs)

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        cookie_sid = self._cookie_sid(environ)
        session = self.store.load(cookie_sid) if cookie_sid is not None else None
        had_cookie = cookie_sid is not None or self._has_cookie(environ)
        environ[ENVIRON_KEY] = session if session is not None else self.store.new()
        extra: list[tuple[str, str]] | None = None

        def session_start_response(status: str, headers: list[tuple[str, str]],
                                   exc_info: OptExcInfo | None = None) -> Any:
            nonlocal extra
            if extra is None:  # a second call (with exc_info) reuses the first decision
                extra = self._commit(environ, cookie_sid, had_cookie)
            return start_response(status, list(headers) + extra, exc_info)

        return self.app(environ, session_start_response)

    # -- helpers -------------------------------------------------------------
    def _commit(self, environ: WSGIEnvironment, cookie_sid: str | None,
                had_cookie: bool) -> list[tuple[str, str]]:
        """Save, delete or regenerate the session; the Set-Cookie headers to send."""
        session = environ.get(ENVIRON_KEY)
        if not isinstance(session, Session):
            raise TypeError(f"environ[{ENVIRON_KEY!r}] must be a memring Session, "
                            f"got {type(session).__name__}")
        if session.invalidated:
            if not session.is_new:
                self.store.delete(session.id)
            if cookie_sid is not None and cookie_sid != session.id:
                self.store.delete(cookie_sid)
            return [self._clear()] if had_cookie else []
        if session.cycle_requested:
            session = self.store.regenerate(session)
            environ[ENVIRON_KEY] = session
            return [self._set(session.id)]
        if session.modified and not self.store.save(session):
            return [self._clear()] if had_cookie else []  # expired or deleted meanwhile
        if not session.is_new and session.id != cookie_sid:
            return [self._set(session.id)]
        if session.is_new and had_cookie:
            return [self._clear()]  # a stale or forged cookie: drop it
        return []

    def _set(self, sid: str) -> tuple[str, str]:
        return ("Set-Cookie", f"{self.cookie_name}={sid}; {self._attributes}")

    def _clear(self) -> tuple[str, str]:
        return ("Set-Cookie", f"{self.cookie_name}=; {_EXPIRED}; {self._attributes}")

    def _cookies(self, environ: WSGIEnvironment) -> list[str]:
        header = environ.get("HTTP_COOKIE", "")
        if not isinstance(header, str):
            return []
        values = []
        for part in header.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name.strip() == self.cookie_name:
                values.append(value.strip().strip('"'))
        return values

    def _cookie_sid(self, environ: WSGIEnvironment) -> str | None:
        """The first well-formed session id among the request's cookies of our name."""
        for value in self._cookies(environ):
            if is_valid_session_id(value):
                return value
        return None

    def _has_cookie(self, environ: WSGIEnvironment) -> bool:
        return bool(self._cookies(environ))


def _bad_attribute(value: str) -> bool:
    return any(c in value for c in ";,") or any(ord(c) < 0x21 or ord(c) == 0x7F for c in value)
