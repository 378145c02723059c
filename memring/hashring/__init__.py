"""Placement: the consistent-hash ring and its hash functions. No I/O here."""

from memring.hashring.node import DEFAULT_PORT, Node, parse_node, parse_nodes
from memring.hashring.ring import DEFAULT_VNODES, HashRing

__all__ = ["DEFAULT_PORT", "DEFAULT_VNODES", "HashRing", "Node", "parse_node", "parse_nodes"]
