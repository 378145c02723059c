"""How the engine asks a face for I/O.

Every operation of the engine is a generator: it yields a list of
:class:`Call` (one or more nodes to ask at once) and is sent back the list
of their results, in order, each a value or the :class:`~memring.MemringError`
that call raised. It finally returns the operation's result (or raises).
A face *drives* it: the thread face with blocking sockets, the asyncio face
with ``await``; the logic exists once, here in the engine, and knows nothing
of sockets or of sync and async.

>>> def op():
...     (got,) = yield [Call(node, "get", (b"k",))]
...     return got
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, NamedTuple, TypeVar

from memring.hashring.node import Node

__all__ = ["Call", "Op", "Quiet", "Results", "Sleep"]

T = TypeVar("T")


class Call(NamedTuple):
    """One transport method call on one node: ``transport(node).method(*args)``."""

    node: Node
    method: str
    args: tuple[Any, ...]


class Sleep(NamedTuple):
    """Yielded instead of calls: let this many seconds pass (the face sleeps as it can)."""

    seconds: float


class Quiet(NamedTuple):
    """Yielded instead of calls: make these calls, but do not count them in any
    node's health (a look that must not change what the client thinks)."""

    calls: list[Call]


#: What an operation is sent back: each call's result or its memring error.
Results = list[Any]
#: An engine operation: yields batches of calls, returns its result.
Op = Generator["list[Call] | Quiet | Sleep", Results, T]
