"""The asyncio face: :class:`AsyncClient` and :class:`AsyncBackupClient`.

The same engine as the thread face (:mod:`memring.client`), driven with
``await`` over asyncio connections (:mod:`memring.aio.transport`).
"""

from memring.aio.backup import AsyncBackupClient
from memring.aio.client import AsyncClient

__all__ = ["AsyncBackupClient", "AsyncClient"]
