"""The tools behind the ``memring`` command line, built on the public clients.

* :mod:`memring.tools.keyloss` — what fraction of keys losing k of N nodes costs;
* :mod:`memring.tools.chaos` — load against real memcached processes while
  nodes are killed, hung and restarted, checking Invariant S;
* :mod:`memring.tools.local` — local memcached processes on loopback ports.

Nothing in the library imports them.
"""
