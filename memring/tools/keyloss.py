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

>>> rows = simulate([4], keys=2000, modes=("ring", "modulo", "backup"))
>>> [(r.mode, r.expected_fraction) for r in rows]
[('ring', 0.25), ('modulo', 0.75), ('backup', 0.0)]
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import importlib
import io
import json
import math
import random
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from math import gcd
from typing import Any

from memring import BackupClient, Client, Failover, NodeState, Timeouts
from memring.client.transport import Item, SocketTransport
from memring.engine.defaults import MAX_VALUE_SIZE
from memring.errors import ConfigError, MemringError
from memring.hashring.hashes import HASHES, ketama_key_hash, murmur3_key_hash
from memring.hashring.node import Node, NodeSpec, parse_nodes
from memring.hashring.ring import DEFAULT_VNODES, HashRing
from memring.tools.local import LocalCluster, find_memcached

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

#: Placement modes, in the order ``all`` runs them.
MODES = ("ring", "modulo", "backup")
#: Output formats of :func:`format_rows`.
FORMATS = ("table", "json", "csv")
#: How many nodes may die at once.
KILL_CHOICES = (1, 2)
#: Keys per run when none is given.
DEFAULT_KEYS = 100_000
#: Largest simulated cluster (400 points per node are built in memory).
MAX_NODES = 1000
#: Largest live cluster (one memcached process per node).
MAX_LIVE_NODES = 64
#: The node-count limits, in the one wording the errors and ``--help`` use.
NODE_LIMITS = (
    f"from 2 to {MAX_LIVE_NODES} live (one memcached process per node) "
    f"or to {MAX_NODES} with --simulate"
)
#: How to get what :func:`plot_rows` needs.
PLOT_INSTALL_HINT = "pip install 'memring[plot]'"

#: ``progress(done, total)``: called now and then with the keys placed so far.
ProgressCallback = Callable[[int, int], None]
#: ``progress(done, total, phase)``: key writes and reads done so far in a live
#: run, and what it is doing now (``"4 nodes, ring: reading"``).
LiveProgressCallback = Callable[[int, int, str], None]


class KeylossError(MemringError):
    """A live measurement could not run, or its result could not be trusted.

    Raised when a server is unreachable, refuses writes, fails during the run
    or evicts keys: each would be counted as "lost" and overstate the loss.
    """


class PlotUnavailable(KeylossError, ImportError):
    """:func:`plot_rows` needs matplotlib, which is not installed."""


_KEY_HASHES: dict[str, Callable[[str | bytes], int]] = {
    "murmur3": murmur3_key_hash,
    "ketama": ketama_key_hash,
}
_CHUNK = 10_000  # keys between two progress calls


@dataclass(frozen=True)
class KeylossRow:
    """One measurement: ``killed`` of ``nodes`` nodes died under placement ``mode``.

    ``lost`` of ``keys`` keys miss afterwards (``lost_fraction`` = lost/keys);
    ``expected_fraction`` is the value theory predicts (see the module docs).
    """

    nodes: int
    killed: int
    mode: str
    keys: int
    lost: int
    lost_fraction: float
    expected_fraction: float

    def as_dict(self) -> dict[str, Any]:
        """The row as a plain dict, keys in field order (the JSON/CSV schema)."""
        return dataclasses.asdict(self)


#: The row's field names, in order: the JSON keys and the CSV header.
FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(KeylossRow))


# -- inputs ------------------------------------------------------------------
def session_keys(count: int, seed: int = 0) -> list[str]:
    """``count`` session-like keys, the same for the same ``seed`` everywhere.

    >>> session_keys(1, seed=0)
    ['session:e3e70682c2094cac629f6fbed82c07cd']
    """
    rng = random.Random(seed)
    return [f"session:{rng.getrandbits(128):032x}" for _ in range(count)]


def synthetic_nodes(count: int) -> list[Node]:
    """``count`` distinct fake nodes: ``10.0.0.1:11211``, ``10.0.0.2:11211``, ...

    >>> [n.label for n in synthetic_nodes(2)]
    ['10.0.0.1:11211', '10.0.0.2:11211']
    """
    return [Node(f"10.0.{i // 254}.{i % 254 + 1}") for i in range(count)]


def choose_killed(nodes: Sequence[Node], kill: int, seed: int = 0) -> list[Node]:
    """The ``kill`` nodes that die, chosen at random from ``seed`` and the cluster size.

    Returned in the order of ``nodes``.
    """
    if not 0 <= kill <= len(nodes):
        raise ConfigError(f"cannot kill {kill} of {len(nodes)} nodes")
    rng = random.Random(f"memring-keyloss:{seed}:{len(nodes)}:{kill}")
    picked = set(rng.sample(range(len(nodes)), kill))
    return [node for i, node in enumerate(nodes) if i in picked]


