"""SessionStore, Session and SessionMiddleware against an in-memory stand-in (no server)."""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable
from typing import Any

import pytest

from memring import ConfigError, SerializationError
from memring.sessions import (
    ENVIRON_KEY,
    Session,
    SessionMiddleware,
    SessionNotFound,
    SessionStore,
    is_valid_session_id,
    new_session_id,
)

# -- an in-memory memcached stand-in -------------------------------------------


class Clock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class MemoryBackend:
    """get/add/replace/set/delete/touch with memcached's expiry rules; logs every call."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.items: dict[str, tuple[Any, float]] = {}
        self.calls: list[tuple[str, str]] = []

    def _deadline(self, expire: int) -> float:
        assert isinstance(expire, int) and 0 < expire <= 30 * 24 * 3600, expire
        return self.clock() + expire

    def _live(self, key: str) -> bool:
        item = self.items.get(key)
        if item is None:
            return False
        if item[1] <= self.clock():
            del self.items[key]
            return False
        return True

    def get(self, key: str, default: Any = None) -> Any:
        self.calls.append(("get", key))
        return self.items[key][0] if self._live(key) else default

    def set(self, key: str, value: Any, expire: int = 0, noreply: bool | None = None) -> bool:
        self.calls.append(("set", key))
        self.items[key] = (value, self._deadline(expire))
        return True

    def add(self, key: str, value: Any, expire: int = 0, noreply: bool | None = None) -> bool:
        self.calls.append(("add", key))
        if self._live(key):
            return False
        self.items[key] = (value, self._deadline(expire))
        return True

    def replace(self, key: str, value: Any, expire: int = 0,
                noreply: bool | None = None) -> bool:
        self.calls.append(("replace", key))
        if not self._live(key):
            return False
        self.items[key] = (value, self._deadline(expire))
        return True

    def delete(self, key: str, noreply: bool | None = None) -> bool:
        self.calls.append(("delete", key))
        return self.items.pop(key, None) is not None

    def touch(self, key: str, expire: int = 0, noreply: bool | None = None) -> bool:
        self.calls.append(("touch", key))
        if not self._live(key):
            return False
        self.items[key] = (self.items[key][0], self._deadline(expire))
        return True

    def ttl_left(self, key: str) -> float:
        return self.items[key][1] - self.clock()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def backend(clock: Clock) -> MemoryBackend:
    return MemoryBackend(clock)


@pytest.fixture
def store(backend: MemoryBackend, clock: Clock) -> SessionStore:
    return SessionStore(backend, ttl=600, clock=clock)


def must_load(store: SessionStore, sid: str) -> Session:
    session = store.load(sid)
    assert session is not None
    return session


BAD_IDS: list[Any] = [
    None, 42, b"A" * 43, "", "short", "A" * 42, "A" * 44, "A" * 42 + "=", "A" * 42 + " ",
    "A" * 40 + "\r\nx", "x\r\nflush_all\r\n" + "A" * 28, "é" * 43, "A" * 42 + "/",
    "../" + "A" * 40, "A" * 1000,
]

# -- ids -------------------------------------------------------------------------


def test_new_ids_are_256_bit_urlsafe_and_distinct() -> None:
    ids = {new_session_id() for _ in range(1000)}
    assert len(ids) == 1000
    for sid in ids:
        assert len(sid) == 43 and is_valid_session_id(sid)
        assert set(sid) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    # 43 base64 characters carry 258 bits; at least 256 of them are random.
    assert math.floor(43 * 6) >= 256


@pytest.mark.parametrize("sid", BAD_IDS)
def test_malformed_ids_are_rejected_before_any_lookup(
        store: SessionStore, backend: MemoryBackend, sid: Any) -> None:
    assert not is_valid_session_id(sid)
    assert store.load(sid) is None
    assert store.delete(sid) is False
    with pytest.raises(SessionNotFound):
        store.regenerate(sid)
    assert backend.calls == []


# -- create / load / save / delete ---------------------------------------------------


def test_create_load_roundtrip(store: SessionStore, backend: MemoryBackend,
                               clock: Clock) -> None:
    s = store.create({"user_id": 7, "roles": ["admin"], "name": "Zoë"})
    assert not s.is_new and not s.modified
    assert s.created_at == s.last_accessed == clock.now
    clock.advance(10)
    loaded = store.load(s.id)
    assert loaded is not None
    assert loaded.id == s.id
    assert dict(loaded) == {"user_id": 7, "roles": ["admin"], "name": "Zoë"}
    assert loaded.data == loaded and loaded["user_id"] == 7
    assert loaded.created_at == s.created_at
    assert loaded.last_accessed == clock.now
    assert not loaded.modified and not loaded.is_new


def test_stored_record_is_json_text_never_pickle(store: SessionStore,
                                                 backend: MemoryBackend) -> None:
    s = store.create({"a": 1})
    raw, _ = backend.items["session:" + s.id]
    assert isinstance(raw, str)
    record = json.loads(raw)
    assert record["data"] == {"a": 1} and record["v"] == 1
    assert record["created_at"] == s.created_at


def test_unknown_id_loads_none(store: SessionStore) -> None:
    assert store.load(new_session_id()) is None


def test_save_persists_changes_and_resets_modified(store: SessionStore) -> None:
    s = store.create({})
    s["count"] = 1
    assert s.modified
    assert store.save(s) is True
    assert not s.modified
    loaded = store.load(s.id)
    assert loaded is not None and loaded["count"] == 1
    del loaded["count"]
    assert loaded.modified
    store.save(loaded)
    again = store.load(s.id)
    assert again is not None and dict(again) == {}


def test_mapping_api_marks_modified(store: SessionStore) -> None:
    s = store.create({"a": 1})
    s.setdefault("a", 2)
    assert not s.modified
    s.update(b=2)
    assert s.modified and dict(s) == {"a": 1, "b": 2}
    assert "a" in s and len(s) == 2 and sorted(s) == ["a", "b"]
    s.modified = False
    s.clear()
    assert s.modified and len(s) == 0


def test_non_str_attribute_names_are_refused(store: SessionStore) -> None:
    s = store.new()
    with pytest.raises(TypeError, match="must be str"):
        s[1] = "x"  # type: ignore[index]


def test_delete(store: SessionStore) -> None:
    s = store.create({"a": 1})
    assert store.delete(s.id) is True
    assert store.load(s.id) is None
    assert store.delete(s.id) is False


def test_save_never_resurrects_a_deleted_session(store: SessionStore) -> None:
    s = store.create({"a": 1})
    other_tab = store.load(s.id)
    assert other_tab is not None
    store.delete(s.id)  # logged out elsewhere
    other_tab["b"] = 2
    assert store.save(other_tab) is False
    assert store.load(s.id) is None


def test_new_session_is_not_stored_until_saved(store: SessionStore,
                                               backend: MemoryBackend) -> None:
    s = store.new({"x": 1})
    assert s.is_new and s.modified
    assert backend.items == {}
    assert store.save(s)
    assert not s.is_new
    assert store.load(s.id) is not None


def test_create_never_overwrites_an_existing_session(
        store: SessionStore, backend: MemoryBackend, monkeypatch: pytest.MonkeyPatch) -> None:
    victim = store.create({"user_id": 1})
    ids = iter([victim.id, new_session_id()])
    monkeypatch.setattr("memring.sessions.store.new_session_id", lambda: next(ids))
    monkeypatch.setattr("memring.sessions.session.new_session_id", lambda: next(ids))
    s = store.new({"user_id": 2})
    assert s.id == victim.id  # the improbable collision
    assert store.save(s)
    assert s.id != victim.id
    assert must_load(store, victim.id)["user_id"] == 1
    assert must_load(store, s.id)["user_id"] == 2


@pytest.mark.parametrize("value", [object(), {1, 2}, b"bytes", float("nan"), float("inf")])
def test_non_json_data_raises_a_clear_error(store: SessionStore, value: Any) -> None:
    s = store.create({"ok": 1})
    s["bad"] = value
    with pytest.raises(SerializationError, match="attribute 'bad'"):
        store.save(s)


@pytest.mark.parametrize("raw", [
    "not json", "[1, 2]", '{"v": 1}', '{"v": 2, "created_at": 1, "data": {}}',
    '{"v": 1, "created_at": true, "data": {}}', '{"v": 1, "created_at": 1, "data": []}',
    b"\x80\x04\x95pickle", 12345, {"v": 1, "created_at": 1, "data": {}},
])
def test_malformed_records_read_as_no_session(store: SessionStore, backend: MemoryBackend,
                                              raw: Any, caplog: pytest.LogCaptureFixture
                                              ) -> None:
    sid = new_session_id()
    backend.items["session:" + sid] = (raw, float("inf"))
    assert store.load(sid) is None
    assert "not a session record" in caplog.text
    assert sid not in caplog.text  # ids are credentials: never logged


def test_bytes_records_are_accepted(store: SessionStore, backend: MemoryBackend,
                                    clock: Clock) -> None:
    sid = new_session_id()
    record = {"v": 1, "created_at": clock.now, "last_accessed": clock.now, "data": {"a": 1}}
    backend.items["session:" + sid] = (json.dumps(record).encode(), float("inf"))
    assert must_load(store, sid)["a"] == 1


# -- expiry ------------------------------------------------------------------------


def test_sliding_expiry_touches_on_load(store: SessionStore, backend: MemoryBackend,
                                        clock: Clock) -> None:
    s = store.create({"a": 1})
    key = "session:" + s.id
    for _ in range(5):  # 5 x 500 s > ttl: alive only because every load touches it
        clock.advance(500)
        assert store.load(s.id) is not None
        assert backend.calls[-1] == ("touch", key)
        assert backend.ttl_left(key) == 600
    clock.advance(601)
    assert store.load(s.id) is None


def test_fixed_expiry_counts_from_creation(backend: MemoryBackend, clock: Clock) -> None:
    store = SessionStore(backend, ttl=600, sliding=False, clock=clock)
    s = store.create({"a": 1})
    key = "session:" + s.id
    clock.advance(400)
    loaded = store.load(s.id)
    assert loaded is not None
    assert ("touch", key) not in backend.calls
    loaded["b"] = 2
    assert store.save(loaded)
    assert backend.ttl_left(key) == 200  # saving doesn't extend the lifetime
    clock.advance(200)
    assert store.load(s.id) is None


def test_fixed_expiry_is_enforced_by_the_store_too(backend: MemoryBackend,
                                                   clock: Clock) -> None:
    store = SessionStore(backend, ttl=600, sliding=False, clock=clock)
    s = store.create({"a": 1})
    backend.items["session:" + s.id] = (backend.items["session:" + s.id][0], float("inf"))
    clock.advance(600)
    assert store.load(s.id) is None  # memcached kept it too long: still over
    assert "session:" + s.id not in backend.items
    assert store.save(s) is False


def test_absolute_ttl_caps_sliding_expiry(backend: MemoryBackend, clock: Clock) -> None:
    store = SessionStore(backend, ttl=600, absolute_ttl=1000, clock=clock)
    s = store.create({"a": 1})
    key = "session:" + s.id
    clock.advance(500)
    assert store.load(s.id) is not None
    clock.advance(450)
    assert store.load(s.id) is not None
    assert backend.ttl_left(key) == 50
    clock.advance(50)
    assert store.load(s.id) is None
    with pytest.raises(SessionNotFound):
        store.regenerate(s)  # regenerating can't extend the lifetime


def test_load_returns_none_if_the_session_vanishes_before_the_touch(
        store: SessionStore, backend: MemoryBackend) -> None:
    s = store.create({"a": 1})
    backend.touch = lambda *a, **k: False  # type: ignore[method-assign]
    assert store.load(s.id) is None


# -- regenerate ---------------------------------------------------------------------


def test_regenerate_by_id(store: SessionStore, clock: Clock) -> None:
    s = store.create({"user_id": 7})
    clock.advance(5)
    fresh = store.regenerate(s.id)
    assert fresh.id != s.id and is_valid_session_id(fresh.id)
    assert dict(fresh) == {"user_id": 7}
    assert fresh.created_at == s.created_at
    assert not fresh.is_new
    assert store.load(s.id) is None
    assert dict(must_load(store, fresh.id)) == {"user_id": 7}


def test_regenerate_a_session_object_carries_unsaved_changes(store: SessionStore) -> None:
    s = store.create({"a": 1})
    s["logged_in"] = True
    fresh = store.regenerate(s)
    assert dict(must_load(store, fresh.id)) == {"a": 1, "logged_in": True}
    assert store.load(s.id) is None
    assert s.invalidated


def test_regenerate_unknown_raises(store: SessionStore) -> None:
    with pytest.raises(SessionNotFound) as info:
        store.regenerate(new_session_id())
    assert isinstance(info.value, KeyError)
    assert "no live session" in str(info.value)


# -- configuration -------------------------------------------------------------------


@pytest.mark.parametrize("kwargs", [
    {"ttl": 0}, {"ttl": -5}, {"ttl": 30 * 24 * 3600 + 1}, {"ttl": True}, {"ttl": 1.5},
    {"absolute_ttl": 0}, {"key_prefix": "has space:"}, {"key_prefix": "x" * 220},
    {"key_prefix": b"bytes:"},
])
def test_bad_configuration(backend: MemoryBackend, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SessionStore(backend, **kwargs)


def test_client_without_the_needed_methods() -> None:
    with pytest.raises(ConfigError, match="touch"):
        SessionStore(type("C", (), {"get": len, "add": len, "replace": len, "delete": len})())


def test_session_repr_hides_the_id(store: SessionStore) -> None:
    s = store.create({"a": 1})
    assert s.id not in repr(s) and s.id[:6] in repr(s)
    assert "ttl=600" in repr(store)


def test_session_refuses_a_malformed_id() -> None:
    with pytest.raises(ValueError):
        Session("bad id", created_at=0)


# -- the WSGI middleware ----------------------------------------------------------------

Response = tuple[str, list[tuple[str, str]], bytes]


def make_app(action: Callable[[Session, dict[str, Any]], Any]) -> Callable[..., Iterable[bytes]]:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        session = environ[ENVIRON_KEY]
        body = action(session, environ)
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
    return app


def call(app: Callable[..., Iterable[bytes]], cookie: str | None = None) -> Response:
    environ: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/"}
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    got: dict[str, Any] = {}

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        got["status"], got["headers"] = status, headers
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return got["status"], got["headers"], body


def set_cookies(headers: list[tuple[str, str]]) -> list[str]:
    return [v for k, v in headers if k.lower() == "set-cookie"]


def sid_from(headers: list[tuple[str, str]], name: str = "sid") -> str:
    (cookie,) = set_cookies(headers)
    first = cookie.split(";")[0]
    assert first.startswith(name + "=")
    return first[len(name) + 1:]


def counter(session: Session, environ: dict[str, Any]) -> int:
    session["n"] = session.get("n", 0) + 1
    return int(session["n"])


def test_anonymous_request_stores_nothing_and_sets_no_cookie(
        store: SessionStore, backend: MemoryBackend) -> None:
    app = SessionMiddleware(make_app(lambda s, e: dict(s)), store)
    status, headers, body = call(app)
    assert status == "200 OK" and body == b"{}"
    assert set_cookies(headers) == []
    assert backend.items == {}


def test_writing_creates_the_session_and_sets_a_hardened_cookie(
        store: SessionStore, backend: MemoryBackend) -> None:
    app = SessionMiddleware(make_app(counter), store)
    _, headers, body = call(app)
    assert body == b"1"
    (cookie,) = set_cookies(headers)
    attrs = [a.strip() for a in cookie.split(";")[1:]]
    assert sorted(attrs) == ["HttpOnly", "Path=/", "SameSite=Lax", "Secure"]
    sid = sid_from(headers)
    assert is_valid_session_id(sid)
    assert dict(must_load(store, sid)) == {"n": 1}


def test_the_cookie_brings_the_session_back(store: SessionStore,
                                            backend: MemoryBackend) -> None:
    app = SessionMiddleware(make_app(counter), store)
    sid = sid_from(call(app)[1])
    for n in (2, 3):
        _, headers, body = call(app, f"other=1; sid={sid}; x=y")
        assert body == str(n).encode()
        assert set_cookies(headers) == []  # same id: nothing to send
    reader = SessionMiddleware(make_app(lambda s, e: dict(s)), store)
    backend.calls.clear()
    _, headers, body = call(reader, f"sid={sid}")
    assert json.loads(body) == {"n": 3}
    assert set_cookies(headers) == []
    assert [c for c, _ in backend.calls] == ["get", "touch"]  # read-only: no write


def test_forged_or_stale_cookies_are_never_looked_up_and_are_cleared(
        store: SessionStore, backend: MemoryBackend) -> None:
    app = SessionMiddleware(make_app(lambda s, e: dict(s)), store)
    for forged in ["x\r\nflush_all", "A" * 42, "../../etc", ""]:
        backend.calls.clear()
        _, headers, _ = call(app, f"sid={forged}")
        assert backend.calls == []
        (cookie,) = set_cookies(headers)
        assert cookie.startswith("sid=;") and "Max-Age=0" in cookie
    stale = new_session_id()
    _, headers, _ = call(app, f"sid={stale}")
    assert "Max-Age=0" in set_cookies(headers)[0]


def test_first_valid_cookie_wins(store: SessionStore) -> None:
    real = store.create({"who": "real"})
    app = SessionMiddleware(make_app(lambda s, e: dict(s)), store)
    _, _, body = call(app, f"sid=garbage; sid={real.id}; sid={new_session_id()}")
    assert json.loads(body) == {"who": "real"}


def test_cycle_id_after_login_rotates_the_cookie(store: SessionStore) -> None:
    def login(session: Session, environ: dict[str, Any]) -> None:
        session["user_id"] = 7
        session.cycle_id()

    pre = store.create({"cart": [1]})  # e.g. planted by an attacker, or anonymous
    app = SessionMiddleware(make_app(login), store)
    _, headers, _ = call(app, f"sid={pre.id}")
    new_sid = sid_from(headers)
    assert new_sid != pre.id
    assert store.load(pre.id) is None
    assert dict(must_load(store, new_sid)) == {"cart": [1], "user_id": 7}


def test_app_may_swap_in_a_regenerated_session(store: SessionStore) -> None:
    def login(session: Session, environ: dict[str, Any]) -> None:
        environ[ENVIRON_KEY] = store.regenerate(session.id)

    pre = store.create({"a": 1})
    _, headers, _ = call(SessionMiddleware(make_app(login), store), f"sid={pre.id}")
    new_sid = sid_from(headers)
    assert new_sid != pre.id and store.load(pre.id) is None
    assert dict(must_load(store, new_sid)) == {"a": 1}


def test_invalidate_deletes_and_clears_the_cookie(store: SessionStore) -> None:
    s = store.create({"user_id": 7})
    app = SessionMiddleware(make_app(lambda sess, e: sess.invalidate()), store)
    _, headers, _ = call(app, f"sid={s.id}")
    (cookie,) = set_cookies(headers)
    assert cookie.startswith("sid=;") and "Max-Age=0" in cookie
    assert store.load(s.id) is None


def test_session_deleted_during_the_request_is_not_resurrected(store: SessionStore) -> None:
    s = store.create({"n": 1})

    def slow(session: Session, environ: dict[str, Any]) -> None:
        store.delete(session.id)  # another request logs out meanwhile
        session["n"] = 2

    _, headers, _ = call(SessionMiddleware(make_app(slow), store), f"sid={s.id}")
    assert "Max-Age=0" in set_cookies(headers)[0]
    assert store.load(s.id) is None


def test_cookie_options(store: SessionStore) -> None:
    app = SessionMiddleware(make_app(counter), store, cookie_name="app_session", secure=False,
                            httponly=True, samesite="strict", path="/app", domain="example.com")
    _, headers, _ = call(app)
    (cookie,) = set_cookies(headers)
    assert cookie.startswith("app_session=")
    attrs = sorted(a.strip() for a in cookie.split(";")[1:])
    assert attrs == ["Domain=example.com", "HttpOnly", "Path=/app", "SameSite=Strict"]
    app = SessionMiddleware(make_app(counter), store, samesite=None, httponly=False)
    attrs = sorted(a.strip() for a in set_cookies(call(app)[1])[0].split(";")[1:])
    assert attrs == ["Path=/", "Secure"]


@pytest.mark.parametrize("kwargs", [
    {"cookie_name": "bad name"}, {"cookie_name": "a;b"}, {"cookie_name": ""},
    {"samesite": "sometimes"}, {"samesite": "None", "secure": False},
    {"path": "/a;Domain=evil"}, {"path": "relative"}, {"domain": "a b"},
])
def test_bad_middleware_configuration(store: SessionStore, kwargs: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        SessionMiddleware(make_app(counter), store, **kwargs)


def test_middleware_needs_a_store(backend: MemoryBackend) -> None:
    with pytest.raises(ConfigError):
        SessionMiddleware(make_app(counter), backend)  # type: ignore[arg-type]


def test_exception_before_start_response_saves_nothing(store: SessionStore,
                                                       backend: MemoryBackend) -> None:
    def broken(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ[ENVIRON_KEY]["x"] = 1
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        call(SessionMiddleware(broken, store))
    assert backend.items == {}


def test_second_start_response_with_exc_info_keeps_the_cookie(
        store: SessionStore, backend: MemoryBackend) -> None:
    seen: list[list[tuple[str, str]]] = []

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ[ENVIRON_KEY]["x"] = 1
        start_response("200 OK", [])
        try:
            raise ValueError("late")
        except ValueError:
            import sys
            start_response("500 Internal Server Error", [], sys.exc_info())
        return [b""]

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(headers)
        return lambda data: None

    SessionMiddleware(app, store)({"REQUEST_METHOD": "GET"}, start_response)
    assert len(seen) == 2 and set_cookies(seen[0]) == set_cookies(seen[1]) != []
    assert sum(1 for c, _ in backend.calls if c == "add") == 1


def test_replacing_the_session_with_junk_is_an_error(store: SessionStore) -> None:
    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        environ[ENVIRON_KEY] = {"not": "a session"}
        start_response("200 OK", [])
        return [b""]

    with pytest.raises(TypeError, match="memring Session"):
        call(SessionMiddleware(app, store))
