"""Django's cache session backend on memring's cache backend; the client is built and used
at import (``caches["default"].get``), as a settings module or AppConfig.ready() would."""

from __future__ import annotations

import os

import django
from django.conf import settings
from django.http import HttpRequest, JsonResponse
from django.urls import path

from tests.apps import WARMUP_KEY, client_class, servers

_backup = client_class().__name__ == "BackupClient"

settings.configure(
    DEBUG=False,
    SECRET_KEY="test-only-not-secret",
    ALLOWED_HOSTS=["127.0.0.1"],
    INSTALLED_APPS=["django.contrib.sessions"],
    MIDDLEWARE=["django.contrib.sessions.middleware.SessionMiddleware"],
    ROOT_URLCONF=__name__,
    SESSION_ENGINE="django.contrib.sessions.backends.cache",
    DATABASES={},
    USE_TZ=True,
    CACHES={"default": {
        "BACKEND": "memring.contrib.django.MemringCache",
        "LOCATION": ",".join(servers()),
        "KEY_PREFIX": "django",
        "OPTIONS": {"backup": True, "serde": "safe"} if _backup else {},
    }},
)
django.setup()


def login(request: HttpRequest) -> JsonResponse:
    request.session.flush()  # a new key, as django.contrib.auth.login does
    request.session["user"] = request.POST["user"]
    request.session["visits"] = 0
    return JsonResponse({"ok": True, "pid": os.getpid()})


def whoami(request: HttpRequest) -> JsonResponse:
    user = request.session.get("user")
    if user is not None:
        request.session["visits"] = request.session.get("visits", 0) + 1
    return JsonResponse({"user": user, "visits": request.session.get("visits"),
                         "pid": os.getpid()})


def ping(request: HttpRequest) -> JsonResponse:
    return JsonResponse({"pid": os.getpid()})


urlpatterns = [path("login", login), path("whoami", whoami), path("ping", ping)]

from django.core.cache import caches  # noqa: E402
from django.core.wsgi import get_wsgi_application  # noqa: E402

caches["default"].get(WARMUP_KEY)  # used before the fork: a pooled connection is open now

app = get_wsgi_application()
