"""The asyncio face of the backup engine: :class:`AsyncBackupClient`."""

from __future__ import annotations

from memring.aio.face import AsyncFace, async_method
from memring.engine.api import BACKUP_OPERATIONS, OPERATIONS, declare
from memring.engine.backup import BackupEngine
from memring.engine.compat import PymemcacheMethods
from memring.hashring import Node

__all__ = ["AsyncBackupClient"]


@declare(BackupEngine, async_method, OPERATIONS + BACKUP_OPERATIONS)
class AsyncBackupClient(AsyncFace, PymemcacheMethods):
    """:class:`memring.BackupClient` for asyncio: two copies of every key, the same
    semantics and costs (see there), with ``async def`` methods."""

    ENGINE = BackupEngine
    _engine: BackupEngine

    def owners(self, key: str | bytes) -> list[Node]:
        """The nodes that hold ``key`` now: its two owners, primary first."""
        return self._engine.owners(self._engine.key(key))
