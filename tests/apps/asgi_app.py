"""A Starlette app on memring's ASGI session middleware at ``/`` and, under
``/star``, on starsessions with memring's store: the routes of the other apps
(``tests/apps``). Both set ``scope["session"]``, so each has a mount of its own.

Built at import from ``MEMRING_TEST_SERVERS`` (``build()`` builds one for
any servers), so ``uvicorn tests.apps.asgi_app:app`` serves it.
"""

from __future__ import annotations

import os
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Mount, Route
from starsessions import SessionAutoloadMiddleware
from starsessions import SessionMiddleware as StarSessionMiddleware

import memring
from memring.contrib.starsessions import MemringStore
from memring.sessions import ASGISessionMiddleware, AsyncSessionStore

__all__ = ["app", "build"]


async def login(request: Request) -> JSONResponse:
    session = request.session
    session.clear()
    session["user"] = request.query_params["user"]
    session["visits"] = 0
    if hasattr(session, "cycle_id"):
        session.cycle_id()  # memring's session: a new id at login
    return JSONResponse({"ok": True, "pid": os.getpid()})


async def whoami(request: Request) -> JSONResponse:
    session = request.session
    user = session.get("user")
    if user is not None:
        session["visits"] = session.get("visits", 0) + 1
    return JSONResponse({"user": user, "visits": session.get("visits"), "pid": os.getpid()})


async def logout(request: Request) -> JSONResponse:
    session = request.session
    if hasattr(session, "invalidate"):
        session.invalidate()
    else:
        session.clear()
    return JSONResponse({"ok": True})


ROUTES = [Route("/login", login, methods=["POST"]), Route("/whoami", whoami),
          Route("/logout", logout, methods=["POST"])]


def build(servers: list[str], *, backup: bool = False) -> tuple[Starlette, Any]:
    """The app, and its asyncio client (close it when done)."""
    client: Any = (memring.AsyncBackupClient if backup else memring.AsyncClient)(servers)
    star = Starlette(routes=ROUTES)
    star.add_middleware(SessionAutoloadMiddleware)
    star.add_middleware(StarSessionMiddleware, store=MemringStore(client, prefix="star:"),
                        cookie_https_only=False, lifetime=600)
    store = AsyncSessionStore(client, ttl=600, key_prefix="asgi:")
    ours = ASGISessionMiddleware(Starlette(routes=ROUTES), store, secure=False)
    app = Starlette(routes=[Mount("/star", star), Mount("/", ours)])
    return app, client


def _from_env() -> Any:
    value = os.environ.get("MEMRING_TEST_SERVERS", "")
    servers = [s.strip() for s in value.split(",") if s.strip()]
    if not servers:
        return None
    return build(servers, backup=os.environ.get("MEMRING_TEST_CLIENT") == "BackupClient")[0]


app = _from_env()