# -- expectations --------------------------------------------------------------
def ring_expected_loss(n: int, kill: int) -> float:
    """``kill/n``: the killed nodes' share of a ring of ``n`` equally weighted nodes."""
    return kill / n


def modulo_expected_loss(n: int, killed_indices: Iterable[int]) -> float:
    """Exact share of keys that move when ``hash % n`` becomes ``hash % (n - k)``.

    ``killed_indices`` are the positions of the dead nodes; the survivors keep
    their order and are renumbered ``0..n-k-1``. See the module docs for the
    derivation.

    >>> modulo_expected_loss(4, [3])
    0.75
    >>> modulo_expected_loss(4, [0, 1]), modulo_expected_loss(4, [0, 3])
    (0.5, 1.0)
    """
    dead = set(killed_indices)
    if not dead <= set(range(n)):
        raise ConfigError(f"killed indices must be in 0..{n - 1}, got {sorted(dead)}")
    m = n - len(dead)
    if m < 1:
        raise ConfigError(f"cannot kill {len(dead)} of {n} nodes")
    g = gcd(n, m)
    survivors = [a for a in range(n) if a not in dead]
    staying = sum(1 for r, a in enumerate(survivors) if (a - r) % g == 0)
    return 1.0 - staying * g / (n * m)


def backup_expected_loss(n: int, kill: int) -> float:
    """``kill(kill-1) / (n(n-1))``: chance that both of a key's two nodes died."""
    return kill * (kill - 1) / (n * (n - 1))


# -- the simulation ------------------------------------------------------------
def simulate(
    node_counts: Iterable[int],
    *,
    keys: int = DEFAULT_KEYS,
    kill: int = 1,
    modes: Iterable[str] = ("ring", "modulo"),
    seed: int = 0,
    hash: str = "murmur3",
    vnodes: int | None = None,
    progress: ProgressCallback | None = None,
) -> list[KeylossRow]:
    """Measure key loss for each cluster size in ``node_counts`` and each mode.

    Returns one :class:`KeylossRow` per (node count, mode), node counts in the
    given order and modes in the given order. ``hash`` selects the ring's hash
    (and the hash modulo placement uses); ``vnodes`` the ring's virtual nodes
    per node (murmur3 only; default :data:`memring.hashring.DEFAULT_VNODES`).
    ``progress(done, total)`` is called as keys are placed, ``total`` being
    ``keys * len(node_counts) * len(modes)``.

    Raises :class:`memring.ConfigError` on invalid arguments.
    """
    counts, mode_list = _validate(node_counts, keys, kill, modes, seed, hash, vnodes)
    key_list = session_keys(keys, seed)
    key_hash = _KEY_HASHES[hash]
    total = keys * len(counts) * len(mode_list)
    done = 0

    def tick(step: int) -> None:
        nonlocal done
        done += step
        if progress is not None:
            progress(done, total)

    if progress is not None:
        progress(0, total)
    rows: list[KeylossRow] = []
    for n in counts:
        nodes = synthetic_nodes(n)
        killed = choose_killed(nodes, kill, seed)
        ring: HashRing | None = None
        if "ring" in mode_list or "backup" in mode_list:
            ring = HashRing(nodes, vnodes=vnodes or DEFAULT_VNODES, hash=hash)
        dead = [i for i, node in enumerate(nodes) if node in killed]
        for mode in mode_list:
            lost = _count_lost(key_list, _lost_by(mode, n, dead, killed, ring, key_hash), tick)
            if mode == "ring":
                expected = ring_expected_loss(n, kill)
            elif mode == "backup":
                expected = backup_expected_loss(n, kill)
            else:
                expected = modulo_expected_loss(n, dead)
            rows.append(KeylossRow(n, kill, mode, keys, lost, lost / keys, expected))
    return rows


