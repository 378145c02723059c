"""Test utilities that misbehave on the network.

* :class:`HostileServer` — a fake memcached on loopback whose replies a
  test decides per command, from a set of canned :mod:`behaviours`
  (drip, garbage, huge value headers, resets, ...) or its own function;
  it records every byte it received.
* :class:`FaultProxy` — a TCP proxy to a real memcached that gives only
  the clients connected through it a fault (pause, blackhole, refuse,
  drip, delay, cut); :func:`proxied_node` names its node so that the ring
  places it exactly as the real server.

Every server and proxy listens on 127.0.0.1 on a port picked at run time,
runs in background threads and stops with ``close()`` (or ``with``).

``python -m tests.netfaults.survey`` prints how a memring client reacts to
each behaviour (outcome, time taken, memory, node state).
"""

from tests.netfaults import behaviours
from tests.netfaults.behaviours import (
    CLOSE,
    HALF_CLOSE,
    MUTE,
    RESET,
    STOP_READING,
    Behaviour,
    Send,
    Sleep,
    Stream,
)
from tests.netfaults.protocol import MiniMemcached, Request, RequestFramer
from tests.netfaults.proxy import FaultProxy, ProxyCounters, proxied_node
from tests.netfaults.server import ConnectionRecord, HostileServer, HostileServerError, abort

__all__ = [
    "CLOSE",
    "HALF_CLOSE",
    "MUTE",
    "RESET",
    "STOP_READING",
    "Behaviour",
    "ConnectionRecord",
    "FaultProxy",
    "HostileServer",
    "HostileServerError",
    "MiniMemcached",
    "ProxyCounters",
    "Request",
    "RequestFramer",
    "Send",
    "Sleep",
    "Stream",
    "abort",
    "behaviours",
    "proxied_node",
]
