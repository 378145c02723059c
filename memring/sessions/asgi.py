"""An ASGI middleware that gives every request a session from an :class:`AsyncSessionStore`.

The ASGI twin of :class:`~memring.sessions.SessionMiddleware`: the same
cookie, the same rules (:mod:`memring.sessions.cookies`), on an asyncio
client, for Starlette, FastAPI or any ASGI application.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from memring.errors import ConfigError
from memring.sessions.cookies import SessionCookie
from memring.sessions.store import AsyncSessionStore

__all__ = ["SCOPE_KEY", "ASGISessionMiddleware"]

#: Where the middleware puts the request's :class:`Session` in the ASGI scope: the
#: key Starlette's ``request.session`` reads.
SCOPE_KEY = "session"

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class ASGISessionMiddleware:
    """Load the request's session into ``scope["session"]``; save it before the response.

    >>> store = AsyncSessionStore(memring.AsyncBackupClient(servers))  # doctest: +SKIP
    >>> app = ASGISessionMiddleware(app, store)                          # doctest: +SKIP

    In Starlette or FastAPI, ``request.session`` is the :class:`Session`
    (a dict-like object): set a key to save it, ``request.session.cycle_id()``
    after a login, ``request.session.invalidate()`` to log out. The session
    is saved when the application starts its response (the cookie goes out
    with the headers); changes made while the body streams are not saved.
    WebSocket connections get the session loaded, read-only. The keyword
    arguments are the cookie's (:class:`~memring.sessions.cookies.SessionCookie`):
    ``cookie_name``, ``secure``, ``httponly``, ``samesite``, ``path``,
    ``domain``, with the defaults of :class:`~memring.sessions.SessionMiddleware`.
    """

    def __init__(self, app: ASGIApp, store: AsyncSessionStore, **cookie: Any) -> None:
        if not isinstance(store, AsyncSessionStore):
            raise ConfigError(f"store must be an AsyncSessionStore, got {type(store).__name__}")
        self.cookie = SessionCookie(**cookie)
        self.app = app
        self.store = store

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        header = "; ".join(value.decode("latin-1") for name, value in scope.get("headers", ())
                           if name == b"cookie")
        cookie_sid, had_cookie = self.cookie.sid(header)
        session = await self.store.load(cookie_sid) if cookie_sid is not None else None
        scope[SCOPE_KEY] = session if session is not None else self.store.new()
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = await self._commit(scope, cookie_sid, had_cookie)
                if headers:
                    message = dict(message)
                    message["headers"] = [*message.get("headers", ()), *(
                        (name.lower().encode("latin-1"), value.encode("latin-1"))
                        for name, value in headers)]
            await send(message)

        await self.app(scope, receive, send_with_cookie)

    async def _commit(self, scope: Scope, cookie_sid: str | None, had_cookie: bool
                      ) -> list[tuple[str, str]]:
        """Save, delete or regenerate the session; the Set-Cookie headers to send."""
        steps = self.cookie.commit(scope.get(SCOPE_KEY), cookie_sid, had_cookie,
                                   f"scope[{SCOPE_KEY!r}]")
        try:
            method, arg = next(steps)
            while True:
                method, arg = steps.send(await getattr(self.store, method)(arg))
        except StopIteration as stop:
            session, headers = stop.value
        scope[SCOPE_KEY] = session
        out: list[tuple[str, str]] = headers
        return out