def _validate(
    node_counts: Iterable[int],
    keys: int,
    kill: int,
    modes: Iterable[str],
    seed: int,
    hash: str,
    vnodes: int | None,
    max_nodes: int = MAX_NODES,
) -> tuple[list[int], list[str]]:
    """Check every argument of :func:`simulate`; return the counts and modes as lists.

    ``max_nodes`` is :data:`MAX_NODES` for a simulation and
    :data:`MAX_LIVE_NODES` for a live run; the message states both limits.
    """
    if isinstance(node_counts, (str, bytes)):
        raise ConfigError("node counts must be a list of integers, not a string")
    counts = list(node_counts)
    if not counts:
        raise ConfigError("give at least one node count")
    if not _is_int(kill) or kill not in KILL_CHOICES:
        raise ConfigError(f"--kill must be 1 or 2, got {kill!r}")
    for n in counts:
        if not _is_int(n) or not 2 <= n <= max_nodes:
            raise ConfigError(f"each node count must be an integer {NODE_LIMITS}; got {n!r}")
        if kill >= n:
            raise ConfigError(f"cannot kill {kill} of {n} nodes: at least one must survive")
    if not _is_int(keys) or keys < 1:
        raise ConfigError(f"--keys must be an integer >= 1, got {keys!r}")
    if isinstance(modes, str):
        modes = [modes]
    mode_list = list(dict.fromkeys(modes))
    if not mode_list:
        raise ConfigError("give at least one mode")
    for mode in mode_list:
        if mode not in MODES:
            raise ConfigError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if not _is_int(seed):
        raise ConfigError(f"--seed must be an integer, got {seed!r}")
    if hash not in HASHES:
        raise ConfigError(f"hash must be one of {', '.join(HASHES)}; got {hash!r}")
    if vnodes is not None:
        if not _is_int(vnodes) or vnodes < 1:
            raise ConfigError(f"--vnodes must be an integer >= 1, got {vnodes!r}")
        if hash != "murmur3":
            raise ConfigError("--vnodes applies to the murmur3 ring only (ketama fixes its points)")
    return counts, mode_list


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _chunks(keys: list[str]) -> Iterable[list[str]]:
    for start in range(0, len(keys), _CHUNK):
        yield keys[start : start + _CHUNK]


def _count_lost(keys: list[str], is_lost: Callable[[str], bool],
                tick: Callable[[int], None]) -> int:
    """How many of ``keys`` ``is_lost`` says are lost; progress every chunk."""
    lost = 0
    for chunk in _chunks(keys):
        lost += sum(1 for key in chunk if is_lost(key))
        tick(len(chunk))
    return lost


def _lost_by(mode: str, n: int, dead: list[int], killed: Iterable[Node], ring: HashRing | None,
             key_hash: Callable[[str | bytes], int]) -> Callable[[str], bool]:
    """Is a key lost in ``mode`` once ``killed`` (the nodes at indices ``dead``) are gone?

    ring: its owner died. backup: its primary and backup both died. modulo:
    its node (by identity) differs between ``h % n`` and ``h % (n - k)``.
    """
    if mode == "modulo":
        survivors = [i for i in range(n) if i not in dead]
        m = len(survivors)

        def moved(key: str) -> bool:
            h = key_hash(key)
            return survivors[h % m] != h % n

        return moved
    assert ring is not None
    gone = set(killed)
    if mode == "backup":
        nodes_for = ring.nodes_for
        return lambda key: gone.issuperset(nodes_for(key, 2))
    node_for = ring.node_for
    return lambda key: node_for(key) in gone


# -- the live measurement --------------------------------------------------------
#: Keys per set_many/get_many call, and between two progress calls.
_BATCH = 1000
#: Bytes one stored session may take in memcached, generously: key, JSON
#: value, item header, memring's expiry trailer and slab rounding.
_ITEM_BYTES = 512
#: Timeouts for processes on loopback. A SIGKILLed node is noticed at once
#: whatever they are (its port refuses connections, its open connections are
#: reset), so they only bound a survivor that stalls; they are generous enough
#: that a busy machine does not make a survivor look dead (which would end the
#: run with an error rather than a wrong count).
_LOCAL_TIMEOUTS = Timeouts(connect=0.5, read=2.0)
#: Timeouts for the caller's servers, which may be across a network.
_REMOTE_TIMEOUTS = Timeouts(connect=1.0, read=2.0)
#: With ``servers``, keys live under this prefix and expire after an hour,
#: so they can never be mistaken for (or outlive) real sessions.
SERVERS_KEY_PREFIX = "memring-keyloss:"
_SERVERS_EXPIRE = 3600

_Tick = Callable[[int, str], None]


@dataclass(frozen=True)
class _Cluster:
    """Where one live measurement runs.

    ``nodes`` are the ring members in placement order, each with its ring
    identity and real address; the nodes at ``dead`` indices are SIGKILLed
    by ``kill()``; ``up`` are the survivors.
    """

    nodes: list[Node]
    dead: list[int]
    kill: Callable[[], None]

    @property
    def up(self) -> list[Node]:
        return [node for i, node in enumerate(self.nodes) if i not in self.dead]


