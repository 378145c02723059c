"""memring: a Memcached client for web sessions that survives losing nodes."""

from memring.aio import AsyncBackupClient, AsyncClient
from memring.client import BackupClient, Client
from memring.engine import Failover, HealthPolicy, NodeState, NodeStatus, Timeouts
from memring.errors import (
    ClientReplyError,
    ClusterError,
    ConfigError,
    ConnectionClosed,
    InvalidArgument,
    InvalidArgumentType,
    InvalidKey,
    InvalidKeyType,
    MemringError,
    MultiKeyError,
    NodeError,
    NodeTimeout,
    NodeUnavailable,
    PoolExhausted,
    ProtocolError,
    SerializationError,
    ServerError,
    ServerReplyError,
    UnknownCommandError,
    UnpicklableValue,
    ValueTooLarge,
)
from memring.hashring import HashRing, Node

__version__ = "0.1.0"

__all__ = [
    "AsyncBackupClient",
    "AsyncClient",
    "BackupClient",
    "Client",
    "ClientReplyError",
    "ClusterError",
    "ConfigError",
    "ConnectionClosed",
    "Failover",
    "HashRing",
    "HealthPolicy",
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidKey",
    "InvalidKeyType",
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
    "ServerReplyError",
    "Timeouts",
    "UnknownCommandError",
    "UnpicklableValue",
    "ValueTooLarge",
    "__version__",
]
