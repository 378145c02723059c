"""Read-modify-write steps shared by the failover path and backup mode.

Where memcached can't apply an operation itself (the value is a failover
copy with an expiry trailer, or one of two backup copies), the client reads
the item with ``gets``, computes the new item here, and writes it back with
CAS. A mutation takes ``(kind, plain item, absolute expiry)`` of what is
stored (``kind`` None for a miss) and returns ``(result, new item or None
to write nothing, new absolute expiry)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memring.client.copies import Kind
from memring.client.transport import Item
from memring.errors import ServerError

__all__ = ["Mutation", "add", "arith", "check_delta", "concat", "replace", "retouch"]

Mutation = Callable[[Kind | None, Item, int], tuple[Any, Item | None, int]]


def add(item: Item, abs_expiry: int) -> Mutation:
    """Store ``item`` if the key has no value: ``add``."""
    def mutate(kind: Kind | None, cur: Item, a: int) -> tuple[Any, Item | None, int]:
        return (False, None, 0) if kind is Kind.VALUE else (True, item, abs_expiry)
    return mutate


def replace(item: Item, abs_expiry: int) -> Mutation:
    """Store ``item`` if the key has a value: ``replace``."""
    def mutate(kind: Kind | None, cur: Item, a: int) -> tuple[Any, Item | None, int]:
        return (True, item, abs_expiry) if kind is Kind.VALUE else (False, None, 0)
    return mutate


def retouch(abs_expiry: int) -> Mutation:
    """Give an existing value a new expiry: ``touch``."""
    def mutate(kind: Kind | None, cur: Item, a: int) -> tuple[Any, Item | None, int]:
        return (True, cur, abs_expiry) if kind is Kind.VALUE else (False, None, 0)
    return mutate


def concat(data: bytes, append: bool, check: Callable[[bytes, int], object]) -> Mutation:
    """``append``/``prepend`` ``data``; ``check(joined, flags)`` raises if it can't fit."""
    def mutate(kind: Kind | None, cur: Item, a: int) -> tuple[Any, Item | None, int]:
        if kind is not Kind.VALUE:
            return False, None, 0
        joined = cur[0] + data if append else data + cur[0]
        check(joined, cur[1])
        return True, (joined, cur[1]), a
    return mutate


def arith(delta: int, incr: bool) -> Mutation:
    """``incr`` (wrapping at 2**64) or ``decr`` (floored at 0), as memcached does."""
    def mutate(kind: Kind | None, cur: Item, a: int) -> tuple[Any, Item | None, int]:
        if kind is not Kind.VALUE:
            return None, None, 0
        try:
            n = int(cur[0])
        except ValueError:
            raise ServerError("cannot increment or decrement non-numeric value") from None
        n = (n + delta) % (1 << 64) if incr else max(0, n - delta)
        return n, (str(n).encode(), cur[1]), a
    return mutate


def check_delta(value: object) -> int:
    """An ``incr``/``decr`` amount, or ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 1 << 64:
        raise ValueError(f"incr/decr amount must be an int in 0..2**64-1, got {value!r}")
    return value
