"""Small web apps that build a memring client at import time, as a pre-fork server loads them.

Each module is a WSGI application (``module:app``) for gunicorn ``--preload``:
the master imports it once, so the memring client it builds, and the
connection its first call opened, are inherited by every worker. Each
serves the same three routes, so one test drives them all:

``POST /login`` (form ``user=<name>``)
    log in as ``name``: the session gets a new id and ``visits = 0``.
``GET /whoami``
    ``{"user": <name or null>, "visits": <n>, "pid": <worker pid>}``; a
    logged-in user's ``visits`` goes up by one on every call (a session
    write per read).
``GET /ping``
    ``{"pid": <worker pid>}``, without touching the session.

Configured by environment variables, read at import:

``MEMRING_TEST_SERVERS``
    the memcached nodes, ``host:port`` separated by commas.
``MEMRING_TEST_CLIENT``
    ``Client`` (default) or ``BackupClient``.
"""

from __future__ import annotations

import os

import memring

__all__ = ["client_class", "servers", "WARMUP_KEY"]

#: The key every app reads once at import: the client is used before the fork.
WARMUP_KEY = "prefork:warmup"


def servers() -> list[str]:
    value = os.environ.get("MEMRING_TEST_SERVERS", "")
    found = [s.strip() for s in value.split(",") if s.strip()]
    if not found:
        raise RuntimeError("set MEMRING_TEST_SERVERS to host:port,host:port,...")
    return found


def client_class() -> type[memring.Client]:
    name = os.environ.get("MEMRING_TEST_CLIENT", "Client")
    classes: dict[str, type[memring.Client]] = {
        "Client": memring.Client, "BackupClient": memring.BackupClient}
    if name not in classes:
        raise RuntimeError(f"MEMRING_TEST_CLIENT must be Client or BackupClient, not {name!r}")
    return classes[name]