def measure_live(
    node_counts: Iterable[int] | None = None,
    *,
    keys: int = DEFAULT_KEYS,
    kill: int | None = None,
    modes: Iterable[str] = ("ring", "modulo"),
    seed: int = 0,
    hash: str = "murmur3",
    vnodes: int | None = None,
    servers: Iterable[NodeSpec] | str | None = None,
    down: Iterable[NodeSpec] | str | None = None,
    progress: LiveProgressCallback | None = None,
) -> list[KeylossRow]:
    """Measure key loss on real memcached servers; rows as :func:`simulate` returns them.

    **Local clusters** (``node_counts``, the usual case): for each node count
    ``N`` and each mode, start ``N`` fresh memcached processes on free
    loopback ports, write ``keys`` session keys, SIGKILL the ``kill`` nodes
    :func:`choose_killed` picks (the very nodes a simulation picks), read every
    key back and count the keys that miss or come back wrong. ``kill``
    defaults to 1.

    * ``ring``: a :class:`memring.Client` with ``Failover("next")``; reads of
      a dead node's keys fail over to the next node and miss.
    * ``modulo``: key ``k`` is written to node ``hash(k) % N``, then read from
      survivor ``hash(k) % (N - kill)``, the survivors renumbered in order
      (the placement of naive clients); a key read from another node misses.
    * ``backup``: a :class:`memring.BackupClient`; a key is lost only when
      both of its nodes died.

    Every process is stopped by its PID when its measurement ends, also when
    it ends with an error or ``KeyboardInterrupt``.

    **The caller's servers** (``servers`` and ``down``): ``N`` is the number of
    servers, and ``down`` names the 1 or 2 of them to treat as dead; ``kill``,
    if given, must equal ``len(down)``, and ``node_counts`` must be None.
    memring never contacts a server named in ``down`` (it may be running or
    stopped) and never stops any of the caller's servers. For each mode it
    starts a stand-in memcached process on loopback for every down server,
    with that server's ring identity, so every key is placed over all ``N``
    servers exactly as the caller's clients place it; it writes the keys,
    SIGKILLs the stand-ins (so the down servers' share is lost the way a
    crash loses it), reads every key back from the live servers and counts the
    misses. The keys are prefixed with :data:`SERVERS_KEY_PREFIX`, expire
    after an hour, and are deleted from the live servers before and after
    each mode. Every live server must answer first.

    ``progress(done, total, phase)`` is called as keys are written and read:
    ``total`` is ``2 * keys`` per measurement.

    Raises :class:`memring.ConfigError` on invalid arguments (before anything
    starts), :class:`memring.tools.local.MemcachedNotFound` without a memcached
    binary, and :class:`KeylossError` when a server is unreachable or the
    result cannot be trusted (a live node failed during the run, memcached
    refused writes or evicted keys).
    """
    if servers is not None or down is not None:
        return _measure_servers(
            node_counts, servers, down, keys=keys, kill=kill, modes=modes, seed=seed,
            hash=hash, vnodes=vnodes, progress=progress,
        )  # fmt: skip
    if node_counts is None:
        raise ConfigError("give the node counts to measure, or servers and down")
    if kill is None:
        kill = 1
    counts, mode_list = _validate(node_counts, keys, kill, modes, seed, hash, vnodes,
                                  max_nodes=MAX_LIVE_NODES)
    find_memcached()  # no binary: fail before any work, with the install hint
    key_list = session_keys(keys, seed)
    tick = _ticker(progress, 2 * keys * len(counts) * len(mode_list))
    rows: list[KeylossRow] = []
    for n in counts:
        synthetic = synthetic_nodes(n)
        victims = set(choose_killed(synthetic, kill, seed))
        dead = [i for i, node in enumerate(synthetic) if node in victims]
        for mode in mode_list:
            where = f"{n} nodes, {mode}"
            tick(0, f"{where}: starting {n} memcached processes")
            memory = _memory_mb(keys, n, mode)
            with LocalCluster(n, memory_mb=memory) as cluster:
                nodes = [
                    Node(p.host, p.port, name=_identity(synthetic[i], hash))
                    for i, p in enumerate(cluster.processes)
                ]
                target = _Cluster(nodes, dead, _killer(cluster, dead))
                lost = _measure(
                    mode, target, key_list, hash=hash, vnodes=vnodes, expire=0,
                    timeouts=_LOCAL_TIMEOUTS, tick=_within(tick, where),
                )  # fmt: skip
            rows.append(KeylossRow(n, kill, mode, keys, lost, lost / keys,
                                   _expected(mode, n, kill, dead)))  # fmt: skip
    return rows


