"""A Django cache backend on memring: ``memring.contrib.django.MemringCache``.

::

    CACHES = {
        "default": {
            "BACKEND": "memring.contrib.django.MemringCache",
            "LOCATION": ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"],
            "OPTIONS": {"backup": True, "failover_ttl": 30},
        }
    }
    SESSION_ENGINE = "django.contrib.sessions.backends.cache"

Built on Django's own ``BaseMemcachedCache``, as Django's ``PyMemcacheCache``
is: Django's key making, key validation and timeout handling apply unchanged.

The async methods (``aget``, ``aset``, ``aadd``, ``adelete``, ``atouch``,
``aget_many``, ``aset_many``, ``adelete_many``, ``aincr``, ``adecr``,
``aclear``, and Django's own built on them: ``aget_or_set``, ``ahas_key``)
are native: they await a :class:`memring.AsyncClient` (or
:class:`~memring.AsyncBackupClient`) of the same servers and options, on
the event loop of the caller, instead of running the sync client in a
thread.
"""

from __future__ import annotations

import re
import threading
import types
from collections.abc import Hashable, Iterable
from functools import cached_property
from typing import Any

import pymemcache.exceptions
from django.core.cache.backends.base import DEFAULT_TIMEOUT
from django.core.cache.backends.memcached import BaseMemcachedCache
from pymemcache.serde import pickle_serde

import memring
from memring.engine.serde import safe_serde
from memring.errors import ConfigError, ValueTooLarge

__all__ = ["MemringCache", "aclose_clients", "close_clients"]

_SERDES = {"pickle": pickle_serde, "safe": safe_serde}

#: What Django's memcached backends keep as ``self._lib``, the client
#: library: memring's clients under the names Django's ``PyMemcacheCache``
#: looks up, and pymemcache's ``exceptions`` module, since memring's errors
#: are those exceptions (code written for Django's ``PyMemcacheCache`` catches
#: ``cache._lib.exceptions.MemcacheClientError``).
LIBRARY = types.SimpleNamespace(Client=memring.Client, HashClient=memring.Client,
                                BackupClient=memring.BackupClient,
                                exceptions=pymemcache.exceptions)

_clients: dict[Hashable, Any] = {}
_clients_lock = threading.Lock()
#: The asyncio clients of the async methods, by the same keys.
_async_clients: dict[Hashable, Any] = {}


