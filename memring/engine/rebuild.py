"""Bringing a node that returns back to redundancy: the other half of the backup engine.

:class:`RebuildMixin` is what :class:`~memring.engine.backup.BackupEngine`
does once a node comes back; the data path (placement, dual writes, reads
that merge both copies and repair) is in :mod:`memring.engine.backup`.
A node that was away may lack keys in two ways, and each has its remedy:

* **Handoff.** Writes made while it was down went to its partner and to the
  key's stand-in, and the client that made each hinted the key for it.
  When the node returns, every client settles its own hints
  (:meth:`RebuildMixin._handoff_batch`): home is made to hold the newest of
  what it, the partner and the stand-in hold (by ``add`` or CAS, so a newer
  write wins), then the stand-in's copy is retired. Where neither the
  partner nor the stand-in holds the key any more, home gets a tombstone
  just older than the hinted write, so its older value cannot come back.
  Hints left unsettled are tried again.
* **Rebuild.** A node that restarted empty lost every key it co-owns, not
  only those written while it was away. One client copies them back
  (:meth:`RebuildMixin.rebuild`): it lists each other node's keys, reads
  those the two co-own from that node with their remaining TTL and writes
  them back by ``add``, pipelined. A source still warming after a hang may
  hold old values: the rebuild waits until it is settled.
* **Marker.** Which client rebuilds is decided on the node itself: the one
  whose ``add`` of :data:`REBUILD_MARKER` succeeds; the others see the
  marker and leave the rebuild to it. A finished rebuild sets the marker to
  "done", which is what :meth:`RebuildMixin.wait_redundant` looks for on
  every node (it rebuilds a node whose marker is neither "done" nor
  "running").
* **Lease.** A "running" marker lives :data:`REBUILD_LEASE` seconds, so a
  client that dies mid-rebuild leaves one that soon expires and another
  client can claim the rebuild (the marker is not renewed as it goes).
* **Retry.** A rebuild that could not list, read or write back every key is
  not done (the keys left out have one copy): it drops its marker and runs
  again in :data:`REBUILD_RETRY` seconds.

The nodes known to have restarted empty are kept here too: whatever such a
node holds was written after it returned, which the backup engine's reads
(``believable``) and a rebuild's choice of source both rely on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import secrets
import threading
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from memring.engine import moves
from memring.engine.base import Engine, check_seconds
from memring.engine.config import Settings
from memring.engine.health import NodeState, NodeStatus
from memring.engine.hints import Hint
from memring.engine.ops import Call, Op, Sleep
from memring.engine.versions import HybridClock, Kind, Stored, expiry_from_ttl, newest
from memring.errors import ClusterError, MemringError
from memring.hashring import Node

__all__ = ["REBUILD_BATCH", "REBUILD_LEASE", "REBUILD_MARKER", "REBUILD_RETRY", "Rebuild",
           "RebuildMixin"]

log = logging.getLogger("memring")

Item = tuple[bytes, int]

#: The key a rebuild's progress is kept under, on the node being rebuilt.
REBUILD_MARKER = b"memring:rebuild"
#: Keys read from the other owner (and written back) per round trip of a rebuild.
REBUILD_BATCH = 500
#: Life of a "running" marker (seconds): a client that dies mid-rebuild leaves
#: one that soon expires. It is not renewed: a rebuild that runs longer may be
#: claimed and run by a second client too, which costs work, not data (every
#: copy is an ``add``).
REBUILD_LEASE = 30
#: Seconds before a rebuild that could not read or write every key tries again.
REBUILD_RETRY = 1.0
#: Flags of the marker: never a value a reader would decode.
_MARKER_FLAGS = 1 << 30


@dataclass
class Rebuild:
    """Progress of one node's rebuild, as this client knows it."""

    state: str  # "running", "queued", "deferred", "elsewhere", "done"
    copied: int = 0
    total: int = 0


