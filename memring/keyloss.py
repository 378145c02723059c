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

>>> rows = simulate([4], keys=2000, modes=("ring", "modulo", "backup"))
>>> [(r.mode, r.expected_fraction) for r in rows]
[('ring', 0.25), ('modulo', 0.75), ('backup', 0.0)]
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from math import gcd
from typing import Any

from memring.errors import ConfigError
from memring.hashring.hashes import HASHES, ketama_key_hash, murmur3_key_hash
from memring.hashring.node import Node
from memring.hashring.ring import DEFAULT_VNODES, HashRing

__all__ = [
    "DEFAULT_KEYS",
    "FIELDS",
    "FORMATS",
    "KILL_CHOICES",
    "MAX_NODES",
    "MODES",
    "KeylossRow",
    "ProgressCallback",
    "backup_expected_loss",
    "choose_killed",
    "format_rows",
    "modulo_expected_loss",
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

#: ``progress(done, total)``: called now and then with the keys placed so far.
ProgressCallback = Callable[[int, int], None]

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
        for mode in mode_list:
            if mode == "ring":
                assert ring is not None
                lost = _count_ring(ring, set(killed), key_list, tick)
                expected = ring_expected_loss(n, kill)
            elif mode == "backup":
                assert ring is not None
                lost = _count_backup(ring, set(killed), key_list, tick)
                expected = backup_expected_loss(n, kill)
            else:
                dead = [i for i, node in enumerate(nodes) if node in killed]
                lost = _count_modulo(n, dead, key_hash, key_list, tick)
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
) -> tuple[list[int], list[str]]:
    """Check every argument of :func:`simulate`; return the counts and modes as lists."""
    if isinstance(node_counts, (str, bytes)):
        raise ConfigError("node counts must be a list of integers, not a string")
    counts = list(node_counts)
    if not counts:
        raise ConfigError("give at least one node count")
    if not _is_int(kill) or kill not in KILL_CHOICES:
        raise ConfigError(f"--kill must be 1 or 2, got {kill!r}")
    for n in counts:
        if not _is_int(n) or not 2 <= n <= MAX_NODES:
            raise ConfigError(f"node counts must be integers from 2 to {MAX_NODES}, got {n!r}")
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


def _count_ring(
    ring: HashRing, killed: set[Node], keys: list[str], tick: Callable[[int], None]
) -> int:
    """Keys whose owner died."""
    node_for = ring.node_for
    lost = 0
    for chunk in _chunks(keys):
        lost += sum(1 for key in chunk if node_for(key) in killed)
        tick(len(chunk))
    return lost


def _count_backup(
    ring: HashRing, killed: set[Node], keys: list[str], tick: Callable[[int], None]
) -> int:
    """Keys whose primary and backup both died."""
    nodes_for = ring.nodes_for
    lost = 0
    for chunk in _chunks(keys):
        lost += sum(1 for key in chunk if killed.issuperset(nodes_for(key, 2)))
        tick(len(chunk))
    return lost


def _count_modulo(
    n: int,
    dead: list[int],
    key_hash: Callable[[str | bytes], int],
    keys: list[str],
    tick: Callable[[int], None],
) -> int:
    """Keys whose node (by identity) differs between ``h % n`` and ``h % (n - k)``."""
    survivors = [i for i in range(n) if i not in dead]
    m = len(survivors)
    lost = 0
    for chunk in _chunks(keys):
        for key in chunk:
            h = key_hash(key)
            if survivors[h % m] != h % n:
                lost += 1
        tick(len(chunk))
    return lost


# -- output --------------------------------------------------------------------
def format_rows(rows: Sequence[KeylossRow], fmt: str = "table") -> str:
    """Render rows as ``"table"`` (aligned text), ``"json"`` or ``"csv"``.

    The result ends with a newline. JSON is a list of objects and CSV has a
    header; both use exactly the :class:`KeylossRow` field names. The table
    shows fractions as percentages.
    """
    if fmt == "table":
        return _format_table(rows)
    if fmt == "json":
        return json.dumps([row.as_dict() for row in rows], indent=2) + "\n"
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(row.as_dict() for row in rows)
        return out.getvalue()
    raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")


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
