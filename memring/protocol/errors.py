"""The one seam where a transport's failures become memring errors.

Both transports (threads: :mod:`memring.client.transport`; asyncio:
:mod:`memring.aio.transport`) raise only memring errors; :func:`translate`
is the mapping they share, so a timeout, a refused connection, a server's
error line or a reply out of step is the same error on either face.
"""

from __future__ import annotations

import errno
from typing import Any

from memring.errors import (
    ConnectionClosed,
    MemringError,
    NodeTimeout,
    NodeUnavailable,
    ProtocolError,
    ServerError,
)
from memring.hashring.node import Node
from memring.protocol.replies import BadReply, ErrorLine

__all__ = ["Cut", "Stale", "batch_results", "key_of", "translate"]


class Stale(Exception):
    """A pooled connection found closed by the server before it answered."""


class Cut(Exception):
    """The server closed the connection in the middle of a reply."""


def translate(exc: BaseException, node: Node, key: object, seconds: float) -> MemringError:
    """memring's error for a failure of a call on ``node`` (raise it ``from exc``).

    ``seconds`` is the timeout the call had, for the message of a timeout.
    Anything that is not a transport failure (a bug) is raised as it is.
    """
    if isinstance(exc, MemringError):
        return exc
    if isinstance(exc, TimeoutError) or (
            isinstance(exc, BlockingIOError) and exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK)):
        return NodeTimeout(f"timed out: no reply within {seconds:g}s", node=node, key=key)
    if isinstance(exc, ErrorLine):
        return ServerError.for_reply(exc.kind)(f"server error: {exc}", node=node, key=key)
    if isinstance(exc, BadReply):
        return ProtocolError(f"bad reply: {exc}", node=node, key=key)
    if isinstance(exc, Stale):
        return ConnectionClosed("connection closed by the server", node=node, key=key)
    if isinstance(exc, Cut):
        return ConnectionClosed("connection closed in the middle of a reply", node=node, key=key)
    if isinstance(exc, OSError):  # refused, reset, unreachable, TLS
        return NodeUnavailable(f"connection failed: {exc}", node=node, key=key)
    raise exc


def batch_results(results: list[Any], node: Node) -> list[Any]:
    """A ``batch`` reply's results, an error line that answered one command as its error."""
    return [ServerError.for_reply(r.kind)(f"server error: {r}", node=node)
            if isinstance(r, ErrorLine) else r for r in results]


def key_of(args: tuple[Any, ...]) -> object:
    """The key (or keys) of a call, for the error's context."""
    if not args:
        return None
    first = args[0]
    if isinstance(first, dict):
        first = list(first)
    if isinstance(first, (list, tuple)) and first and isinstance(first[0], tuple):
        return None  # a batch: many commands
    if isinstance(first, (list, tuple)) and len(first) == 1:
        return first[0]
    return first if isinstance(first, (bytes, list, tuple)) else None