class MemringCache(BaseMemcachedCache):  # type: ignore[misc]  # Django ships no type hints
    """Django cache backend: a memring cluster client behind Django's memcached backend.

    ``LOCATION`` is a list of ``"host:port[:weight]"`` strings, or one string
    of them separated by ``;`` or ``,``. ``OPTIONS`` are
    :class:`memring.Client` keyword arguments (``timeouts``, ``failover``,
    ``health``, ``hash``, ``tls_context``, pymemcache's ``connect_timeout``
    and ``timeout``, ...), plus:

    ``backup``
        True to use :class:`memring.BackupClient`: every key on two nodes,
        so losing any one node loses no session.
    ``serde``
        **Defaults to pickle**, as Django's ``PyMemcacheCache`` does,
        because Django's cache API stores arbitrary Python objects. Pickle
        runs code when it loads: whoever can write to these memcached
        servers can run code in every process that reads from them, so keep
        the servers on a trusted network. When you cache only JSON-able data
        (Django's cache session backend stores a dict of such data), pass
        ``"serde": "safe"`` (memring's JSON serde, never pickle); ``"pickle"``
        or any pymemcache serde object works too.

    One :class:`memring.Client` is shared by all threads of a process for
    the same ``LOCATION`` and ``OPTIONS`` (it is thread-safe, and one health
    view per process is what its failover needs). ``close()``, which Django
    calls at the end of every request, keeps it open, as Django's
    ``PyLibMCCache`` does: the client's pools reconnect when they need to.
    :func:`close_clients` closes them all (at shutdown, or in tests).

    A value over memcached's item size limit raises
    :class:`~memring.ValueTooLarge` from ``set()``, after the key's old
    value is deleted, so a failed save of a session never leaves the
    previous version readable.
    """

    _servers: str | list[Any]
    _options: dict[str, Any]
    _class: type[memring.Client]
    _async_class: type[Any]

    def __init__(self, server: str | Iterable[str], params: dict[str, Any]) -> None:
        super().__init__(server, params, library=LIBRARY, value_not_found_exception=KeyError)
        options = dict(self._options)
        backup = options.pop("backup", False)
        if not isinstance(backup, bool):
            raise ConfigError(f"OPTIONS['backup'] must be True or False, got {backup!r}")
        self._class = memring.BackupClient if backup else memring.Client
        self._async_class = memring.AsyncBackupClient if backup else memring.AsyncClient
        serde = options.get("serde", "pickle")
        if isinstance(serde, str):
            if serde not in _SERDES:
                raise ConfigError(f"OPTIONS['serde'] must be 'pickle', 'safe' or a serde "
                                  f"object, got {serde!r}")
            serde = _SERDES[serde]
        self._options = {"allow_unicode_keys": True, "default_noreply": False,
                         **options, "serde": serde}

    @property
    def client_servers(self) -> list[str]:
        """``LOCATION`` as a list of server specs, blanks trimmed."""
        servers = [self._servers] if isinstance(self._servers, str) else self._servers
        out: list[Any] = []
        for spec in servers:
            if isinstance(spec, str):
                out.extend(s.strip() for s in re.split("[;,]", spec) if s.strip())
            else:
                out.append(spec)
        if not out:
            raise ConfigError("LOCATION names no memcached server")
        return out

    @cached_property
    def _cache(self) -> memring.Client:
        client: memring.Client = self._shared(self._class, _clients)
        return client

    @cached_property
    def _acache(self) -> Any:
        """The asyncio client of the async methods (one per process and configuration)."""
        return self._shared(self._async_class, _async_clients)

    def _shared(self, cls: type[Any], clients: dict[Hashable, Any]) -> Any:
        servers = self.client_servers
        key = (cls, tuple(_hashable(s) for s in servers),
               tuple(sorted((k, _hashable(v)) for k, v in self._options.items())))
        client = clients.get(key)
        if client is None:
            with _clients_lock:
                client = clients.get(key)
                if client is None:
                    client = cls(servers, **self._options)
                    clients[key] = client
        return client

    def set(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
            version: int | None = None) -> None:
        try:
            super().set(key, value, timeout, version)
        except ValueTooLarge:
            # Django's contract: a failed set must not leave the old value behind.
            self._cache.delete(self.make_and_validate_key(key, version=version))
            raise

    def close(self, **kwargs: Any) -> None:
        """Keep the shared client open (Django calls this after every request)."""

    async def aclose(self, **kwargs: Any) -> None:
        """Keep the shared clients open (Django calls this after every request)."""

    # -- native async methods: Django's memcached semantics on the asyncio client ----
    def _key(self, key: Any, version: int | None) -> Any:
        return self.make_and_validate_key(key, version=version)

    async def aget(self, key: Any, default: Any = None, version: int | None = None) -> Any:
        return await self._acache.get(self._key(key, version), default)

    async def aset(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> None:
        wire = self._key(key, version)
        try:
            stored = await self._acache.set(wire, value, self.get_backend_timeout(timeout))
        except ValueTooLarge:
            await self._acache.delete(wire)  # a failed set leaves no old value behind
            raise
        if not stored:
            await self._acache.delete(wire)

    async def aadd(self, key: Any, value: Any, timeout: Any = DEFAULT_TIMEOUT,
                   version: int | None = None) -> bool:
        return bool(await self._acache.add(self._key(key, version), value,
                                           self.get_backend_timeout(timeout)))

    async def atouch(self, key: Any, timeout: Any = DEFAULT_TIMEOUT,
                     version: int | None = None) -> bool:
        return bool(await self._acache.touch(self._key(key, version),
                                             self.get_backend_timeout(timeout)))

    async def adelete(self, key: Any, version: int | None = None) -> bool:
        return bool(await self._acache.delete(self._key(key, version)))

    async def aget_many(self, keys: Iterable[Any], version: int | None = None
                        ) -> dict[Any, Any]:
        by_wire = {self._key(key, version): key for key in keys}
        got = await self._acache.get_many(list(by_wire))
        return {by_wire[k]: v for k, v in got.items()}

    async def aset_many(self, data: dict[Any, Any], timeout: Any = DEFAULT_TIMEOUT,
                        version: int | None = None) -> list[Any]:
        by_wire = {self._key(key, version): key for key in data}
        failed = await self._acache.set_many(
            {wire: data[key] for wire, key in by_wire.items()}, self.get_backend_timeout(timeout))
        return [by_wire[k] for k in failed]

    async def adelete_many(self, keys: Iterable[Any], version: int | None = None) -> None:
        await self._acache.delete_many([self._key(key, version) for key in keys])

    async def aincr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        wire = self._key(key, version)
        value = await (self._acache.decr(wire, -delta) if delta < 0
                       else self._acache.incr(wire, delta))
        if value is None:
            raise ValueError(f"Key '{wire}' not found")
        return int(value)

    async def adecr(self, key: Any, delta: int = 1, version: int | None = None) -> int:
        return await self.aincr(key, -delta, version)

    async def aclear(self) -> None:
        await self._acache.flush_all()


def close_clients() -> None:
    """Close every thread-face client the Django backend opened in this process."""
    with _clients_lock:
        clients = list(_clients.values())
        _clients.clear()
    for client in clients:
        client.close()


async def aclose_clients() -> None:
    """Close every client the Django backend opened in this process, asyncio ones too."""
    close_clients()
    with _clients_lock:
        clients = list(_async_clients.values())
        _async_clients.clear()
    for client in clients:
        await client.close()


def _hashable(value: Any) -> Hashable:
    try:
        hash(value)
    except TypeError:
        return ("id", id(value))  # an unhashable option object: one client per object
    return value  # type: ignore[no-any-return]
