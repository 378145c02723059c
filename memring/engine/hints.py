"""Hints: the keys one client wrote elsewhere while their home node was down.

For each down node, a hint maps a key to the version this client last
wrote for it and the node that holds that write (the copy). When the home
node returns, the client settles every hinted key: it moves the copy home
if the copy is newer, or, if the copy is gone, makes sure the home node's
older value can never be read as current.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterable
from typing import NamedTuple

from memring.engine import defaults
from memring.hashring.node import Node

__all__ = ["Hint", "Hints"]

log = logging.getLogger("memring")


class Hint(NamedTuple):
    #: The version of this client's last write of the key while home was down.
    version: int
    #: Where that write went.
    holder: Node


class Hints:
    """Thread-safe hint log, per home node, bounded per node."""

    def __init__(self, limit: int = defaults.MAX_HINTS_PER_NODE) -> None:
        self._limit = limit
        self._by_home: dict[Node, dict[bytes, Hint]] = {}
        self._lock = threading.Lock()
        self.dropped = 0

    def add(self, home: Node, key: bytes, version: int, holder: Node) -> None:
        with self._lock:
            hints = self._by_home.setdefault(home, {})
            if key in hints or len(hints) < self._limit:
                hints[key] = Hint(version, holder)
                return
            self.dropped += 1
            first = self.dropped == 1
        if first:
            log.warning("hint log for %s is full: keys written during this outage beyond %d "
                        "will not be settled when it returns", home.label, self._limit)

    def take(self, home: Node) -> dict[bytes, Hint]:
        """Every hint for ``home``, removed from the log."""
        with self._lock:
            return self._by_home.pop(home, {})

    def keys(self, home: Node) -> dict[bytes, Hint]:
        """A snapshot of ``home``'s hints (left in the log)."""
        with self._lock:
            return dict(self._by_home.get(home, {}))

    def put_back(self, home: Node, hints: Iterable[tuple[bytes, Hint]]) -> None:
        """Return hints that could not be settled yet; a newer hint for the same key wins."""
        with self._lock:
            mine = self._by_home.setdefault(home, {})
            for key, hint in hints:
                old = mine.get(key)
                if old is None or old.version < hint.version:
                    mine[key] = hint

    def discard(self, home: Node, key: bytes, version: int) -> None:
        """Forget ``key``'s hint if no newer write was hinted since ``version``."""
        with self._lock:
            mine = self._by_home.get(home)
            if mine is not None and key in mine and mine[key].version <= version:
                del mine[key]

    def pending(self, home: Node | None = None) -> int:
        with self._lock:
            if home is not None:
                return len(self._by_home.get(home, ()))
            return sum(len(h) for h in self._by_home.values())

    def after_fork(self) -> None:
        self._lock = threading.Lock()
