"""The logic of memring, written once for both faces, with no I/O.

* :mod:`~memring.engine.single` and :mod:`~memring.engine.backup` — where
  copies go, failover, Invariant S and repair;
* :mod:`~memring.engine.rebuild` — a node back in backup mode made
  redundant again: its handoff, and the rebuild of one that restarted empty;
* :mod:`~memring.engine.versions` — the versions every value carries;
* :mod:`~memring.engine.health` — each node's state, probe timetable;
* :mod:`~memring.engine.ops` — how operations ask a face for I/O;
* :mod:`~memring.engine.policies`, :mod:`~memring.engine.config`,
  :mod:`~memring.engine.defaults` — the settings, and
  :mod:`~memring.engine.compat` — pymemcache's arguments mapped onto them;
* :mod:`~memring.engine.keys`, :mod:`~memring.engine.serde` — keys and values.

Why a sans-I/O engine: the thread face (:mod:`memring.client`) and the
asyncio face (:mod:`memring.aio`) must give the same guarantees, so the
failover, copy, settle, handoff, repair and rebuild logic can exist only
once. Each engine operation is a generator that yields the calls it needs
(several nodes at once where it can) and is sent their results; a face
drives it with blocking sockets or with ``await``. Generating one face from
the other's source (httpcore's unasync) would keep two copies of the logic
in the tree; callbacks would turn every multi-step operation inside out.
The cost is a generator per slow-path call: the faces call the transport
directly on the fast path (a single get or set whose home node is up).
"""

from memring.engine.health import NodeState, NodeStatus
from memring.engine.policies import Failover, HealthPolicy, Timeouts
from memring.engine.serde import SafeSerde, safe_serde

__all__ = [
    "Failover", "HealthPolicy", "NodeState", "NodeStatus", "SafeSerde", "Timeouts", "safe_serde",
]
