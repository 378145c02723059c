"""Moving a key's item from one node to another without ever going back in time.

Handoff, settling, read-repair, refills and rebuilds all come down to one
step: make node X hold item I (read from elsewhere) unless X already holds
something at least as new. The step is a CAS on what X held when it was
read (``add`` when X held nothing), so a write that lands on X meanwhile is
never overwritten. :func:`plan` decides the command; the engines batch and
send them.

Putting an item onto a node that lacks the key is the one risky case: the
key may have been deleted there after I was written, its tombstone since
expired. So an item older than ``tombstone_ttl`` is only put onto a node
that restarted more recently than that (every tombstone it ever held is
still there): see :func:`may_add`.
"""

from __future__ import annotations

from typing import Any

from memring.engine.versions import (
    Kind,
    Stored,
    encode,
    newest,
    relative_expiry,
    tombstone,
    version_ms,
)

__all__ = ["may_add", "owner_form", "plan"]

#: Seconds of slack in :func:`may_add` (clock skew, memcached's 1-second clock).
SLACK = 5


def owner_form(st: Stored, now: float, tombstone_ttl: int) -> tuple[tuple[bytes, int], int]:
    """``(raw item, expire)`` to store ``st`` on a node that owns its key."""
    if st.kind is Kind.VALUE:
        rel = relative_expiry(st.expiry, now)
        if rel >= 0:
            return encode(st.item, st.version, st.expiry), rel
    return tombstone(st.version), tombstone_ttl


def may_add(st: Stored, now_ms: int, uptime: float | None, tombstone_ttl: int) -> bool:
    """May ``st`` be put onto a node that lacks its key (see the module docstring)?"""
    if st.kind is Kind.TOMBSTONE:
        return True
    window = (tombstone_ttl - SLACK) * 1000
    if now_ms - version_ms(st.version) < window:
        return True
    return uptime is not None and uptime * 1000 < window


def plan(key: bytes, new: Stored, current: Stored | None, cas: bytes | None, now: float,
         tombstone_ttl: int, allow_add: bool) -> tuple[str, tuple[Any, ...]] | None:
    """The command that puts ``new`` where ``current`` (read with ``cas``) is, or None.

    None when ``current`` is as new as ``new`` or newer, or when the node
    lacks the key and ``allow_add`` is False.
    """
    if current is not None and newest(current, new) is current:
        return None
    raw, expire = owner_form(new, now, tombstone_ttl)
    if current is None:
        if not allow_add:
            return None
        return "add", (key, raw, expire)
    assert cas is not None
    return "cas", (key, raw, cas, expire)
