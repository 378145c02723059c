"""Talking to one node: a pymemcache connection pool, and the error seam.

Values cross this layer as raw ``(bytes, flags)`` items; serialization and
memring's markers live above it. :class:`NodeTransport` is the seam the
tests replace with fake nodes.

This module is the one place where pymemcache and socket errors become
memring errors (:func:`translate_errors`).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Protocol
from urllib.parse import unquote_to_bytes

from pymemcache.client.base import Client, PooledClient, _readline
from pymemcache.exceptions import (
    MemcacheClientError,
    MemcacheError,
    MemcacheServerError,
    MemcacheUnexpectedCloseError,
)

from memring.client.policies import Timeouts
from memring.errors import NodeTimeout, NodeUnavailable, ServerError
from memring.hashring.node import Node

__all__ = ["Item", "NodeTransport", "PymemcacheTransport", "RawSerde", "raw_serde",
           "translate_errors"]

#: A raw stored value: the bytes and the 32-bit flags.
Item = tuple[bytes, int]


class NodeTransport(Protocol):
    """Raw operations on one node. Every method raises only memring errors."""

    node: Node

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, Item]: ...
    def gets_many(self, keys: Sequence[bytes]) -> dict[bytes, tuple[Item, bytes]]: ...
    def set(self, key: bytes, item: Item, expire: int) -> bool: ...
    def set_many(self, items: Mapping[bytes, Item], expire: int) -> list[bytes]: ...
    def add(self, key: bytes, item: Item, expire: int) -> bool: ...
    def replace(self, key: bytes, item: Item, expire: int) -> bool: ...
    def append(self, key: bytes, data: bytes) -> bool: ...
    def prepend(self, key: bytes, data: bytes) -> bool: ...
    def cas(self, key: bytes, item: Item, cas: bytes, expire: int) -> bool | None: ...
    def delete(self, key: bytes) -> bool: ...
    def delete_many(self, keys: Sequence[bytes]) -> None: ...
    def incr(self, key: bytes, delta: int) -> int | None: ...
    def decr(self, key: bytes, delta: int) -> int | None: ...
    def touch(self, key: bytes, expire: int) -> bool: ...
    def stats(self, *args: str) -> dict[bytes, Any]: ...
    def version(self) -> bytes: ...
    def flush_all(self, delay: int) -> bool: ...
    def dump_keys(self) -> list[bytes]: ...
    def close(self) -> None: ...


#: What :func:`translate_errors` translates; anything else passes through.
_TRANSLATED = (MemcacheError, OSError)


def _translate(exc: BaseException, node: Node, key: object) -> NodeUnavailable | ServerError:
    """memring's error for one of :data:`_TRANSLATED` (raise it ``from exc``)."""
    if isinstance(exc, TimeoutError):
        return NodeTimeout("timed out", node=node, key=key)
    if isinstance(exc, MemcacheUnexpectedCloseError):
        return NodeUnavailable("connection closed by the server", node=node, key=key)
    if isinstance(exc, (MemcacheServerError, MemcacheClientError)):
        return ServerError(f"server error: {exc}", node=node, key=key)
    if isinstance(exc, MemcacheError):
        return ServerError(f"unexpected reply: {exc}", node=node, key=key)
    # refused, reset, unreachable, TLS errors
    return NodeUnavailable(f"connection failed: {exc}", node=node, key=key)


@contextmanager
def translate_errors(node: Node, key: object = None) -> Iterator[None]:
    """Map pymemcache/socket errors to memring's tree, keeping the cause."""
    try:
        yield
    except _TRANSLATED as exc:
        raise _translate(exc, node, key) from exc


#: Errors of a pooled socket whose server went away (closed by the peer).
_STALE = (MemcacheUnexpectedCloseError, BrokenPipeError, ConnectionResetError)


class RawSerde:
    """A pymemcache serde that hands ``(bytes, flags)`` items through untouched.

    The transport stores items this way; a plain pymemcache client given it
    shows what a node really holds (tests and tools use it so).
    """

    @staticmethod
    def serialize(key: bytes, value: Item) -> Item:
        return value

    @staticmethod
    def deserialize(key: bytes, value: bytes, flags: int) -> Item:
        return (value, flags)


raw_serde = RawSerde()


