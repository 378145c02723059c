"""Talking to nodes: connections, health, failover, routing and the public client."""

from memring.client.client import Client
from memring.client.health import NodeState, NodeStatus
from memring.client.policies import Failover, HealthPolicy, Timeouts
from memring.client.serde import SafeSerde, safe_serde

__all__ = [
    "Client", "Failover", "HealthPolicy", "NodeState", "NodeStatus", "SafeSerde", "Timeouts",
    "safe_serde",
]
