"""Django's cache framework and cache session backend on memring, against real memcached.

This module configures Django itself (``settings.configure``) and is its own
URLconf: login, whoami and logout views over ``django.contrib.auth``.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import pytest

django = pytest.importorskip("django")

from django.conf import settings  # noqa: E402
from django.contrib.auth import authenticate, login, logout  # noqa: E402
from django.http import HttpRequest, JsonResponse  # noqa: E402
from django.test.utils import override_settings  # noqa: E402
from django.urls import path  # noqa: E402
from pymemcache.serde import pickle_serde  # noqa: E402

import memring  # noqa: E402
from memring import BackupClient, Client, ValueTooLarge  # noqa: E402
from memring.contrib.django import MemringCache, aclose_clients, close_clients  # noqa: E402
from memring.engine.serde import safe_serde  # noqa: E402
from memring.tools.local import LocalCluster  # noqa: E402

pytestmark = pytest.mark.integration

SESSION_PREFIX = "django.contrib.sessions.cache"


# -- the URLconf (ROOT_URLCONF is this module) ---------------------------------------


def login_view(request: HttpRequest) -> JsonResponse:
    user = authenticate(request, username=request.POST["username"],
                        password=request.POST["password"])
    if user is None:
        return JsonResponse({"ok": False}, status=403)
    login(request, user)  # rotates the session key (session fixation)
    request.session["visits"] = 0
    return JsonResponse({"ok": True})


def whoami_view(request: HttpRequest) -> JsonResponse:
    if request.user.is_authenticated:
        request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse({"user": request.user.get_username() or None,
                         "visits": request.session.get("visits")})


def logout_view(request: HttpRequest) -> JsonResponse:
    logout(request)
    return JsonResponse({"ok": True})


def anonymous_view(request: HttpRequest) -> JsonResponse:
    request.session["cart"] = ["book"]
    return JsonResponse({"ok": True})


urlpatterns = [
    path("login", login_view),
    path("whoami", whoami_view),
    path("logout", logout_view),
    path("anonymous", anonymous_view),
]


# -- fixtures ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_cluster() -> Iterator[LocalCluster]:
    with LocalCluster(3) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def django_setup(django_cluster: LocalCluster) -> Iterator[None]:
    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="test-only-not-secret",
            ALLOWED_HOSTS=["testserver"],
            INSTALLED_APPS=[
                "django.contrib.auth",
                "django.contrib.contenttypes",
                "django.contrib.sessions",
            ],
            MIDDLEWARE=[
                "django.contrib.sessions.middleware.SessionMiddleware",
                "django.contrib.auth.middleware.AuthenticationMiddleware",
            ],
            DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3",
                                   "NAME": ":memory:"}},
            ROOT_URLCONF=__name__,
            SESSION_ENGINE="django.contrib.sessions.backends.cache",
            PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
            USE_TZ=True,
            CACHES={"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}},
        )
        django.setup()
    from django.contrib.auth.models import User
    from django.core.management import call_command

    call_command("migrate", run_syncdb=True, verbosity=0)
    if not User.objects.filter(username="alice").exists():
        User.objects.create_user("alice", password="wonderland")
    yield
    close_clients()


CONFIGS = {
    "pickle": {},
    "safe-backup": {"serde": "safe", "backup": True},
}


@pytest.fixture(params=list(CONFIGS))
def memring_cache(request: pytest.FixtureRequest, django_setup: None,
                  django_cluster: LocalCluster) -> Iterator[dict[str, Any]]:
    # Generous timeouts: a busy machine must not make a node look down (the
    # test's separate "peek" client would then look on another node).
    options: dict[str, Any] = {"connect_timeout": 2.0, "timeout": 2.0, **CONFIGS[request.param]}
    caches = {"default": {"BACKEND": "memring.contrib.django.MemringCache",
                          "LOCATION": ";".join(django_cluster.servers),
                          "KEY_PREFIX": request.param,  # each config its own keys
                          "OPTIONS": options}}
    with override_settings(CACHES=caches):
        yield {"key_prefix": request.param, **options}
    close_clients()


@pytest.fixture
def peek(django_cluster: LocalCluster, memring_cache: dict[str, Any]) -> Iterator[Client]:
    """A separate memring client over the same servers: what is really in memcached."""
    serde = safe_serde if memring_cache.get("serde") == "safe" else pickle_serde
    client = Client(django_cluster.servers, serde=serde)
    yield client
    client.close()


# -- the session flow ------------------------------------------------------------------


def session_key(memring_cache: dict[str, Any], key: str) -> str:
    """The memcached key of Django session ``key`` (Django's make_key)."""
    return f"{memring_cache['key_prefix']}:1:{SESSION_PREFIX}{key}"


def test_login_whoami_logout(memring_cache: dict[str, Any], peek: Client) -> None:
    from django.test import Client as DjangoClient

    def stored(key: str) -> Any:
        return peek.get(session_key(memring_cache, key))

    web = DjangoClient()
    assert web.get("/whoami").json() == {"user": None, "visits": None}

    # An anonymous session first: login must replace its key.
    assert web.get("/anonymous").status_code == 200
    anon_key = web.cookies[settings.SESSION_COOKIE_NAME].value
    assert stored(anon_key) == {"cart": ["book"]}

    assert web.post("/login", {"username": "alice", "password": "nope"}).status_code == 403
    assert web.post("/login", {"username": "alice", "password": "wonderland"}).json() == {
        "ok": True}
    key = web.cookies[settings.SESSION_COOKIE_NAME].value
    assert key != anon_key
    assert stored(anon_key) is None  # the old key is gone
    record = stored(key)
    assert record["_auth_user_id"] and record["cart"] == ["book"]

    assert web.get("/whoami").json() == {"user": "alice", "visits": 1}
    assert web.get("/whoami").json() == {"user": "alice", "visits": 2}
    assert stored(key)["visits"] == 2

    assert web.post("/logout").json() == {"ok": True}
    assert stored(key) is None
    assert web.get("/whoami").json() == {"user": None, "visits": None}


def test_a_second_browser_is_not_logged_in(memring_cache: dict[str, Any]) -> None:
    from django.test import Client as DjangoClient

    alice, other = DjangoClient(), DjangoClient()
    alice.post("/login", {"username": "alice", "password": "wonderland"})
    assert alice.get("/whoami").json()["user"] == "alice"
    assert other.get("/whoami").json()["user"] is None
    # a forged cookie reads as no session
    other.cookies[settings.SESSION_COOKIE_NAME] = "x" * 32
    assert other.get("/whoami").json()["user"] is None


# -- the cache API ---------------------------------------------------------------------


class Point:
    def __init__(self, x: int) -> None:
        self.x = x


def test_cache_api(memring_cache: dict[str, Any]) -> None:
    from django.core.cache import caches

    cache = caches["default"]
    assert isinstance(cache, MemringCache)
    assert cache.make_key("a") == f"{memring_cache['key_prefix']}:1:a"
    expected_class = BackupClient if memring_cache.get("backup") else Client
    assert type(cache._cache) is expected_class
    cache.set("a", {"x": 1}, 30)
    assert cache.get("a") == {"x": 1}
    assert cache.get("missing", "dflt") == "dflt"
    assert cache.has_key("a") and not cache.has_key("missing")
    assert cache.add("a", 2) is False
    assert cache.add("b", 2) is True
    assert cache.get_many(["a", "b", "c"]) == {"a": {"x": 1}, "b": 2}
    cache.set_many({"c": 3, "d": 4})
    assert cache.incr("c") == 4 and cache.decr("c", 2) == 2
    with pytest.raises(ValueError):
        cache.incr("nope")
    assert cache.touch("d", 60) is True
    cache.delete_many(["c", "d"])
    assert cache.get_many(["c", "d"]) == {}
    assert cache.delete("a") is True and cache.get("a") is None
    cache.set("zero", 1, 0)  # Django: timeout 0 means "expire now"
    assert cache.get("zero") is None
    cache.set("unicode-ключ", "значение")
    assert cache.get("unicode-ключ") == "значение"
    if memring_cache.get("serde") == "safe":
        with pytest.raises(TypeError):  # SerializationError: no pickle
            cache.set("obj", Point(1))
    else:
        cache.set("obj", Point(1))
        assert cache.get("obj").x == 1


def test_failed_set_of_a_too_large_value_deletes_the_old_value(
        memring_cache: dict[str, Any]) -> None:
    from django.core.cache import caches

    cache = caches["default"]
    cache.set("big", "small")
    with pytest.raises(ValueTooLarge):
        cache.set("big", "x" * (2 * 1024 * 1024))
    assert cache.get("big") is None


def test_one_client_per_process_and_close_keeps_it_usable(
        memring_cache: dict[str, Any]) -> None:
    from django.core.cache import caches

    cache = caches["default"]
    seen = []

    def in_thread() -> None:  # Django keeps one cache object per thread
        seen.append(caches["default"]._cache)

    t = threading.Thread(target=in_thread)
    t.start()
    t.join()
    assert seen == [cache._cache]
    cache.close()  # what Django does after every request
    cache.set("after-close", 1)
    assert cache.get_many(["after-close", "x"]) == {"after-close": 1}


@pytest.mark.parametrize(("location", "expected"), [
    ("127.0.0.1:1;127.0.0.1:2", ["127.0.0.1:1", "127.0.0.1:2"]),
    ("127.0.0.1:1, 127.0.0.1:2 ;", ["127.0.0.1:1", "127.0.0.1:2"]),
    (["127.0.0.1:1", "127.0.0.1:2:3"], ["127.0.0.1:1", "127.0.0.1:2:3"]),
    ("127.0.0.1:1", ["127.0.0.1:1"]),
])
def test_location_parsing(location: Any, expected: list[str]) -> None:
    assert MemringCache(location, {}).client_servers == expected


@pytest.mark.parametrize("options", [{"serde": "yaml"}, {"backup": "yes"}])
def test_bad_options(options: dict[str, Any]) -> None:
    with pytest.raises(memring.ConfigError):
        MemringCache("127.0.0.1:1", {"OPTIONS": options})


# -- native async methods --------------------------------------------------------------


async def async_counter_view(request: HttpRequest) -> JsonResponse:
    from django.core.cache import cache

    n = await cache.aget("async:counter", 0) + 1
    await cache.aset("async:counter", n)
    return JsonResponse({"n": n})


urlpatterns.append(path("acount", async_counter_view))


def test_async_methods_are_native_and_match_the_sync_ones(memring_cache: dict[str, Any],
                                                          peek: Client) -> None:
    from django.core.cache import cache
    from django.test import AsyncClient as DjangoAsyncClient

    async def main() -> None:
        web = DjangoAsyncClient()
        for n in (1, 2, 3):
            assert (await web.get("/acount")).json() == {"n": n}
        assert await cache.aadd("async:a", 1) is True
        assert await cache.aadd("async:a", 2) is False
        assert await cache.aget("async:a") == 1
        assert await cache.aincr("async:a", 5) == 6
        assert await cache.adecr("async:a", 2) == 4
        with pytest.raises(ValueError):
            await cache.aincr("async:missing")
        assert await cache.aset_many({"async:m1": [1], "async:m2": {"x": 2}}) == []
        assert await cache.aget_many(["async:m1", "async:m2", "async:none"]) == {
            "async:m1": [1], "async:m2": {"x": 2}}
        assert await cache.atouch("async:m1", 60) is True
        assert await cache.ahas_key("async:m2") is True
        assert await cache.aget_or_set("async:gos", "made") == "made"
        assert await cache.adelete("async:m2") is True
        await cache.adelete_many(["async:m1", "async:gos"])
        assert await cache.aget_many(["async:m1", "async:m2", "async:gos"]) == {}
        # A value over the item limit raises, and leaves no old value behind.
        await cache.aset("async:big", "small")
        with pytest.raises(ValueTooLarge):
            await cache.aset("async:big", "x" * (2 << 20))
        assert await cache.aget("async:big") is None
        # The sync API sees what the async one wrote: same keys, same values.
        assert peek.get(f"{memring_cache['key_prefix']}:1:async:counter") == 3
        # Native: the asyncio client did the work, no sync client was made for it.
        assert isinstance(cache._acache, (memring.AsyncClient, memring.AsyncBackupClient))
        assert "_cache" not in vars(cache)
        ops = sum(n["ops"] for n in cache._acache.metrics()["nodes"].values())
        assert ops >= 20
        await aclose_clients()

    asyncio.run(main())