class PymemcacheTransport:
    """One node over a thread-safe pymemcache ``PooledClient``.

    A connection that errored or timed out is closed by pymemcache and
    dropped from the pool, never reused. A pooled connection that the
    server closed (it restarted) is retried once on a fresh connection;
    a timeout is never retried here (the caller already waited once).
    """

    def __init__(
        self,
        node: Node,
        *,
        timeouts: Timeouts,
        max_pool_size: int | None = None,
        tls_context: ssl.SSLContext | None = None,
    ) -> None:
        self.node = node
        self._timeouts = timeouts
        self._tls_context = tls_context
        #: Called (with the node) after a call had to reconnect because the
        #: server had closed its pooled connections: it may have restarted.
        self.on_reconnect: Callable[[Node], None] | None = None
        self._pool = PooledClient(
            node.address,
            serde=raw_serde,
            connect_timeout=timeouts.connect,
            timeout=timeouts.read,
            no_delay=True,
            max_pool_size=max_pool_size,
            default_noreply=False,
            tls_context=tls_context,
        )

    def _once(self, key: object, method: str, args: tuple[Any, ...],
              kwargs: dict[str, Any]) -> Any:
        """One call on a pooled connection, as ``PooledClient`` makes it (a
        connection that raised is closed and dropped), with errors translated
        as :func:`translate_errors` does, minus its per-call generator."""
        pool = self._pool.client_pool
        client = pool.get()
        try:
            result = getattr(client, method)(*args, **kwargs)
        except Exception as exc:
            pool.destroy(client)
            if isinstance(exc, _TRANSLATED):
                raise _translate(exc, self.node, key) from exc
            raise
        pool.release(client)
        return result

    def _call(self, key: object, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._once(key, method, args, kwargs)
        except NodeUnavailable as exc:
            if not isinstance(exc.__cause__, _STALE):
                raise
        # The server closed a pooled connection: it restarted (or dropped its
        # connections). The other idle pooled sockets to the old process are
        # dead too: retry past them, each dropped as it fails (at once: the
        # peer is gone). Never close the pool here: that would close sockets
        # other threads are using, and their calls would fail with
        # AttributeError or EBADF instead of a memring error.
        for _ in range(len(self._pool.client_pool.free)):
            try:
                result = self._once(key, method, args, kwargs)
                break
            except NodeUnavailable as again:
                if not isinstance(again.__cause__, _STALE):
                    raise
        else:
            result = self._once(key, method, args, kwargs)
        if self.on_reconnect is not None:
            self.on_reconnect(self.node)
        return result

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, Item]:
        if len(keys) == 1:
            k = keys[0]
            item = self._call(k, "get", k)
            return {} if item is None else {k: item}
        return dict(self._call(keys, "get_many", keys))

    def gets_many(self, keys: Sequence[bytes]) -> dict[bytes, tuple[Item, bytes]]:
        return dict(self._call(keys, "gets_many", keys))

    def set(self, key: bytes, item: Item, expire: int) -> bool:
        return bool(self._call(key, "set", key, item, expire, noreply=False))

    def set_many(self, items: Mapping[bytes, Item], expire: int) -> list[bytes]:
        return list(self._call(list(items), "set_many", dict(items), expire, noreply=False))

    def add(self, key: bytes, item: Item, expire: int) -> bool:
        return bool(self._call(key, "add", key, item, expire, noreply=False))

    def replace(self, key: bytes, item: Item, expire: int) -> bool:
        return bool(self._call(key, "replace", key, item, expire, noreply=False))

    def append(self, key: bytes, data: bytes) -> bool:
        return bool(self._call(key, "append", key, (data, 0), noreply=False))

    def prepend(self, key: bytes, data: bytes) -> bool:
        return bool(self._call(key, "prepend", key, (data, 0), noreply=False))

    def cas(self, key: bytes, item: Item, cas: bytes, expire: int) -> bool | None:
        result: bool | None = self._call(key, "cas", key, item, cas, expire, noreply=False)
        return result

    def delete(self, key: bytes) -> bool:
        return bool(self._call(key, "delete", key, noreply=False))

    def delete_many(self, keys: Sequence[bytes]) -> None:
        self._call(keys, "delete_many", keys, noreply=False)

    def incr(self, key: bytes, delta: int) -> int | None:
        result: int | None = self._call(key, "incr", key, delta, noreply=False)
        return result

    def decr(self, key: bytes, delta: int) -> int | None:
        result: int | None = self._call(key, "decr", key, delta, noreply=False)
        return result

    def touch(self, key: bytes, expire: int) -> bool:
        return bool(self._call(key, "touch", key, expire, noreply=False))

    def stats(self, *args: str) -> dict[bytes, Any]:
        return dict(self._call(None, "stats", *args))

    def version(self) -> bytes:
        return bytes(self._call(None, "version"))

    def flush_all(self, delay: int) -> bool:
        return bool(self._call(None, "flush_all", delay, noreply=False))

    def dump_keys(self) -> list[bytes]:
        """Every key the node holds (``lru_crawler metadump all``), for rebuilding a copy.

        Read on a connection of its own: the reply can be megabytes, and
        pymemcache's ``raw_command`` keeps only the last chunk of a long
        reply, so the lines are read with pymemcache's line reader instead.
        """
        conn = Client(self.node.address, connect_timeout=self._timeouts.connect,
                      timeout=self._timeouts.read, tls_context=self._tls_context)
        keys: list[bytes] = []
        with translate_errors(self.node):
            try:
                conn._connect()
                assert conn.sock is not None
                conn.sock.sendall(b"lru_crawler metadump all\r\n")
                _, reply = _readline(conn.sock, b"")  # entries end in "\n", the reply in "\r\n"
            finally:
                conn.close()
        for line in reply.split(b"\n"):
            if line.startswith(b"key="):
                keys.append(unquote_to_bytes(line[4:].split(b" ", 1)[0]))
            elif line and line != b"END":
                raise ServerError(f"metadump refused: {line[:80].decode(errors='replace')}",
                                  node=self.node)
        return keys

    def close(self) -> None:
        self._pool.close()