class RebuildMixin(Engine):
    """The rebuild half of :class:`~memring.engine.backup.BackupEngine` (see the
    module docstring).

    An :class:`~memring.engine.base.Engine` itself, so that its overrides
    (:meth:`returned`, :meth:`more_work`, :meth:`after_fork`, :meth:`status`...)
    chain to the base engine's by ``super()``. Of the engine it is part of it
    needs only the placement, :meth:`home_pair`.
    """

    def __init__(self, servers: Iterable[Any] | str, settings: Settings, *,
                 hlc: HybridClock) -> None:
        super().__init__(servers, settings, hlc=hlc)
        #: Nodes that came back empty (their pid or uptime said so): what they
        #: hold was written after they returned.
        self._restarted: set[Node] = set()
        self._rebuilds: dict[Node, Rebuild] = {}
        #: Nodes due a rebuild, and when (monotonic seconds).
        self._rebuild_due: dict[Node, float] = {}
        self._rebuild_lock = threading.Lock()
        #: Names this client in the markers it writes.
        self._me = secrets.token_hex(8)

    if TYPE_CHECKING:
        def home_pair(self, kb: bytes) -> list[Node]:
            """The key's two home nodes: the backup engine's placement."""
            ...

        def counted(self, home: Sequence[Node], per: Mapping[Node, Stored | None]
                    ) -> Iterator[tuple[Node, Stored]]:
            """The replies that count (the data path's rule for stand-in copies)."""
            ...

    def holds_its_keys(self, node: Node) -> bool:
        """Does ``node`` hold what was written to it: no restart seen, or rebuilt since?"""
        if node not in self._restarted:
            return True
        progress = self._rebuilds.get(node)
        return progress is not None and progress.state == "done"

    # ------------------------------------------------------------------
    # a returning node: settle its hints (Invariant S), queue its rebuild
    def returned(self, node: Node, restarted: bool | None) -> None:
        if restarted:
            self._restarted.add(node)
            self.queue_rebuild(node)
        else:
            progress = self._rebuilds.get(node)
            if progress is not None and progress.state == "queued":
                # It went away mid-rebuild and kept what it had: still short of keys.
                self.queue_rebuild(node)
            else:
                self._restarted.discard(node)
        super().returned(node, restarted)

    def noticed_restart(self, node: Node) -> None:
        super().noticed_restart(node)
        self._restarted.add(node)
        self.queue_rebuild(node)

    def _handoff_batch(self, home: Node, batch: Sequence[tuple[bytes, Hint]]
                       ) -> Op[list[tuple[bytes, Hint]]]:
        """Make ``home`` hold the newest of each hinted key (from its partner or stand-in)."""
        kbs = [kb for kb, _ in batch]
        pairs = {kb: self.home_pair(kb) for kb in kbs}
        sources: dict[Node, list[bytes]] = defaultdict(list)
        for kb, hint in batch:
            partner = next(n for n in pairs[kb] if n != home)
            for node in (partner, hint.holder):
                if node != home and not self.health.is_down(node):
                    sources[node].append(kb)
        calls = [Call(home, "meta_many", (kbs,))]
        calls += [Call(node, "meta_many", (keys,)) for node, keys in sources.items()]
        results = yield calls
        at_home = results[0]
        if isinstance(at_home, MemringError):
            raise at_home
        seen: dict[bytes, dict[Node, Stored | None]] = defaultdict(dict)
        copies: dict[bytes, Any] = {}  # each hint's copy on its stand-in, as read
        held = {kb: hint.holder for kb, hint in batch}
        for call, got in zip(calls[1:], results[1:], strict=True):
            if isinstance(got, MemringError):
                continue
            for kb in call.args[0]:
                meta = got.get(kb)
                seen[kb][call.node] = None if meta is None else self.stored(
                    meta[0], kb, call.node)
                if meta is not None and call.node == held[kb]:
                    copies[kb] = meta
        found: dict[bytes, Stored | None] = {}
        for kb, per in seen.items():
            for _, st in self.counted(pairs[kb], per):
                found[kb] = newest(found.get(kb), st)
        now = self.clock.time()
        ops: list[tuple[str, tuple[Any, ...]]] = []
        planned: list[tuple[bytes, Hint, bool]] = []
        keep: list[tuple[bytes, Hint]] = []
        done: list[bytes] = []  # home holds the newest: retire the stand-in's copy
        for kb, hint in batch:
            mine = at_home.get(kb)
            current = None if mine is None else self.stored(mine[0], kb, home)
            best = found.get(kb)
            hole = best is None
            if hole:
                if not seen[kb]:
                    keep.append((kb, hint))  # every other copy is out of reach: later
                if current is None:
                    continue
                best = Stored(Kind.TOMBSTONE, hint.version - 1, (b"", 0), 0, False)
            assert best is not None
            self._plan_settle(home, kb, hint, best, current, None if mine is None else mine[1],
                              hole, now, ops, planned, done)
        # A copy left on a stand-in is read again if a home fails before it expires;
        # a client that never saw this outage writes the homes only, over its head.
        yield from self._settle_batch(home, batch, ops, planned, keep, done, copies)
        return keep

    # -- rebuild --------------------------------------------------------
    def queue_rebuild(self, node: Node, delay: float = 0.0) -> None:
        """Rebuild ``node`` in ``delay`` seconds (its background work runs it)."""
        with self._rebuild_lock:
            at = self.clock.monotonic() + delay
            self._rebuild_due[node] = min(at, self._rebuild_due.get(node, at))
            progress = self._rebuilds.get(node)
            if progress is None or progress.state != "running":
                self._rebuilds[node] = Rebuild("queued")
        self.health.on_change()

    def more_work(self) -> list[tuple[Op[Any], bool]]:
        work = super().more_work()
        now = self.clock.monotonic()
        with self._rebuild_lock:
            due = [n for n, at in self._rebuild_due.items() if at <= now]
            for node in due:
                del self._rebuild_due[node]
        return work + [(self.rebuild(node), True) for node in due]

    def work_wait(self) -> float | None:
        wait = super().work_wait()
        with self._rebuild_lock:
            if self._rebuild_due:
                mine = max(0.0, min(self._rebuild_due.values()) - self.clock.monotonic())
                wait = mine if wait is None else min(wait, mine)
        return wait

    def rebuild(self, node: Node, *, force: bool = False) -> Op[int]:
        """Copy back onto ``node`` every key it co-owns that it lacks; returns keys copied.

        Keys are listed with ``lru_crawler metadump`` on each other node and
        read from the key's other owner (with its remaining TTL), pipelined:
        each round trip reads one batch and writes the previous one. Every
        copy is an ``add`` or a CAS (:mod:`memring.engine.moves`), so a newer
        write or a delete's tombstone that got there first always wins. One
        client per restart does it: the first whose marker ``add`` succeeds;
        the others see the marker (``force`` skips that check). A rebuild that
        could not list, read or write back every key is not done: it drops its
        marker and tries again in :data:`REBUILD_RETRY` seconds.
        """
        progress = self._rebuilds.setdefault(node, Rebuild("running"))
        progress.state, progress.copied, progress.total = "running", 0, 0
        try:
            claimed = yield from self.one(node, "add", REBUILD_MARKER, self._marker(
                "running", 0, 0), REBUILD_LEASE)
        except MemringError:
            progress.state = "queued"
            if not self.health.is_down(node):
                self.queue_rebuild(node, REBUILD_RETRY)  # else: again when it returns
            return 0
        if not claimed and not force:
            try:
                mine = _marker_by((yield from self.one(node, "get", REBUILD_MARKER))) == self._me
            except MemringError:
                mine = False
            if not mine:  # (this client's own is one a try cut short left behind)
                progress.state = "elsewhere"  # another client is rebuilding it
                return 0
        copied = 0
        complete = True  # every source listed, every key read and written back
        for source in self.ring.nodes:
            if source == node or self.health.is_down(source):
                continue
            try:
                keys = yield from self.one(source, "dump_keys")
            except MemringError as exc:
                log.warning("rebuild of %s: cannot list the keys of %s: %s",
                            node.label, source.label, exc)
                complete = False
                continue
            ours = [k for k in keys if k != REBUILD_MARKER
                    and {node, source} == set(self.ring.nodes_for(k, 2))]
            progress.total += len(ours)
            if ours and not self.believable_source(source):
                # It hung and may hold old values: rebuild once it is settled.
                left = self.health.record(source).warm_until - self.clock.monotonic()
                yield from self._release_marker(node)
                self.queue_rebuild(node, max(left, 0.0) + 0.5)
                self._rebuilds[node].state = "deferred"
                return copied
            done, whole = yield from self._copy_keys(node, source, ours, progress)
            copied += done
            complete = complete and whole
            if self.closed or self.health.is_down(node):
                break
        progress.copied = copied
        if self.health.is_down(node):
            progress.state = "queued"  # rebuilt again when it returns
        elif not complete and not self.closed:
            # A key left out now is one copy short until the next try: a fault of
            # its other owner would lose it, so this is no "done".
            log.warning("rebuild of %s incomplete (%d keys copied): again in %gs",
                        node.label, copied, REBUILD_RETRY)
            yield from self._release_marker(node)
            self.queue_rebuild(node, REBUILD_RETRY)
            progress.state = "queued"
        else:
            progress.state = "done"
        if progress.state == "done":
            with contextlib.suppress(MemringError):  # the marker is a courtesy to others
                yield from self.one(node, "set", REBUILD_MARKER,
                                    self._marker("done", copied, progress.total), 0)
        self.counters["rebuilt_keys"] += copied
        self.counters["rebuilds"] += 1
        log.info("rebuild of %s: %d keys copied back from their other owners", node.label,
                 copied)
        return copied

    def _release_marker(self, node: Node) -> Op[None]:
        """Drop this client's "running" marker, so the next try (by anyone) can claim it."""
        with contextlib.suppress(MemringError):
            yield from self.one(node, "delete", REBUILD_MARKER)

    def believable_source(self, node: Node) -> bool:
        """May what ``node`` holds be taken as it is (by a read, or a rebuild copying
        from it)? Not while it is warming after a hang, unless it restarted empty."""
        return self.health.state(node) is not NodeState.WARMING or node in self._restarted

    def _copy_keys(self, node: Node, source: Node, keys: list[bytes], progress: Rebuild
                   ) -> Op[tuple[int, bool]]:
        """Copy ``keys`` from ``source`` onto ``node``: ``(keys copied, all of them tried)``."""
        copied = 0
        pending: list[Call] = []
        for i in range(0, len(keys) + REBUILD_BATCH, REBUILD_BATCH):
            batch = keys[i:i + REBUILD_BATCH]
            calls = ([Call(source, "meta_many", (batch,))] if batch else []) + pending
            if not calls:
                break
            results = yield calls
            if pending:
                done = results[-1]
                if isinstance(done, MemringError):
                    log.warning("rebuild of %s from %s failed: %s", node.label, source.label,
                                done)
                    return copied, False
                copied += sum(r is True for r in done)
                progress.copied += sum(r is True for r in done)
            pending = []
            if not batch:
                break
            got = results[0]
            if isinstance(got, MemringError):
                log.warning("rebuild of %s: reading %s failed: %s", node.label, source.label, got)
                return copied, False
            now = self.clock.time()
            ops: list[tuple[str, tuple[Any, ...]]] = []
            for kb, (raw, _cas, ttl) in got.items():
                st = self.stored(raw, kb, source)
                if not st.copy:
                    st = st._replace(expiry=expiry_from_ttl(ttl, now))
                raw_out, expire = moves.owner_form(st, now, self.failover.tombstone_ttl)
                if st.kind is Kind.VALUE and expire >= 0:
                    ops.append(("add", (kb, raw_out, expire)))
            if ops:
                pending = [Call(node, "batch", (ops,))]
            if self.closed or self.health.is_down(node):
                return copied, False
        return copied, True

    def _marker(self, state: str, copied: int, total: int) -> Item:
        body = {"state": state, "copied": copied, "total": total,
                "at": self.hlc.wall_ms() // 1000, "by": self._me}
        return json.dumps(body).encode(), _MARKER_FLAGS

    def wait_redundant(self, timeout: float = 60.0) -> Op[float]:
        """Wait until every key has its two copies again; returns the seconds waited.

        Checks every node (its pid and uptime, and its rebuild marker),
        starts the rebuild of a node that restarted and was not rebuilt, and
        waits for every node to be up, settled and rebuilt. Raises
        :class:`~memring.ClusterError` after ``timeout`` seconds.
        """
        timeout = check_seconds("timeout", timeout)
        start = self.clock.monotonic()
        while True:
            yield from self.stats()
            pending = self._not_redundant()
            if not pending:
                markers = yield [Call(n, "get", (REBUILD_MARKER,)) for n in self.ring.nodes]
                for node, raw in zip(self.ring.nodes, markers, strict=True):
                    if isinstance(raw, MemringError):
                        pending.append(node)
                    elif raw is None or _marker_state(raw) != "done":
                        if _marker_state(raw) == "running":
                            pending.append(node)
                            continue
                        yield from self.rebuild(node, force=True)
                        pending.append(node)
            if not pending:
                return self.clock.monotonic() - start
            if self.clock.monotonic() - start > timeout:
                raise ClusterError(
                    f"redundancy not back after {timeout:g}s: "
                    f"{', '.join(n.label for n in pending)}")
            yield Sleep(0.2)

    def _not_redundant(self) -> list[Node]:
        out = []
        for node in self.ring.nodes:
            state = self.health.state(node)
            rebuild = self._rebuilds.get(node)
            if state is NodeState.DOWN or self.hints.pending(node) or (
                    rebuild is not None and rebuild.state in ("running", "queued", "deferred")):
                out.append(node)
        return out

    def after_fork(self) -> None:
        super().after_fork()
        self._rebuild_lock = threading.Lock()
        self._me = secrets.token_hex(8)  # the parent's markers are the parent's
        for progress in self._rebuilds.values():
            if progress.state == "running":  # the parent goes on with it
                progress.state = "elsewhere"

    def status(self, node: Node) -> NodeStatus:
        rebuild = self._rebuilds.get(node)
        state = self.health.state(node)
        if state is NodeState.DOWN or self.hints.pending(node):
            redundancy = "degraded"  # (a rebuild another client runs counts as complete here)
        elif rebuild is not None and rebuild.state in ("running", "queued", "deferred"):
            redundancy = "rebuilding"
        else:
            redundancy = "complete"
        return self.health.status(
            node, redundancy=redundancy,
            rebuilt_keys=None if rebuild is None else rebuild.copied,
            rebuild_total=None if rebuild is None else rebuild.total)


def _marker_state(raw: Any) -> str | None:
    return _marker_field(raw, "state")


def _marker_by(raw: Any) -> str | None:
    """The client that wrote a marker (its ``_me``)."""
    return _marker_field(raw, "by")


def _marker_field(raw: Any, name: str) -> str | None:
    if raw is None:
        return None
    try:
        return str(json.loads(raw[0]).get(name))
    except (ValueError, AttributeError):
        return None
