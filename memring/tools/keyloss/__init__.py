"""How many sessions are lost when nodes die: the math behind ``memring keyloss``.

The simulated mode is placement math only: it builds the placement a client
would use for ``N`` synthetic nodes, "kills" ``k`` of them, and counts the keys
that would now miss. No server is contacted and nothing is printed; the
command line (:mod:`memring.cli`) is a thin layer over :func:`simulate` and
:func:`format_rows`.

Three placements are measured (``mode``):

``ring``
    memring's consistent-hash ring (:class:`memring.HashRing`). The ring does
    not change when a node dies (clients fail over to the next node), so a key
    is lost exactly when its owner ``node_for(key)`` is among the killed nodes.
    Expected: ``k/N``, the killed nodes' share of the ring when all weights are
    equal. The measured value also carries the ring's own imbalance (with the
    default 400 virtual nodes, a node's share is within a few percent of 1/N).

``modulo``
    ``hash(key) % N`` over the node list, as naive clients place keys. When
    ``k`` nodes die the survivors are renumbered in their original order and
    placement becomes ``hash(key) % (N - k)``. A key is lost when it now lands
    on a different node (a miss), whether or not its old node died.
    Expected (exact, for hashes uniform over a range much larger than ``N``):
    let ``M = N - k`` and ``g = gcd(N, M)``. By the Chinese remainder theorem
    the pair ``(h % N, h % M)`` is uniform over the ``N*M/g`` pairs ``(a, r)``
    with ``a ≡ r (mod g)``, each with probability ``g/(N*M)``. A key stays
    exactly when ``h % N`` is a surviving index ``a`` and ``h % M`` is its new
    index ``r(a)``, so the kept fraction is ``g/(N*M)`` times the number of
    survivors with ``a ≡ r(a) (mod g)``. For ``k = 1``, ``g = 1`` and the loss is
    ``(N-1)/N``. For ``k = 2`` and even ``N`` the result depends on which two
    nodes died.

``backup``
    Every key lives on its first two distinct ring nodes
    (``ring.nodes_for(key, 2)``), as memring's backup mode writes it; a key is
    lost only when both are killed. Expected: ``k(k-1) / (N(N-1))``, the chance
    that a key's pair is among the killed nodes if pairs are spread evenly:
    ``0`` for one node down and ``2/(N(N-1))`` for two.

Keys are session-like ids (``"session:" + 32 hex digits``) and the killed
nodes are a random choice; both come from ``seed``, so a run is reproducible
on any machine. :func:`session_keys`, :func:`synthetic_nodes` and
:func:`choose_killed` are public so other measurements (and the tests) can use
the very same keys and victims.

The live mode, :func:`measure_live`, does the same on real memcached
processes: it starts ``N`` of them on loopback, writes every key (a small
session-like JSON dict) through memring, SIGKILLs the chosen nodes, reads every
key back and counts the misses. Each live node carries the name of the
simulated node in its place as its ring identity, so a live run places every
key exactly where :func:`simulate` does for the same ``N``, ``seed`` and hash:
the two agree key for key, and a difference is a real loss (or a bug). With
``servers``/``down`` it measures a cluster the caller runs instead (see
:func:`measure_live`). :func:`plot_rows` draws rows with matplotlib (the
``plot`` extra).

One module per concern; everything public is imported from this package:

* :mod:`memring.tools.keyloss.simulation` — the keys, nodes and victims, the
  expected losses and :func:`simulate`;
* :mod:`memring.tools.keyloss.live` — :func:`measure_live`, on local
  memcached processes or the caller's servers;
* :mod:`memring.tools.keyloss.output` — :func:`format_rows`,
  :func:`describe_run` and :func:`plot_rows`;
* :mod:`memring.tools.keyloss.common` — what they share: the constants,
  :class:`KeylossRow` and the errors.

>>> rows = simulate([4], keys=2000, modes=("ring", "modulo", "backup"))
>>> [(r.mode, r.expected_fraction) for r in rows]
[('ring', 0.25), ('modulo', 0.75), ('backup', 0.0)]
"""

from memring.tools.keyloss.common import (
    DEFAULT_KEYS,
    FIELDS,
    FORMATS,
    KILL_CHOICES,
    MAX_LIVE_NODES,
    MAX_NODES,
    MODES,
    NODE_LIMITS,
    PLOT_INSTALL_HINT,
    KeylossError,
    KeylossRow,
    LiveProgressCallback,
    PlotUnavailable,
    ProgressCallback,
)
from memring.tools.keyloss.live import SERVERS_KEY_PREFIX, measure_live
from memring.tools.keyloss.output import (
    check_plot_available,
    describe_run,
    format_rows,
    plot_rows,
)
from memring.tools.keyloss.simulation import (
    backup_expected_loss,
    choose_killed,
    modulo_expected_loss,
    ring_expected_loss,
    session_keys,
    simulate,
    synthetic_nodes,
)

__all__ = [
    "DEFAULT_KEYS",
    "FIELDS",
    "FORMATS",
    "KILL_CHOICES",
    "MAX_LIVE_NODES",
    "MAX_NODES",
    "MODES",
    "NODE_LIMITS",
    "PLOT_INSTALL_HINT",
    "SERVERS_KEY_PREFIX",
    "KeylossError",
    "KeylossRow",
    "LiveProgressCallback",
    "PlotUnavailable",
    "ProgressCallback",
    "backup_expected_loss",
    "check_plot_available",
    "choose_killed",
    "describe_run",
    "format_rows",
    "measure_live",
    "modulo_expected_loss",
    "plot_rows",
    "ring_expected_loss",
    "session_keys",
    "simulate",
    "synthetic_nodes",
]
