"""memring: a Memcached client for web sessions that survives losing nodes."""

from memring.errors import (
    ClusterError,
    ConfigError,
    InvalidKey,
    MemringError,
    NodeError,
    NodeUnavailable,
    SerializationError,
    ServerError,
    ValueTooLarge,
)
from memring.hashring import HashRing, Node

__version__ = "0.1.0"

__all__ = [
    "ClusterError",
    "ConfigError",
    "HashRing",
    "InvalidKey",
    "MemringError",
    "Node",
    "NodeError",
    "NodeUnavailable",
    "SerializationError",
    "ServerError",
    "ValueTooLarge",
    "__version__",
]
