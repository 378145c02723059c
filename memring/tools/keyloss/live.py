"""The live measurement: key loss on real memcached processes or the caller's servers."""

from __future__ import annotations

import contextlib
import json
import math
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from memring import BackupClient, Client, Failover, NodeState, Timeouts
from memring.client.transport import Item, SocketTransport
from memring.engine.defaults import MAX_VALUE_SIZE
from memring.errors import ConfigError, MemringError
from memring.hashring.node import Node, NodeSpec, parse_nodes
from memring.hashring.ring import DEFAULT_VNODES
from memring.tools.keyloss.common import (
    DEFAULT_KEYS,
    KILL_CHOICES,
    MAX_LIVE_NODES,
    KeylossError,
    KeylossRow,
    LiveProgressCallback,
)
from memring.tools.keyloss.simulation import (
    _KEY_HASHES,
    _validate,
    backup_expected_loss,
    choose_killed,
    modulo_expected_loss,
    ring_expected_loss,
    session_keys,
    synthetic_nodes,
)
from memring.tools.local import LocalCluster, find_memcached

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
