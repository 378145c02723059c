"""Every default of the client, in one place."""

from __future__ import annotations

#: Seconds to open a TCP connection. A LAN connect takes well under a
#: millisecond; 0.5 s leaves room for a SYN retransmit-free slow path while
#: never letting a dead host (whose SYNs vanish) hold a caller for long.
CONNECT_TIMEOUT = 0.5
#: Seconds to wait for each read of a reply. Memcached answers in
#: microseconds; a node that is silent for a whole second is hung or
#: overloaded, and callers are better served by its failover node.
READ_TIMEOUT = 1.0

#: Consecutive failures that mark a node down. With 1, the first timeout or
#: refused connection fails the call over at once, so callers never see the
#: same hung node twice.
FAILURE_THRESHOLD = 1
#: Recovery probe backoff: first delay, growth factor, cap, and +/- jitter share.
#: A probe costs one connection attempt; probing a down node at least twice
#: a second bounds how long a node that answers again goes unnoticed, and
#: with it how long clients that never saw the fault may read values older
#: than those this client wrote elsewhere meanwhile (see Invariant S).
BACKOFF_INITIAL = 0.1
BACKOFF_MULTIPLIER = 2.0
BACKOFF_MAX = 0.5
BACKOFF_JITTER = 0.2

#: Failover mode: "next" routes a down node's keys to the next live node.
FAILOVER_MODE = "next"
#: Longest life (seconds) of a copy written to a failover node. It bounds
#: how long a returning node must be "warming" (see Invariant S).
FAILOVER_TTL = 30
#: Life (seconds) of a delete's tombstone. A copy older than this is never
#: put back onto a node that lacks its key (see Failover.tombstone_ttl).
TOMBSTONE_TTL = 300
#: tombstone_ttl must exceed the warming window by at least this much.
TOMBSTONE_MARGIN = 5
#: Extra seconds of warming beyond FAILOVER_TTL: memcached's clock ticks
#: once a second, so an item can outlive its TTL by up to a second.
WARMING_MARGIN = 2.0
#: While a node is down, each client refreshes the life of the failover
#: copies it wrote (their TTL is capped at FAILOVER_TTL) this many times per
#: FAILOVER_TTL, so that an outage longer than FAILOVER_TTL loses none of them.
KEEPALIVES_PER_TTL = 3
#: Keys whose outage writes one client remembers per down node, to move
#: them home when it returns. Past this, the overflow is counted and logged.
MAX_HINTS_PER_NODE = 100_000

#: memcached's per-item bookkeeping (header, CAS, suffix: 88 bytes) plus
#: memring's 12-byte version trailer; with the key it counts against the
#: item size limit.
ITEM_OVERHEAD = 100
#: Largest value memcached stores by default (its -I option).
MAX_VALUE_SIZE = 1024 * 1024
#: Longest key memcached accepts, prefix included.
MAX_KEY_LENGTH = 250
#: Virtual points per node on the ring (murmur3 mode).
HASH = "murmur3"
#: Connections kept per node; None means one per concurrent thread.
MAX_POOL_SIZE: int | None = None
#: Connections per node of the asyncio face when ``max_pool_size`` is None:
#: a task past it waits (at most the connect timeout) for one to be free.
ASYNC_MAX_POOL_SIZE = 64
