"""The thread face of the backup engine: :class:`BackupClient`."""

from __future__ import annotations

from typing import Any

from memring.client.client import Client
from memring.client.face import sync_method
from memring.engine.backup import BackupEngine
from memring.engine.keys import encode_key
from memring.engine.ops import Call
from memring.errors import MemringError
from memring.hashring import Node

__all__ = ["BackupClient"]

_THIRTY_DAYS = 30 * 24 * 3600


class BackupClient(Client):
    """A :class:`~memring.Client` that keeps two copies of every key.

    Same constructor and API as :class:`~memring.Client`; the failover
    policy must be ``"next"`` (its ``failover_ttl`` caps copies written to a
    stand-in node and the life of tombstones).

    Costs: twice the memory and twice the write traffic of the single-copy
    client. Writes go to both owners at once, so their latency is that of
    the slower of two nodes. Reads ask both owners at once too and return
    the newer, so a read is right even when clients disagree about which
    nodes are up; ``Failover(verify_reads=False)`` reads the primary alone
    (half the read traffic, and stale reads become possible when another
    client failed over for a node this one reaches).

    Semantics across the two copies:

    * ``set``/``set_many``: stored on both owners. A write that finds an
      owner down (a *degraded* write, counted in
      ``metrics()["degraded_writes"]``) is stored on the next live node
      instead; it is acknowledged once two live nodes have it, or one has it
      and no other live node is left.
    * ``delete``: tombstones on both owners.
    * ``add``, ``replace``, ``append``, ``prepend``, ``incr``, ``decr``,
      ``touch``, ``cas``: decided on the primary alone, atomically (CAS), then
      the result is copied to the backup. ``add`` never succeeds on one copy
      while failing on the other. ``gets`` returns the primary's CAS token.
    * An evicted copy is a lost copy: size memory so that neither copy is
      evicted before it expires.
    """

    ENGINE = BackupEngine  # type: ignore[assignment]
    _engine: BackupEngine  # type: ignore[assignment]

    def owners(self, key: str | bytes) -> list[Node]:
        """The nodes that hold ``key`` now: its two owners, primary first."""
        return self._engine.owners(self._engine.key(key))

    def wait_redundant(self, timeout: float = 60.0) -> float:
        """Block until every key has its two copies again; the seconds waited.

        For scripts that restart nodes one at a time: after a node restarts
        empty, its keys have one copy until the rebuild has copied them back.
        Checks every node (rebuilding one that restarted and was not rebuilt,
        even if this client never saw it go), and raises
        :class:`~memring.ClusterError` if redundancy is not back in
        ``timeout`` seconds.
        """
        waited: float = self._run(self._engine.wait_redundant(timeout))
        return waited

    # -- the fast paths: both home nodes up ----------------------------------
    def get(self, key: str | bytes, default: Any = None) -> Any:
        """The value of ``key`` (both copies read at once; the newer wins), or ``default``."""
        engine = self._engine
        kb = encode_key(key, engine.prefix, engine.unicode_keys)
        pair = engine.healthy_pair(kb)
        if pair is None or not engine.verify_reads:
            return self._run(engine.get_kb(kb, default))
        results = self._exchange([Call(pair[0], "get", (kb,)), Call(pair[1], "get", (kb,))])
        a, b = results
        if a == b and not isinstance(a, MemringError):  # the same item on both (or neither)
            return default if a is None else engine.home_value(kb, a, default, pair[0])
        return self._run(engine.get_kb(kb, default, (pair, results)))

    def set(self, key: str | bytes, value: Any, expire: int = 0, noreply: bool | None = None,
            flags: int | None = None) -> bool:
        """Store ``value`` on both owners. True once both have it (or the one left)."""
        engine = self._engine
        kb, item = self._store_args(key, value, expire, noreply, flags)
        version = engine.hlc.now()
        pair = engine.healthy_pair(kb)
        if pair is None or not 0 <= expire <= _THIRTY_DAYS:  # or a delete, a date
            ok = self._run(engine.set_kb(kb, item, expire, version))
        else:
            args = (kb, engine.home_item(item, version, expire), expire)
            calls = [Call(pair[0], "set", args), Call(pair[1], "set", args)]
            results = self._exchange(calls)
            ok = (results[0] is True and results[1] is True) or self._run(
                engine.set_kb(kb, item, expire, version, (calls, results)))
        if noreply is None:
            noreply = engine.settings.default_noreply
        return True if noreply else bool(ok)

    # -- everything else is the engine's operation, run here ----------------
    gets = sync_method(BackupEngine.gets)
    add = sync_method(BackupEngine.add)
    replace = sync_method(BackupEngine.replace)
    append = sync_method(BackupEngine.append)
    prepend = sync_method(BackupEngine.prepend)
    cas = sync_method(BackupEngine.cas)
    delete = sync_method(BackupEngine.delete)
    incr = sync_method(BackupEngine.incr)
    decr = sync_method(BackupEngine.decr)
    touch = sync_method(BackupEngine.touch)
    get_many = sync_method(BackupEngine.get_many)
    get_multi = get_many
    gets_many = sync_method(BackupEngine.gets_many)
    gets_multi = gets_many
    set_many = sync_method(BackupEngine.set_many)
    set_multi = set_many
    delete_many = sync_method(BackupEngine.delete_many)
    delete_multi = delete_many