def _measure_servers(
    node_counts: Iterable[int] | None,
    servers: Iterable[NodeSpec] | str | None,
    down: Iterable[NodeSpec] | str | None,
    *,
    keys: int,
    kill: int | None,
    modes: Iterable[str],
    seed: int,
    hash: str,
    vnodes: int | None,
    progress: LiveProgressCallback | None,
) -> list[KeylossRow]:
    """:func:`measure_live` on the caller's servers; see there."""
    members, dead = _validate_servers(node_counts, servers, down, kill)
    n, k = len(members), len(dead)
    _, mode_list = _validate([n], keys, k, modes, seed, hash, vnodes)
    up = [node for i, node in enumerate(members) if i not in dead]
    find_memcached()
    _check_reachable(up)
    key_list = [SERVERS_KEY_PREFIX + key for key in session_keys(keys, seed)]
    tick = _ticker(progress, 2 * keys * len(mode_list))
    rows: list[KeylossRow] = []
    weights = [node.weight for node in members]
    for mode in mode_list:
        where = f"{n} servers, {mode}"
        try:
            tick(0, f"{where}: deleting earlier keys")
            _delete_keys(up, key_list)
            with LocalCluster(k, memory_mb=_memory_mb(keys, n, mode)) as standins:
                nodes = list(members)
                for j, i in enumerate(dead):
                    p = standins[j]
                    nodes[i] = Node(p.host, p.port, members[i].weight,
                                    name=_identity(members[i], hash))  # fmt: skip
                target = _Cluster(nodes, dead, standins.stop)
                lost = _measure(
                    mode, target, key_list, hash=hash, vnodes=vnodes, expire=_SERVERS_EXPIRE,
                    timeouts=_REMOTE_TIMEOUTS, tick=_within(tick, where),
                )  # fmt: skip
        finally:
            with contextlib.suppress(KeylossError):  # best effort: they expire anyway
                _delete_keys(up, key_list)
        expected = _expected(mode, n, k, dead)
        if mode == "ring" and len(set(weights)) > 1:
            expected = sum(weights[i] for i in dead) / sum(weights)
        rows.append(KeylossRow(n, k, mode, keys, lost, lost / keys, expected))
    return rows


def _validate_servers(
    node_counts: Iterable[int] | None,
    servers: Iterable[NodeSpec] | str | None,
    down: Iterable[NodeSpec] | str | None,
    kill: int | None,
) -> tuple[list[Node], list[int]]:
    """Check ``servers``/``down``; return the members and the indices of the down ones."""
    if servers is None:
        raise ConfigError("--down needs --servers: the down servers must be among them")
    if down is None:
        raise ConfigError("--servers needs --down: name the 1 or 2 servers to treat as dead")
    if node_counts is not None:
        raise ConfigError("--nodes does not apply with --servers: N is the number of servers")
    members = parse_nodes(servers)
    if not 2 <= len(members) <= MAX_LIVE_NODES:
        raise ConfigError(
            f"--servers takes from 2 to {MAX_LIVE_NODES} servers, got {len(members)}"
        )
    gone = parse_nodes(down)
    if len(gone) not in KILL_CHOICES:
        raise ConfigError(f"--down must name 1 or 2 servers, got {len(gone)}")
    by_address = {node.address: i for i, node in enumerate(members)}
    dead: list[int] = []
    for node in gone:
        i = by_address.get(node.address)
        if i is None:
            known = ", ".join(m.label for m in members)
            raise ConfigError(f"--down server {node.label} is not one of --servers ({known})")
        if i in dead:
            raise ConfigError(f"--down names {node.label} twice")
        dead.append(i)
    if len(dead) >= len(members):
        raise ConfigError(
            f"cannot kill {len(dead)} of {len(members)} nodes: at least one must survive"
        )
    if kill is not None and kill != len(dead):
        raise ConfigError(
            f"--kill {kill} disagrees with --down, which names {len(dead)} server(s); "
            "leave --kill out with --servers"
        )
    return members, sorted(dead)


def _transport(node: Node, timeouts: Timeouts) -> SocketTransport:
    """A plain connection to one node, for what the tool does outside a client."""
    return SocketTransport(node, timeouts=timeouts, max_item_size=MAX_VALUE_SIZE)


def _check_reachable(nodes: Sequence[Node]) -> None:
    """Raise :class:`KeylossError` unless every node answers ``version``."""
    for node in nodes:
        transport = _transport(node, _REMOTE_TIMEOUTS)
        try:
            transport.call("version")
        except MemringError as exc:
            raise KeylossError(
                f"cannot reach memcached at {node.label} ({_reason(exc.__cause__ or exc)}); "
                "if it is down, name it in --down"
            ) from exc
        finally:
            transport.close()


