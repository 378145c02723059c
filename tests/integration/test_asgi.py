"""memring's ASGI session middleware and starsessions store, in a real Starlette app.

Driven by Starlette's TestClient, and by a real uvicorn server (a process of
its own, stopped by PID) over HTTP. The app is ``tests/apps/asgi_app.py``:
memring's middleware at ``/``, starsessions with memring's store at ``/star``.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from starlette.testclient import TestClient

from memring import Client
from memring.tools.local import LocalCluster, free_port
from tests.apps.asgi_app import build

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def asgi_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as cluster:
        yield cluster


@pytest.fixture
def peek(asgi_cluster: LocalCluster) -> Iterator[Client]:
    client = Client(asgi_cluster.servers)
    yield client
    client.close()


def login_flow(web: httpx.Client | TestClient, prefix: str, cookie: str) -> list[str]:
    """Log in, visit twice, log out; the session ids the cookie held on the way."""
    assert web.get(f"{prefix}/whoami").json()["user"] is None
    assert cookie not in web.cookies  # nothing stored for an empty session
    assert web.post(f"{prefix}/login", params={"user": "alice"}).json()["ok"] is True
    first = web.cookies[cookie]
    assert web.get(f"{prefix}/whoami").json()["visits"] == 1
    assert web.get(f"{prefix}/whoami").json() == {
        "user": "alice", "visits": 2, "pid": web.get(f"{prefix}/whoami").json()["pid"]}
    ids = [first, web.cookies[cookie]]
    assert web.post(f"{prefix}/logout").json() == {"ok": True}
    assert web.get(f"{prefix}/whoami").json()["user"] is None
    return ids


@pytest.mark.parametrize("backup", [False, True], ids=["client", "backup"])
def test_memring_middleware_with_starlette_testclient(asgi_cluster: LocalCluster, peek: Client,
                                                      backup: bool) -> None:
    app, client = build(asgi_cluster.servers, backup=backup)
    with TestClient(app) as web:
        assert web.post("/login", params={"user": "alice"}).json()["ok"] is True
        sid = web.cookies["sid"]
        assert peek.get(f"asgi:{sid}") is not None  # stored as the store's JSON record
        assert web.get("/whoami").json()["visits"] == 1
        # A forged cookie reads as no session, and is cleared.
        web.cookies.set("sid", "x" * 43)
        response = web.get("/whoami")
        assert response.json()["user"] is None
        assert response.headers["set-cookie"].startswith("sid=; Max-Age=0")
        web.cookies.set("sid", sid)
        assert web.post("/logout").json() == {"ok": True}
        assert peek.get(f"asgi:{sid}") is None  # deleted at logout
        assert web.get("/whoami").json()["user"] is None
        web.portal.call(client.close)  # type: ignore[union-attr]


def test_starsessions_store_with_starlette_testclient(asgi_cluster: LocalCluster,
                                                      peek: Client) -> None:
    app, client = build(asgi_cluster.servers)
    with TestClient(app) as web:
        assert web.post("/star/login", params={"user": "bob"}).json()["ok"] is True
        sid = web.cookies["session"]
        stored = peek.get(f"star:{sid}")
        assert isinstance(stored, bytes) and b"bob" in stored
        assert web.get("/star/whoami").json()["visits"] == 1
        assert web.get("/star/whoami").json()["visits"] == 2
        assert web.post("/star/logout").json() == {"ok": True}
        assert web.get("/star/whoami").json()["user"] is None
        web.portal.call(client.close)  # type: ignore[union-attr]


@pytest.fixture
def uvicorn_server(asgi_cluster: LocalCluster) -> Iterator[str]:
    port = free_port()
    env = {**os.environ, "MEMRING_TEST_SERVERS": ",".join(asgi_cluster.servers),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "tests.apps.asgi_app:app", "--host", "127.0.0.1",
         "--port", str(port), "--log-level", "warning"], cwd=ROOT, env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(f"{url}/whoami", timeout=1.0)
                break
            except httpx.TransportError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    pytest.fail(f"uvicorn did not start: {err}", pytrace=False)
                time.sleep(0.1)
        yield url
    finally:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
        if proc.stderr:
            proc.stderr.close()


def test_both_middlewares_under_a_real_uvicorn_server(uvicorn_server: str, peek: Client) -> None:
    with httpx.Client(base_url=uvicorn_server, timeout=5.0) as web:
        first, cycled = login_flow(web, "", "sid")
        assert first == cycled  # the id was cycled at login, before the cookie was first sent
        assert peek.get(f"asgi:{first}") is None  # logged out: deleted
    with httpx.Client(base_url=uvicorn_server, timeout=5.0) as web:
        login_flow(web, "/star", "session")
