"""The simulation: key loss on a synthetic ring, by placement math alone.

The inputs (session keys, synthetic nodes, the killed ones), the expected
losses and :func:`simulate`, with the argument checks a live run shares.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Sequence
from math import gcd

from memring.errors import ConfigError
from memring.hashring.hashes import HASHES, ketama_key_hash, murmur3_key_hash
from memring.hashring.node import Node
from memring.hashring.ring import DEFAULT_VNODES, HashRing
from memring.tools.keyloss.common import (
    DEFAULT_KEYS,
    KILL_CHOICES,
    MAX_NODES,
    MODES,
    NODE_LIMITS,
    KeylossRow,
    ProgressCallback,
)

_KEY_HASHES: dict[str, Callable[[str | bytes], int]] = {
    "murmur3": murmur3_key_hash,
    "ketama": ketama_key_hash,
}
_CHUNK = 10_000  # keys between two progress calls


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
    their order and are renumbered ``0..n-k-1``. See :mod:`memring.tools.keyloss`
    for the derivation.

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
