"""A WSGI middleware that gives every request a session from a :class:`SessionStore`."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from memring.errors import ConfigError
from memring.sessions.cookies import SessionCookie
from memring.sessions.store import SessionStore

if TYPE_CHECKING:
    from _typeshed import OptExcInfo
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

__all__ = ["ENVIRON_KEY", "SessionMiddleware"]

#: Where the middleware puts the request's :class:`Session` in the WSGI environ.
ENVIRON_KEY = "memring.session"


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
        self.cookie = SessionCookie(cookie_name=cookie_name, secure=secure, httponly=httponly,
                                    samesite=samesite, path=path, domain=domain)
        self.app = app
        self.store = store
        self.cookie_name = cookie_name

    def __call__(self, environ: WSGIEnvironment,
                 start_response: StartResponse) -> Iterable[bytes]:
        cookie_sid, had_cookie = self.cookie.sid(environ.get("HTTP_COOKIE", ""))
        session = self.store.load(cookie_sid) if cookie_sid is not None else None
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
        steps = self.cookie.commit(environ.get(ENVIRON_KEY), cookie_sid, had_cookie,
                                   f"environ[{ENVIRON_KEY!r}]")
        try:
            method, arg = next(steps)
            while True:
                method, arg = steps.send(getattr(self.store, method)(arg))
        except StopIteration as stop:
            session, headers = stop.value
        environ[ENVIRON_KEY] = session
        out: list[tuple[str, str]] = headers
        return out
