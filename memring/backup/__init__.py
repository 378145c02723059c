"""Dual-write primary + backup on top of :mod:`memring.client`."""

from memring.backup.client import BackupClient

__all__ = ["BackupClient"]
