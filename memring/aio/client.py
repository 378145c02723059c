"""The asyncio face of the single-copy engine: :class:`AsyncClient`."""

from __future__ import annotations

from memring.aio.face import AsyncFace, async_method
from memring.engine.api import declare
from memring.engine.single import SingleEngine

__all__ = ["AsyncClient"]


@declare(SingleEngine, async_method)
class AsyncClient(AsyncFace):
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
