"""The public surface of ``memring`` is pinned: changing it must be deliberate."""

from __future__ import annotations

import memring
import memring.hashring

EXPECTED_ALL = [
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

EXPECTED_HASHRING_ALL = [
    "DEFAULT_PORT",
    "DEFAULT_VNODES",
    "HashRing",
    "Node",
    "parse_node",
    "parse_nodes",
]


def test_memring_all_is_pinned() -> None:
    assert memring.__all__ == EXPECTED_ALL


def test_memring_all_is_sorted_and_resolves() -> None:
    assert memring.__all__ == sorted(memring.__all__)
    for name in memring.__all__:
        assert hasattr(memring, name), name


def test_hashring_all_is_pinned() -> None:
    assert memring.hashring.__all__ == EXPECTED_HASHRING_ALL
    for name in memring.hashring.__all__:
        assert hasattr(memring.hashring, name), name


def test_top_level_reexports_are_the_same_objects() -> None:
    assert memring.HashRing is memring.hashring.HashRing
    assert memring.Node is memring.hashring.Node
    assert isinstance(memring.__version__, str)
