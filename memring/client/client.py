"""The thread face of the single-copy engine: :class:`Client`.

Every method is the engine's operation (:mod:`memring.engine.single`) run
with blocking sockets; ``get`` and ``set`` also have a fast path for the
common case, a home node that is up, which calls its transport directly.
"""

from __future__ import annotations

from typing import Any

from memring.client.face import SyncFace, sync_method
from memring.engine.base import Engine
from memring.engine.compat import PymemcacheMethods
from memring.engine.health import NodeState
from memring.engine.keys import encode_key
from memring.engine.single import SingleEngine
from memring.errors import MemringError

__all__ = ["Client"]

_UP = NodeState.UP
_THIRTY_DAYS = 30 * 24 * 3600


class Client(SyncFace, PymemcacheMethods):
    """A Memcached cluster client with pymemcache's API.

    >>> client = Client(["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"])  # doctest: +SKIP
    >>> client.set("session:42", {"user": 7}, expire=1800)                         # doctest: +SKIP
    True

    ``servers`` are ``"host:port[:weight]"`` strings, ``(host, port)`` tuples,
    unix sockets (``"unix:/path"`` or ``"/path"``) or :class:`~memring.Node`
    objects; one ``(host, port)`` tuple alone is one server, as pymemcache's
    ``Client`` takes it. Everything else is keyword-only:

    failover
        ``Failover("next")`` (default) or ``Failover("fail")``, or the
        strings ``"next"``/``"fail"``.
    timeouts
        :class:`Timeouts`; default connect 0.5 s, read 1.0 s. Each bounds a
        whole call: a reply must be complete within the read timeout.
    health
        :class:`HealthPolicy`: when a node is down, how it is probed.
    serde
        pymemcache serde; the default stores bytes/str/int/JSON, never pickle.
    key_prefix
        Prepended to every key; the prefixed key is what gets routed.
    hash, vnodes
        Ring placement: ``"murmur3"`` (default) or ``"ketama"`` (placement
        compatible with libmemcached and twemproxy).
    max_item_size
        memcached's item size limit (its ``-I``, 1 MiB by default). A value
        that cannot fit raises :class:`ValueTooLarge` before any I/O; a reply
        claiming a larger value is refused before it is read.
    max_pool_size, tls_context
        Connections kept per node (default: one per concurrent thread), and
        TLS.

    Every keyword argument of pymemcache's ``Client``, ``PooledClient`` and
    ``HashClient`` is accepted too, with its meaning there, or refused with a
    reason (:data:`memring.engine.compat.ARGUMENTS`; the README has the
    table), so code and frameworks written for pymemcache work unchanged.
    As in pymemcache, a non-ASCII str key or value raises unless
    ``allow_unicode_keys=True`` / ``encoding="utf-8"``.

    Every write waits for the server's reply: a call that returns without
    error has stored its data. ``noreply=True`` makes store commands return
    True, as in pymemcache, but the reply is still awaited.
    """

    ENGINE = SingleEngine
    _engine: SingleEngine

    # -- the fast paths: a home node that is up ----------------------------
    def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` on a miss."""
        engine = self._engine
        kb = encode_key(key, engine.prefix, engine.unicode_keys)
        home = engine.ring.node_for(kb)
        transport, health = engine.homes[home]
        if health.state is not _UP or engine.verify_reads:
            return self._run(engine.get_kb(kb, default))
        try:
            raw = transport.get(kb)
        except MemringError as exc:
            engine.failed(home, exc)
            return self._run(engine.get_kb(kb, default, exc))
        health.succeeded()
        return default if raw is None else engine.home_value(kb, raw, default, home)

    def set(self, key: str | bytes, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> bool:
        """Store ``value``. True once the node has acknowledged it."""
        engine = self._engine
        kb, item = self._store_args(key, value, expire, noreply, flags)
        version = engine.hlc.now()
        home = engine.ring.node_for(kb)
        transport, health = engine.homes[home]
        if health.state is not _UP or not 0 <= expire <= _THIRTY_DAYS:  # or a delete, a date
            ok = self._run(engine.set_kb(kb, item, expire, version))
        else:
            try:
                ok = transport.set(kb, engine.home_item(item, version, expire), expire)
            except MemringError as exc:
                engine.failed(home, exc)
                ok = self._run(engine.set_kb(kb, item, expire, version, exc))
            else:
                health.succeeded()
        if noreply is None:
            noreply = engine.settings.default_noreply
        return True if noreply else bool(ok)

    # -- everything else is the engine's operation, run here ----------------
    gets = sync_method(SingleEngine.gets)
    add = sync_method(SingleEngine.add)
    replace = sync_method(SingleEngine.replace)
    append = sync_method(SingleEngine.append)
    prepend = sync_method(SingleEngine.prepend)
    cas = sync_method(SingleEngine.cas)
    delete = sync_method(SingleEngine.delete)
    incr = sync_method(SingleEngine.incr)
    decr = sync_method(SingleEngine.decr)
    touch = sync_method(SingleEngine.touch)
    get_many = sync_method(SingleEngine.get_many)
    get_multi = get_many
    gets_many = sync_method(SingleEngine.gets_many)
    gets_multi = gets_many
    set_many = sync_method(SingleEngine.set_many)
    set_multi = set_many
    delete_many = sync_method(SingleEngine.delete_many)
    delete_multi = delete_many
    stats = sync_method(SingleEngine.stats)
    version = sync_method(SingleEngine.version)
    flush_all = sync_method(SingleEngine.flush_all)
    cache_memlimit = sync_method(Engine.cache_memlimit)
    raw_command = sync_method(Engine.raw_command)
    shutdown = sync_method(Engine.shutdown)
    quit = sync_method(Engine.quit)