def _measure(
    mode: str,
    target: _Cluster,
    keys: list[str],
    *,
    hash: str,
    vnodes: int | None,
    expire: int,
    timeouts: Timeouts,
    tick: _Tick,
) -> int:
    """Write ``keys`` to ``target``, kill its dead nodes, read back; the keys lost."""
    tag = f"{mode}-{secrets.token_hex(4)}"  # a leftover of another run never matches
    baseline = _evictions(target.nodes)
    if mode == "modulo":
        lost = _measure_modulo(target, keys, tag, hash=hash, expire=expire,
                               timeouts=timeouts, tick=tick)  # fmt: skip
    else:
        lost = _measure_client(mode, target, keys, tag, hash=hash, vnodes=vnodes,
                               expire=expire, timeouts=timeouts, tick=tick)  # fmt: skip
    after = _evictions(target.up)
    evicted = {label: after[label] - baseline[label] for label in after}
    if any(evicted.values()):
        where = ", ".join(f"{label}: {e}" for label, e in evicted.items() if e)
        raise KeylossError(
            f"memcached evicted items during the {mode} run ({where}): they would be counted "
            "as lost; use fewer --keys or servers with more memory"
        )
    return lost


def _measure_client(
    mode: str,
    target: _Cluster,
    keys: list[str],
    tag: str,
    *,
    hash: str,
    vnodes: int | None,
    expire: int,
    timeouts: Timeouts,
    tick: _Tick,
) -> int:
    """Ring or backup mode, through memring's own clients."""
    factory = BackupClient if mode == "backup" else Client
    client = factory(
        target.nodes, failover=Failover("next"), timeouts=timeouts, hash=hash,
        vnodes=vnodes or DEFAULT_VNODES,
    )  # fmt: skip

    def write(start: int, batch: list[str]) -> None:
        values: dict[str | bytes, Any] = {
            key: _session_value(start + j, key, tag) for j, key in enumerate(batch)
        }
        refused = client.set_many(values, expire=expire)
        if refused:
            raise KeylossError(f"memcached refused to store {len(refused)} keys (set_many)")

    def read(start: int, batch: list[str]) -> int:
        got = client.get_many(batch)
        return sum(1 for j, key in enumerate(batch)
                   if got.get(key) != _session_value(start + j, key, tag))

    try:
        lost = _write_kill_read(mode, target, keys, tick, write, read)
        dead = {target.nodes[i] for i in target.dead}
        health = client.health()
        for node in target.nodes:
            status = health[node.label]
            if node not in dead and status.state is not NodeState.UP:
                raise KeylossError(
                    f"{_address(node)} failed during the {mode} run ({status.last_error}): "
                    "its keys would be counted as lost"
                )
        return lost
    finally:
        client.close()


def _write_kill_read(mode: str, target: _Cluster, keys: list[str], tick: _Tick,
                     write: Callable[[int, list[str]], None],
                     read: Callable[[int, list[str]], int]) -> int:
    """Write every key, kill the target's victims, read every key; the keys lost.

    ``write(start, batch)`` and ``read(start, batch)`` (which returns how
    many keys of the batch are lost) take the keys in batches;
    ``start`` is the index of the batch's first key.
    """
    phase = "writing"
    try:
        for start, batch in _batches(keys):
            write(start, batch)
            tick(len(batch), phase)
        phase = "killing"
        tick(0, f"killing {len(target.dead)} of {len(target.nodes)} nodes")
        target.kill()
        phase = "reading"
        lost = 0
        for start, batch in _batches(keys):
            lost += read(start, batch)
            tick(len(batch), phase)
        return lost
    except KeylossError:
        raise
    except MemringError as exc:
        raise KeylossError(f"{mode} run, {phase}: {_reason(exc)}") from exc


def _measure_modulo(
    target: _Cluster,
    keys: list[str],
    tag: str,
    *,
    hash: str,
    expire: int,
    timeouts: Timeouts,
    tick: _Tick,
) -> int:
    """Modulo mode: one plain connection per node, ``hash % N`` then ``hash % (N - k)``."""
    key_hash = _KEY_HASHES[hash]
    n = len(target.nodes)
    survivors = [i for i in range(n) if i not in target.dead]
    m = len(survivors)
    transports = [_transport(node, timeouts) for node in target.nodes]

    def write(start: int, batch: list[str]) -> None:
        groups: dict[int, dict[bytes, Item]] = {}
        for j, key in enumerate(batch):
            item = (_session_bytes(start + j, key, tag), 0)
            groups.setdefault(key_hash(key) % n, {})[key.encode()] = item
        for i, items in groups.items():
            if transports[i].call("set_many", items, expire):
                raise KeylossError(f"memcached at {_address(target.nodes[i])} refused writes")

    def read(start: int, batch: list[str]) -> int:
        wanted: dict[int, dict[bytes, bytes]] = {}
        for j, key in enumerate(batch):
            i = survivors[key_hash(key) % m]
            wanted.setdefault(i, {})[key.encode()] = _session_bytes(start + j, key, tag)
        lost = 0
        for i, expected in wanted.items():
            got = transports[i].call("get_many", list(expected))
            lost += sum(1 for kb, data in expected.items() if got.get(kb, (b"", 0))[0] != data)
        return lost

    try:
        return _write_kill_read("modulo", target, keys, tick, write, read)
    finally:
        for t in transports:
            t.close()


