"""Read-modify-write steps shared by the failover path and backup mode.

memcached can't apply these operations itself to memring's values (each
carries a version trailer, and a new value needs a new version), so the
client reads the item with its CAS token, computes the new item here, and
writes it back with CAS. A mutation takes ``(kind, plain item, absolute expiry)`` of what is
stored (``kind`` None for a miss) and returns ``(result, new item or None
to write nothing, new absolute expiry)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from memring.engine.versions import Kind
from memring.errors import ClientReplyError, InvalidArgument, InvalidArgumentType

__all__ = ["Mutation", "add", "arith", "check_delta", "concat", "replace", "retouch"]

Item = tuple[bytes, int]
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
        text = cur[0].rstrip(b" ")  # memcached pads a shrunk number with spaces
        if not text.isdigit() or len(text) > 20 or int(text) >= 1 << 64:
            raise ClientReplyError("cannot increment or decrement non-numeric value")
        n = int(text)
        n = (n + delta) % (1 << 64) if incr else max(0, n - delta)
        return n, (str(n).encode(), cur[1]), a
    return mutate


def check_delta(value: object) -> int:
    """An ``incr``/``decr`` amount (an int in 0..2**64-1), or a typed error."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgumentType(f"incr/decr amount must be an int, got {value!r}")
    if not 0 <= value < 1 << 64:
        raise InvalidArgument(f"incr/decr amount must be in 0..2**64-1, got {value!r}")
    return value
