"""An asyncio client served by an event loop of its own, for thread-based tools.

:class:`Looped` runs an :class:`~memring.AsyncClient` (or
:class:`~memring.AsyncBackupClient`) on an event loop in a thread it
starts, and gives other threads its methods as blocking calls: each call
is a task of that one loop, so many threads calling at once are many
concurrent tasks on the async face, as an asyncio web server's requests
would be. ``memring chaos --async`` drives the chaos workload through it.
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from typing import Any

__all__ = ["Looped"]

#: The longest a call may take before the caller gives up on it (a bug, not a fault:
#: every call of the client is bounded by its timeouts).
_CALL_LIMIT = 300.0


class Looped:
    """``client``'s coroutine methods as blocking calls, run on the loop of a thread.

    Methods that do no I/O (``ring``, ``metrics()``, ``route()``) are the
    client's own. :meth:`close` closes the client on its loop, then stops
    the loop and its thread.
    """

    def __init__(self, client: Any, *, name: str = "memring-loop") -> None:
        self.client = client
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def run(self, coro: Any) -> Any:
        """Run coroutine ``coro`` on the client's loop; its result (or its error)."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(_CALL_LIMIT)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.client, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        def blocking(*args: Any, **kwargs: Any) -> Any:
            return self.run(attr(*args, **kwargs))

        blocking.__name__ = name
        blocking.__doc__ = attr.__doc__
        return blocking

    def close(self) -> None:
        """Close the client, stop the loop and its thread. Idempotent."""
        if self._loop.is_closed():
            return
        try:
            self.run(self.client.close())
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()

    def __enter__(self) -> Looped:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Looped({self.client!r})"