def _killer(cluster: LocalCluster, indices: list[int]) -> Callable[[], None]:
    """A function that SIGKILLs the processes of ``cluster`` at ``indices`` (by PID)."""

    def kill() -> None:
        for i in indices:
            cluster[i].kill()

    return kill


def _session_value(index: int, key: str, tag: str) -> dict[str, Any]:
    """The session stored under ``key``: a small dict, as a web framework keeps one."""
    return {
        "user_id": 100_000 + index,
        "csrf": key[-16:],
        "created": 1_700_000_000 + index,
        "cart": [index % 7, index % 11],
        "flash": [],
        "run": tag,
    }


def _session_bytes(index: int, key: str, tag: str) -> bytes:
    return json.dumps(_session_value(index, key, tag), separators=(",", ":")).encode()


def _batches(keys: list[str]) -> Iterator[tuple[int, list[str]]]:
    for start in range(0, len(keys), _BATCH):
        yield start, keys[start : start + _BATCH]


def _identity(node: Node, hash: str) -> str:
    """The name under which ``node`` is placed on a ``hash`` ring."""
    return node.label if hash == "murmur3" else node.ketama_name


def _address(node: Node) -> str:
    """``host:port`` where the node really is (its label may be a ring name)."""
    return Node(node.host, node.port).label


def _reason(exc: BaseException) -> str:
    """The error as one line."""
    return " ".join(str(exc).split()) or type(exc).__name__


def _memory_mb(keys: int, n: int, mode: str) -> int:
    """memcached memory per process so that nothing is evicted: twice the fair share."""
    copies = 2 if mode == "backup" else 1
    return max(64, math.ceil(2 * keys * copies * _ITEM_BYTES / n / 2**20))


def _expected(mode: str, n: int, kill: int, dead: list[int]) -> float:
    if mode == "ring":
        return ring_expected_loss(n, kill)
    if mode == "backup":
        return backup_expected_loss(n, kill)
    return modulo_expected_loss(n, dead)


def _evictions(nodes: Sequence[Node]) -> dict[str, int]:
    """``{address: evictions so far}`` of each node."""
    out: dict[str, int] = {}
    for node in nodes:
        transport = _transport(node, _REMOTE_TIMEOUTS)
        try:
            out[_address(node)] = int(transport.call("stats").get(b"evictions", 0))
        except MemringError as exc:
            raise KeylossError(f"cannot read stats of {_address(node)}: {_reason(exc)}") from exc
        finally:
            transport.close()
    return out


def _delete_keys(nodes: Sequence[Node], keys: list[str]) -> None:
    """Delete ``keys`` from every node in ``nodes`` (whichever holds them)."""
    for node in nodes:
        transport = _transport(node, _REMOTE_TIMEOUTS)
        try:
            for _, batch in _batches(keys):
                transport.call("batch", [("delete", (key.encode(),)) for key in batch])
        except MemringError as exc:
            raise KeylossError(f"cannot delete keys on {_address(node)}: {_reason(exc)}") from exc
        finally:
            transport.close()


def _ticker(progress: LiveProgressCallback | None, total: int) -> _Tick:
    """``tick(step, phase)``: add ``step`` to the work done and report it."""
    done = 0

    def tick(step: int, phase: str) -> None:
        nonlocal done
        done += step
        if progress is not None:
            progress(done, total, phase)

    return tick


def _within(tick: _Tick, where: str) -> _Tick:
    """``tick`` with every phase prefixed by ``where`` (``"4 nodes, ring"``)."""
    return lambda step, phase: tick(step, f"{where}: {phase}")


# -- output --------------------------------------------------------------------
def format_rows(rows: Sequence[KeylossRow], fmt: str = "table", *,
                heading: str | None = None) -> str:
    """Render rows as ``"table"`` (aligned text), ``"json"`` or ``"csv"``.

    The result ends with a newline. JSON is a list of objects and CSV has a
    header; both use exactly the :class:`KeylossRow` field names. The table
    shows fractions as percentages, under ``heading`` when one is given (a
    line that says how the rows were measured, see :func:`describe_run`).
    """
    if fmt == "table":
        return (f"{heading}\n" if heading else "") + _format_table(rows)
    if fmt == "json":
        return json.dumps([row.as_dict() for row in rows], indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row.as_dict() for row in rows)
        return out.getvalue()
    raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")


