"""Flask-Session's memcached backend handed a memring client, against real memcached.

Flask-Session takes the client object as ``SESSION_MEMCACHED`` and calls
``get``, ``set(key, value, timeout)`` and ``delete`` on it: memring's
pymemcache-compatible API works unchanged. ``FlaskSessionClient`` only
makes a malformed session cookie read as no session (bare, memring raises
InvalidKey for it, as pymemcache does, and the request fails).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

pytest.importorskip("flask")
pytest.importorskip("flask_session")

import flask  # noqa: E402
import flask_session  # noqa: E402

from memring import BackupClient, Client, InvalidKey, Timeouts  # noqa: E402
from memring.contrib.flask import FlaskSessionClient  # noqa: E402
from memring.tools.local import LocalCluster  # noqa: E402

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def flask_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as cluster:
        yield cluster


@pytest.fixture(params=["Client", "BackupClient"])
def mc(request: pytest.FixtureRequest, flask_cluster: LocalCluster) -> Iterator[Client]:
    cls = Client if request.param == "Client" else BackupClient
    client = cls(flask_cluster.servers, timeouts=Timeouts(connect=2.0, read=2.0))
    yield client
    client.close()


def make_app(mc: Client, **config: object) -> flask.Flask:
    app = flask.Flask(__name__)
    app.config.update(SECRET_KEY="test-only", SESSION_TYPE="memcached",
                      SESSION_MEMCACHED=mc, SESSION_KEY_PREFIX="flask:", **config)
    flask_session.Session(app)

    @app.post("/set/<value>")
    def set_value(value: str) -> dict[str, object]:
        flask.session["value"] = value
        flask.session["count"] = flask.session.get("count", 0) + 1
        return {"ok": True}

    @app.get("/get")
    def get_value() -> dict[str, object]:
        return {"value": flask.session.get("value"), "count": flask.session.get("count")}

    @app.post("/clear")
    def clear() -> dict[str, object]:
        flask.session.clear()
        return {"ok": True}

    return app


def sid_cookie(web: object) -> str | None:
    cookie = web.get_cookie("session")  # type: ignore[attr-defined]
    return None if cookie is None else str(cookie.value)


@pytest.mark.parametrize("permanent", [True, False])
def test_set_read_clear(mc: Client, permanent: bool) -> None:
    # SESSION_PERMANENT=True uses Flask's 31-day lifetime: over memcached's
    # 30-day limit, so Flask-Session sends an absolute expiry time.
    app = make_app(mc, SESSION_PERMANENT=permanent)
    web = app.test_client()
    assert web.get("/get").json == {"value": None, "count": None}
    assert sid_cookie(web) is None  # nothing stored for an empty session

    assert web.post("/set/hello").json == {"ok": True}
    sid = sid_cookie(web)
    assert sid
    stored = mc.get("flask:" + sid)
    assert isinstance(stored, bytes) and b"hello" in stored  # msgpack, via memring

    assert web.get("/get").json == {"value": "hello", "count": 1}
    web.post("/set/world")
    assert web.get("/get").json == {"value": "world", "count": 2}
    assert sid_cookie(web) == sid

    other = app.test_client()  # another browser: its own empty session
    assert other.get("/get").json == {"value": None, "count": None}

    assert web.post("/clear").json == {"ok": True}
    assert mc.get("flask:" + sid) is None
    assert sid_cookie(web) is None
    assert web.get("/get").json == {"value": None, "count": None}


@pytest.mark.parametrize("cookie", ["x" * 300, '"a b"', "a\\001b", "é" * 40],
                         ids=["too-long", "space", "escape", "non-ascii"])
def test_malformed_cookie_reads_as_no_session(mc: Client, cookie: str) -> None:
    app = make_app(FlaskSessionClient(mc))  # type: ignore[arg-type]
    web = app.test_client()
    web.set_cookie("session", cookie)
    assert web.get("/get").json == {"value": None, "count": None}
    assert web.post("/set/fresh").status_code == 200
    sid = sid_cookie(web)
    assert sid and sid != cookie
    assert web.get("/get").json == {"value": "fresh", "count": 1}


def test_flask_session_client_passes_everything_else_through(mc: Client) -> None:
    wrapped = FlaskSessionClient(mc)
    assert wrapped.set("flask:k", b"v", 60) is True
    assert wrapped.get("flask:k") == b"v"
    assert wrapped.get("bad key") is None and wrapped.delete("bad key") is False
    assert wrapped.ring is mc.ring  # anything else: the wrapped client's
    assert wrapped.delete("flask:k") is True
    with pytest.raises(InvalidKey):
        wrapped.set("bad key", b"v", 60)
