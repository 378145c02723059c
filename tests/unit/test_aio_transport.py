"""The asyncio transport against scripted servers on loopback (no memcached needed).

Each server is an ``asyncio.start_server`` whose handler says what a node
does: answer, answer late, never answer, answer too much, hang up. The
tests check what the module docstring of :mod:`memring.aio.transport`
promises: every call bounded, a connection whose call did not end cleanly
(cancelled included) closed and never reused, a bounded pool.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Awaitable, Callable

import pytest

from memring import (
    AsyncClient,
    Failover,
    HealthPolicy,
    Node,
    NodeState,
    NodeTimeout,
    PoolExhausted,
    ProtocolError,
    Timeouts,
)
from memring.aio.transport import AsyncTransport

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TIMEOUTS = Timeouts(connect=0.3, read=0.2)


class Server:
    """A scripted node: counts its connections; ``reply(line)`` decides each answer."""

    def __init__(self, reply: Callable[[bytes], Awaitable[bytes | None]]) -> None:
        self.reply = reply
        self.connections = 0
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.base_events.Server | None = None
        self.port = 0

    async def start(self) -> Server:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while line := await reader.readline():
                answer = await self.reply(line)
                if answer is None:
                    break  # hang up
                writer.write(answer)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    def close(self) -> None:
        assert self.server is not None
        self.server.close()

    def hang_up(self) -> None:
        """Close every connection from this side, as a restarted memcached would have."""
        for writer in self.writers:
            writer.close()

    @property
    def node(self) -> Node:
        return Node("127.0.0.1", self.port)


def transport(server: Server, pool: int = 4) -> AsyncTransport:
    return AsyncTransport(server.node, timeouts=TIMEOUTS, max_item_size=1 << 20,
                          max_pool_size=pool)


async def answer(line: bytes, delay: float = 0.0) -> bytes:
    if delay:
        await asyncio.sleep(delay)
    if line.startswith(b"get "):
        key = line.split()[1]
        return b"VALUE %s 0 %d\r\n%s\r\nEND\r\n" % (key, len(key), key)
    return b"ERROR\r\n"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(coro)  # type: ignore[arg-type]


def test_a_reply_comes_back_and_the_connection_is_reused() -> None:
    async def main() -> None:
        server = await Server(answer).start()
        t = transport(server)
        for key in (b"a", b"b", b"c"):
            assert await t.get(key) == (key, 0)
        assert server.connections == 1 and len(t) == 1
        t.close()
        server.close()
    run(main())


def test_a_node_that_never_answers_times_out_and_its_connection_is_closed() -> None:
    async def never(line: bytes) -> bytes:
        await asyncio.sleep(30)
        return b""

    async def main() -> None:
        server = await Server(never).start()
        t = transport(server)
        start = time.monotonic()
        with pytest.raises(NodeTimeout):
            await t.get(b"k")
        assert time.monotonic() - start < TIMEOUTS.read + 0.15
        assert len(t) == 0
        t.close()
        server.close()
    run(main())


def test_a_call_cancelled_mid_reply_closes_its_connection() -> None:
    async def late(line: bytes) -> bytes:
        return await answer(line, delay=0.1)

    async def main() -> None:
        server = await Server(late).start()
        t = transport(server)
        task = asyncio.ensure_future(t.get(b"first"))
        await asyncio.sleep(0.03)  # the request is written, its reply not back
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert t.closed_on_cancel == 1 and len(t) == 0
        # The late reply to "first" must never be read as the reply of the next call.
        assert await t.get(b"second") == (b"second", 0)
        assert server.connections == 2
        t.close()
        server.close()
    run(main())


def test_asyncio_timeout_around_the_caller_never_leaves_a_connection_out_of_step() -> None:
    async def late(line: bytes) -> bytes:
        return await answer(line, delay=0.05)

    async def main() -> None:
        server = await Server(late).start()
        t = transport(server, pool=2)
        for i in range(10):
            with pytest.raises(TimeoutError):
                await asyncio.wait_for(t.get(b"x%d" % i), 0.01)
        for i in range(5):
            assert await t.get(b"y%d" % i) == (b"y%d" % i, 0)
        assert t.closed_on_cancel == 10
        t.close()
        server.close()
    run(main())


def test_bytes_after_the_reply_close_the_connection() -> None:
    async def too_much(line: bytes) -> bytes:
        return await answer(line) + b"END\r\n"

    async def main() -> None:
        server = await Server(too_much).start()
        t = transport(server)
        with pytest.raises(ProtocolError):
            await t.get(b"k")
        assert len(t) == 0
        t.close()
        server.close()
    run(main())


def test_the_pool_is_bounded_and_a_call_past_it_waits_then_gives_up() -> None:
    async def slow(line: bytes) -> bytes:
        return await answer(line, delay=0.1)

    async def never(line: bytes) -> bytes:
        await asyncio.sleep(30)
        return b""

    async def main() -> None:
        server = await Server(slow).start()
        t = transport(server, pool=1)
        got = await asyncio.gather(*(t.get(b"k%d" % i) for i in range(3)))
        assert got == [(b"k%d" % i, 0) for i in range(3)]
        assert server.connections == 1  # the others waited for the one connection
        t.close()
        server.close()

        hung = await Server(never).start()
        t = AsyncTransport(hung.node, timeouts=Timeouts(connect=0.05, read=1.0),
                           max_item_size=1 << 20, max_pool_size=1)
        first = asyncio.ensure_future(t.get(b"a"))
        await asyncio.sleep(0.01)
        with pytest.raises(PoolExhausted):
            await t.get(b"b")
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first
        t.close()
        hung.close()
    run(main())


def test_a_connection_the_server_closed_is_replaced_and_reported() -> None:
    async def main() -> None:
        server = await Server(answer).start()
        t = transport(server)
        reconnects: list[Node] = []
        t.on_reconnect = reconnects.append
        assert await t.get(b"a") == (b"a", 0)
        server.hang_up()
        await asyncio.sleep(0.05)
        assert await t.get(b"b") == (b"b", 0)
        assert reconnects == [server.node]
        assert server.connections == 2
        t.close()
        server.close()
    run(main())


def test_background_probes_are_tasks_that_stop_on_close() -> None:
    async def main() -> None:
        server = await Server(answer).start()
        port = server.port
        server.close()
        await server.server.wait_closed()  # type: ignore[union-attr]
        threads = threading.active_count()
        client = AsyncClient([f"127.0.0.1:{port}"], timeouts=TIMEOUTS,
                             failover=Failover("fail", return_default=True),
                             health=HealthPolicy(failure_threshold=1, backoff_initial=0.02,
                                                 backoff_max=0.05, jitter=0))
        assert await client.get("k") is None  # refused: down, returns the default
        node = client.ring.nodes[0]
        assert client._engine.health.state(node) is NodeState.DOWN
        await asyncio.sleep(0.2)
        probes = client.metrics()["nodes"][node.label]["errors"]
        assert probes >= 2  # the prober ran, as a task of this loop
        assert client._runner_task is not None and not client._runner_task.done()
        await client.close()
        assert client._runner_task is None
        assert not any(t.get_name().startswith("memring") for t in asyncio.all_tasks())
        assert threading.active_count() == threads  # no thread was started
    run(main())
