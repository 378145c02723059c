"""The thread face: :class:`Client` and :class:`BackupClient` over blocking sockets."""

from memring.client.backup import BackupClient
from memring.client.client import Client

__all__ = ["BackupClient", "Client"]
