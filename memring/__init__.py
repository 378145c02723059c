"""memring: a Memcached client for web sessions that survives losing nodes."""

from memring.client import BackupClient, Client
from memring.engine import Failover, HealthPolicy, NodeState, NodeStatus, Timeouts
from memring.errors import (
    ClusterError,
    ConfigError,
    InvalidArgument,
    InvalidArgumentType,
    InvalidKey,
    MemringError,
    MultiKeyError,
    NodeError,
    NodeTimeout,
    NodeUnavailable,
    PoolExhausted,
    ProtocolError,
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
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidKey",
    "MemringError",
    "MultiKeyError",
    "Node",
    "NodeError",
    "NodeState",
    "NodeStatus",
    "NodeTimeout",
    "NodeUnavailable",
    "PoolExhausted",
    "ProtocolError",
    "SerializationError",
    "ServerError",
    "Timeouts",
    "ValueTooLarge",
    "__version__",
]
