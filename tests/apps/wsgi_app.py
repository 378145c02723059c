"""memring's own SessionMiddleware and SessionStore; the client is built and used at import."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any
from urllib.parse import parse_qs

from memring.sessions import ENVIRON_KEY, SessionMiddleware, SessionStore
from tests.apps import WARMUP_KEY, client_class, servers

client = client_class()(servers())
client.get(WARMUP_KEY)  # used before the fork: a pooled connection is open now
store = SessionStore(client, ttl=600, key_prefix="wsgi:")


def _json(start_response: Any, body: dict[str, object], status: str = "200 OK") -> list[bytes]:
    data = json.dumps(body).encode()
    start_response(status, [("Content-Type", "application/json"),
                            ("Content-Length", str(len(data)))])
    return [data]


def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    session = environ[ENVIRON_KEY]
    path, method = environ.get("PATH_INFO", ""), environ.get("REQUEST_METHOD", "GET")
    if path == "/login" and method == "POST":
        size = int(environ.get("CONTENT_LENGTH") or 0)
        form = parse_qs(environ["wsgi.input"].read(size).decode())
        session.clear()
        session["user"] = form["user"][0]
        session["visits"] = 0
        session.cycle_id()  # a new id at login
        return _json(start_response, {"ok": True, "pid": os.getpid()})
    if path == "/whoami":
        user = session.get("user")
        if user is not None:
            session["visits"] = session.get("visits", 0) + 1
        return _json(start_response, {"user": user, "visits": session.get("visits"),
                                      "pid": os.getpid()})
    if path == "/ping":
        return _json(start_response, {"pid": os.getpid()})
    return _json(start_response, {"error": "not found"}, "404 Not Found")


# Plain HTTP in the test: the cookie can't be Secure.
app = SessionMiddleware(application, store, secure=False)
