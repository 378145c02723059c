"""SessionStore and SessionMiddleware on real memcached, with Client and BackupClient."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client as PymemcacheClient
from pymemcache.serde import FLAG_TEXT, pickle_serde

from memring import BackupClient, Client, HealthPolicy, Timeouts
from memring.client.transport import raw_serde
from memring.sessions import ENVIRON_KEY, Session, SessionMiddleware, SessionStore
from memring.tools.local import LocalCluster
from tests.stored import plain

pytestmark = pytest.mark.integration

# No test here hangs a node, so timeouts can be generous: a busy machine must
# not make a node look down (a killed node refuses at once anyway).
OPTS: dict[str, Any] = {"timeouts": Timeouts(connect=2.0, read=2.0),
                        "health": HealthPolicy(backoff_initial=0.1, backoff_max=0.5)}


@pytest.fixture(scope="module")
def sessions_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as cluster:
        yield cluster


@pytest.fixture(params=["Client", "BackupClient"])
def mc(request: pytest.FixtureRequest, sessions_cluster: LocalCluster) -> Iterator[Client]:
    cls = Client if request.param == "Client" else BackupClient
    client = cls(sessions_cluster.servers, **OPTS)
    yield client
    client.close()


def must_load(store: SessionStore, sid: str) -> Session:
    session = store.load(sid)
    assert session is not None
    return session



def raw_get(cluster: LocalCluster, key: str) -> list[tuple[bytes, int]]:
    """What every node holds under ``key``, as (bytes, flags)."""
    found = []
    for p in cluster.processes:
        c = PymemcacheClient(p.address, connect_timeout=1, timeout=1, serde=raw_serde)
        try:
            got = c.get(key)
        finally:
            c.close()
        if got is not None:
            found.append(got)
    return found


def test_lifecycle(mc: Client, sessions_cluster: LocalCluster) -> None:
    store = SessionStore(mc, ttl=60)
    s = store.create({"user_id": 7, "name": "Zoë", "roles": ["a", "b"]})
    loaded = store.load(s.id)
    assert loaded is not None and dict(loaded) == dict(s)
    loaded["visits"] = 1
    assert store.save(loaded)
    assert must_load(store, s.id)["visits"] == 1
    fresh = store.regenerate(s.id)
    assert fresh.id != s.id
    assert store.load(s.id) is None
    # Gone from every node (BackupClient leaves tombstones: memring's reserved flag bits).
    for _, flags in raw_get(sessions_cluster, "session:" + s.id):
        assert flags & 0xFF000000
    assert dict(must_load(store, fresh.id)) == {"user_id": 7, "name": "Zoë",
                                                "roles": ["a", "b"], "visits": 1}
    assert store.delete(fresh.id)
    assert store.load(fresh.id) is None


def test_stored_as_json_text(mc: Client, sessions_cluster: LocalCluster) -> None:
    store = SessionStore(mc, ttl=60, key_prefix="jsoncheck:")
    s = store.create({"a": 1})
    copies = raw_get(sessions_cluster, "jsoncheck:" + s.id)
    assert len(copies) == (2 if isinstance(mc, BackupClient) else 1)
    for raw in copies:
        text, flags = plain(raw)  # the value, without its version trailer
        assert flags == FLAG_TEXT
        assert json.loads(text)["data"] == {"a": 1}


def test_a_pickle_client_still_stores_json(sessions_cluster: LocalCluster) -> None:
    with Client(sessions_cluster.servers, serde=pickle_serde, **OPTS) as mc:
        store = SessionStore(mc, ttl=60)
        s = store.create({"a": 1})
        (raw,) = raw_get(sessions_cluster, "session:" + s.id)
        value, flags = plain(raw)
        assert flags == FLAG_TEXT and json.loads(value)["data"] == {"a": 1}


def test_malformed_ids_never_reach_memcached(mc: Client) -> None:
    store = SessionStore(mc, ttl=60)
    for bad in ["x\r\nflush_all\r\n", "a b", "A" * 42, "A" * 300, "é" * 43]:
        before = mc.metrics()
        assert store.load(bad) is None
        assert store.delete(bad) is False
        after = mc.metrics()
        assert {n: v["ops"] for n, v in before["nodes"].items()} == {
            n: v["ops"] for n, v in after["nodes"].items()}


def test_sliding_and_fixed_expiry(sessions_cluster: LocalCluster) -> None:
    # memcached's clock ticks once a second, so an item may expire up to 1 s
    # before its TTL, never after: the checks below leave that margin and
    # more. Both clients share the one wait.
    with Client(sessions_cluster.servers, **OPTS) as one, \
            BackupClient(sessions_cluster.servers, **OPTS) as two:
        cases = []
        for mc in (one, two):
            sliding = SessionStore(mc, ttl=4)
            fixed = SessionStore(mc, ttl=4, sliding=False)
            cases.append((sliding, sliding.create({"k": "s"}), fixed, fixed.create({"k": "f"})))
        time.sleep(2.0)
        for sliding, a, fixed, b in cases:
            assert sliding.load(a.id) is not None  # touched: 4 more seconds
            assert fixed.load(b.id) is not None
        time.sleep(2.2)
        for sliding, a, fixed, b in cases:
            assert sliding.load(a.id) is not None  # 4.2 s after creation, alive
            assert fixed.load(b.id) is None


def test_backup_client_sessions_survive_a_node_loss() -> None:
    with LocalCluster(3) as cluster, BackupClient(cluster.servers, **OPTS) as mc:
        assert isinstance(mc, BackupClient)
        store = SessionStore(mc, ttl=60)
        sessions = [store.create({"i": i}) for i in range(30)]
        victim = mc.owners("session:" + sessions[0].id)[0]
        cluster.process_for(victim).kill()
        for i, s in enumerate(sessions):
            loaded = store.load(s.id)
            assert loaded is not None and loaded["i"] == i
            loaded["seen"] = True
            assert store.save(loaded)
        assert all(must_load(store, s.id).get("seen") for s in sessions)


# -- the middleware end to end ----------------------------------------------------------


def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session: Session = environ[ENVIRON_KEY]
    path = environ["PATH_INFO"]
    if path == "/login":
        session["user"] = "alice"
        session.cycle_id()
    elif path == "/logout":
        session.invalidate()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [str(session.get("user", "-")).encode()]


def request(wsgi: Callable[..., Iterable[bytes]], path: str,
            jar: dict[str, str]) -> bytes:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": path}
    if jar:
        environ["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in jar.items())

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        for name, value in headers:
            if name == "Set-Cookie":
                k, _, rest = value.partition("=")
                v = rest.split(";")[0]
                if "Max-Age=0" in value:
                    jar.pop(k, None)
                else:
                    jar[k] = v
        return lambda data: None

    return b"".join(wsgi(environ, start_response))


def test_middleware_login_whoami_logout(mc: Client) -> None:
    store = SessionStore(mc, ttl=60)
    wsgi = SessionMiddleware(app, store)
    jar: dict[str, str] = {}
    assert request(wsgi, "/", jar) == b"-" and jar == {}
    assert request(wsgi, "/login", jar) == b"alice"
    sid = jar["sid"]
    assert request(wsgi, "/", jar) == b"alice"
    assert jar["sid"] == sid
    assert request(wsgi, "/logout", jar) == b"-"
    assert jar == {}
    assert store.load(sid) is None
