"""memring: a Memcached client for web sessions that survives losing nodes."""

from memring.backup import BackupClient
from memring.client import Client, Failover, HealthPolicy, NodeState, NodeStatus, Timeouts
from memring.errors import (
    ClusterError,
    ConfigError,
    InvalidKey,
    MemringError,
    MultiKeyError,
    NodeError,
    NodeTimeout,
    NodeUnavailable,
    SerializationError,
    ServerError,
    ValueTooLarge,
)
from memring.hashring import HashRing, Node

__version__ = "0.1.0"

__all__ = [
    "BackupClient",
    "Client",
    "ClusterError",
    "ConfigError",
    "Failover",
    "HashRing",
    "HealthPolicy",
    "InvalidKey",
    "MemringError",
    "MultiKeyError",
    "Node",
    "NodeError",
    "NodeState",
    "NodeStatus",
    "NodeTimeout",
    "NodeUnavailable",
    "SerializationError",
    "ServerError",
    "Timeouts",
    "ValueTooLarge",
    "__version__",
]
