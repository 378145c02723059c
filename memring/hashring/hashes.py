"""Hash functions for the ring, each pinned by golden values in the tests.

``murmur3`` (default)
    point = the first 64 bits of MurmurHash3_x64_128(data, seed=0), read as an
    unsigned integer. A node's i-th virtual point hashes ``"<label>-<i>"``.

``ketama``
    The libmemcached/twemproxy continuum: 32-bit points from MD5, four per
    digest, ``floor(float32(weight/total) * 160 / 4 * float32(n)) * 4`` points
    per server, keys hashed with the first four MD5 bytes (little-endian).

Keys are hashed as bytes; ``str`` keys are UTF-8 encoded first, so ``"a"``
and ``b"a"`` always land on the same node.
"""

from __future__ import annotations

import hashlib
import math
import struct
from collections.abc import Sequence

import mmh3

from memring.hashring.node import Node

__all__ = [
    "HASHES",
    "KETAMA_POINTS_PER_SERVER",
    "ketama_key_hash",
    "ketama_points",
    "ketama_points_per_server",
    "murmur3_key_hash",
    "murmur3_points",
    "to_bytes",
]

_MASK64 = (1 << 64) - 1
KETAMA_POINTS_PER_SERVER = 160
_KETAMA_POINTS_PER_HASH = 4

HASHES = ("murmur3", "ketama")


def to_bytes(key: str | bytes) -> bytes:
    """The bytes that get hashed (and sent) for ``key``."""
    if isinstance(key, bytes):
        return key
    if isinstance(key, str):
        return key.encode("utf-8")
    raise TypeError(f"key must be str or bytes, got {type(key).__name__}")


def murmur3_key_hash(key: str | bytes) -> int:
    """64-bit unsigned murmur3 point of a key.

    >>> murmur3_key_hash("6666")
    15315718178274635655
    """
    return mmh3.hash64(key)[0] & _MASK64


def murmur3_points(node: Node, vnodes: int) -> list[int]:
    """The ``vnodes * weight`` points of one node. They depend on that node alone,
    so adding or removing a node never moves another node's points."""
    label = node.label
    return [mmh3.hash64(f"{label}-{i}")[0] & _MASK64 for i in range(vnodes * node.weight)]


def ketama_key_hash(key: str | bytes) -> int:
    """libmemcached's ``hashkit_md5``: the first four MD5 bytes, little-endian.

    >>> ketama_key_hash("6666")
    2164281833
    """
    return int.from_bytes(hashlib.md5(to_bytes(key)).digest()[:4], "little")


def _f32(x: float) -> float:
    """Round to IEEE-754 single precision, as a C ``float`` expression does."""
    return float(struct.unpack("f", struct.pack("f", x))[0])


def ketama_points_per_server(weight: int, total_weight: int, live_servers: int) -> int:
    """Points one server gets, computed in float32 exactly as libmemcached does.

    >>> ketama_points_per_server(1, 25, 25)   # not 160: float32 rounds down
    156
    >>> ketama_points_per_server(1, 3, 3)
    160
    """
    pct = _f32(float(weight) / float(total_weight))  # (float)weight / (float)total
    x = _f32(pct * KETAMA_POINTS_PER_SERVER)
    x = _f32(x / _KETAMA_POINTS_PER_HASH)
    x = _f32(x * _f32(float(live_servers)))
    return int(math.floor(_f32(x + 0.0000000001))) * _KETAMA_POINTS_PER_HASH


def ketama_points(nodes: Sequence[Node]) -> list[tuple[int, int, int]]:
    """Every continuum point as ``(value, server_index, ordinal)``.

    The last two fields give the tie-break for equal values: server order,
    then point order, as libmemcached's stable sort leaves them.
    """
    total = sum(n.weight for n in nodes)
    out: list[tuple[int, int, int]] = []
    for index, node in enumerate(nodes):
        count = ketama_points_per_server(node.weight, total, len(nodes))
        name = node.ketama_name
        ordinal = 0
        for pointer in range(count // _KETAMA_POINTS_PER_HASH):
            digest = hashlib.md5(f"{name}-{pointer}".encode()).digest()
            for word in struct.unpack("<4I", digest):
                out.append((word, index, ordinal))
                ordinal += 1
    return out