def describe_run(*, live: bool, keys: int, seed: int, servers: int | None = None) -> str:
    """One line that says how rows were measured: live (and on what) or simulated.

    ``servers`` is the number of the caller's servers a live run measured
    (``servers``/``down`` of :func:`measure_live`); None for local processes.

    >>> describe_run(live=False, keys=1000, seed=0)
    'simulated: placement math only, no servers (1,000 keys, seed 0)'
    """
    if not live:
        how = "simulated: placement math only, no servers"
    elif servers is None:
        how = "live: real memcached processes on 127.0.0.1, the dead ones SIGKILLed"
    else:
        how = (f"live: your {servers} servers, the down ones stood in for by local "
               "memcached processes that are SIGKILLed")
    return f"{how} ({keys:,} keys, seed {seed})"


def _format_table(rows: Sequence[KeylossRow]) -> str:
    header = ("nodes", "killed", "mode", "keys", "lost", "lost %", "expected %")
    body = [
        (
            str(r.nodes),
            str(r.killed),
            r.mode,
            str(r.keys),
            str(r.lost),
            f"{r.lost_fraction * 100:.2f}%",
            f"{r.expected_fraction * 100:.2f}%",
        )
        for r in rows
    ]
    widths = [max(len(line[i]) for line in (header, *body)) for i in range(len(header))]
    left = {2}  # the mode column is text; numbers align right

    def render(cells: Sequence[str]) -> str:
        pairs = enumerate(zip(cells, widths, strict=True))
        return "  ".join(c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in pairs).rstrip()

    lines = [render(header), "  ".join("-" * w for w in widths)]
    lines += [render(line) for line in body]
    return "\n".join(lines) + "\n"


# -- plot ----------------------------------------------------------------------
def check_plot_available() -> None:
    """Raise :class:`PlotUnavailable` (with the install hint) unless matplotlib imports."""
    _matplotlib()


def _matplotlib() -> tuple[Any, Any]:
    """matplotlib's ``Figure`` and Agg canvas classes.

    Imported by name: matplotlib is the optional ``plot`` extra, and this
    module must import (and type-check) without it.
    """
    try:
        figure = importlib.import_module("matplotlib.figure")
        agg = importlib.import_module("matplotlib.backends.backend_agg")
    except ImportError as exc:
        raise PlotUnavailable(
            f"plotting needs matplotlib; install it with: {PLOT_INSTALL_HINT}"
        ) from exc
    return figure.Figure, agg.FigureCanvasAgg


def plot_rows(rows: Sequence[KeylossRow], path: str, *, title: str | None = None) -> None:
    """Draw measured next to expected loss per node count, one colour per mode; save to ``path``.

    Measured values are solid lines with dots, expected ones dashed lines with
    crosses. The file format follows the extension (``.png``, ``.svg``,
    ``.pdf``). Raises :class:`PlotUnavailable` without matplotlib.
    """
    figure_class, canvas_class = _matplotlib()
    if not rows:
        raise ConfigError("nothing to plot: no rows")
    fig = figure_class(figsize=(8, 5), dpi=120, layout="constrained")
    canvas_class(fig)
    ax = fig.add_subplot()
    colours = {"ring": "tab:blue", "modulo": "tab:red", "backup": "tab:green"}
    for mode in dict.fromkeys(r.mode for r in rows):
        series = sorted((r for r in rows if r.mode == mode), key=lambda r: r.nodes)
        xs = [r.nodes for r in series]
        colour = colours.get(mode)
        ax.plot(xs, [100 * r.lost_fraction for r in series], marker="o", color=colour,
                label=f"{mode}: measured")  # fmt: skip
        ax.plot(xs, [100 * r.expected_fraction for r in series], marker="x", linestyle="--",
                color=colour, alpha=0.7, label=f"{mode}: expected")  # fmt: skip
    killed = sorted({r.killed for r in rows})
    ax.set_xticks(sorted({r.nodes for r in rows}))
    ax.set_xlabel("nodes in the cluster (N)")
    ax.set_ylabel("keys lost (%)")
    ax.set_ylim(-3, 103)  # points at 0% and 100% stay clear of the frame
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(title or f"Keys lost when {'/'.join(map(str, killed))} of N nodes die "
                 f"({rows[0].keys:,} keys)")  # fmt: skip
    fig.savefig(path)
