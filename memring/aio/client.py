"""The asyncio face of the single-copy engine: :class:`AsyncClient`."""

from __future__ import annotations

from typing import Any

from memring.aio.face import AsyncFace, async_method
from memring.engine.api import declare
from memring.engine.compat import PymemcacheMethods
from memring.engine.health import NodeState
from memring.engine.keys import encode_key
from memring.engine.single import SingleEngine
from memring.errors import MemringError

__all__ = ["AsyncClient"]

_UP = NodeState.UP
_THIRTY_DAYS = 30 * 24 * 3600


@declare(SingleEngine, async_method)
class AsyncClient(AsyncFace, PymemcacheMethods):
    """:class:`memring.Client` for asyncio: the same constructor, policies, errors,
    serde, key rules and guarantees (Invariant S), with ``async def`` methods.

    >>> async def view():                                                    # doctest: +SKIP
    ...     async with AsyncClient(["10.0.0.1:11211", "10.0.0.2:11211"]) as client:
    ...         await client.set("session:42", {"user": 7}, expire=1800)
    ...         return await client.get("session:42")

    Each node has a pool of at most ``max_pool_size`` connections (64 when
    None); a call past it waits for one, at most the connect timeout. A task
    cancelled in the middle of a call closes the connection it was using:
    no connection is ever reused out of step. Background probes, handoffs
    and keep-alives run as tasks of the loop the client is used on and stop
    on :meth:`close`. ``metrics()``, ``route()`` and the other methods that
    do no I/O are plain methods.
    """

    ENGINE = SingleEngine
    _engine: SingleEngine

    # -- the fast paths: a home node that is up (else the engine's operation) ----
    async def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of ``key``, or ``default`` on a miss."""
        engine = self._engine
        kb = encode_key(key, engine.prefix, engine.unicode_keys)
        home = engine.ring.node_for(kb)
        transport, health = engine.homes[home]
        if health.state is _UP and not engine.verify_reads:
            try:
                raw = await transport.get(kb)
            except MemringError as exc:
                engine.failed(home, exc)
                return await self._run(engine.get_kb(kb, default, exc))
            health.succeeded()
            return default if raw is None else engine.home_value(kb, raw, default, home)
        return await self._run(engine.get_kb(kb, default))

    async def set(self, key: str | bytes, value: Any, expire: int = 0,
                  noreply: bool | None = None, flags: int | None = None) -> bool:
        """Store ``value``. True once the node has acknowledged it."""
        engine = self._engine
        kb, item = self._store_args(key, value, expire, noreply, flags)
        version = engine.hlc.now()
        home = engine.ring.node_for(kb)
        transport, health = engine.homes[home]
        ok: Any = None
        if health.state is _UP and 0 <= expire <= _THIRTY_DAYS:
            try:
                ok = await transport.set(kb, engine.home_item(item, version, expire), expire)
                health.succeeded()
            except MemringError as exc:
                engine.failed(home, exc)
                ok = await self._run(engine.set_kb(kb, item, expire, version, exc))
        else:  # a node down or warming, a delete, a date: the engine's whole operation
            ok = await self._run(engine.set_kb(kb, item, expire, version))
        return bool(engine.replied(noreply, ok))
