"""Flask with Flask-Session on memring; the client is built and used at import."""

from __future__ import annotations

import os

import flask
import flask_session

from memring.contrib.flask import FlaskSessionClient
from tests.apps import WARMUP_KEY, client_class, servers

client = client_class()(servers())
client.get(WARMUP_KEY)  # used before the fork: a pooled connection is open now

app = flask.Flask(__name__)
app.config.update(SECRET_KEY="test-only", SESSION_TYPE="memcached",
                  SESSION_MEMCACHED=FlaskSessionClient(client), SESSION_KEY_PREFIX="flask:")
flask_session.Session(app)


@app.post("/login")
def login() -> dict[str, object]:
    flask.session.clear()
    flask.session["user"] = flask.request.form["user"]
    flask.session["visits"] = 0
    return {"ok": True, "pid": os.getpid()}


@app.get("/whoami")
def whoami() -> dict[str, object]:
    user = flask.session.get("user")
    if user is not None:
        flask.session["visits"] = flask.session.get("visits", 0) + 1
    return {"user": user, "visits": flask.session.get("visits"), "pid": os.getpid()}


@app.get("/ping")
def ping() -> dict[str, object]:
    return {"pid": os.getpid()}
