"""The public API, declared once for both faces.

A face (threads: :mod:`memring.client`; asyncio: :mod:`memring.aio`) is
a way to run the engine's operations. What the public clients share,
whatever runs them, lives here:

* :class:`Face`: the constructor (its keyword arguments, checked by
  :func:`~memring.engine.config.resolve`), the engine and one transport per
  node, and the methods that need no I/O (``ring``, ``failover``,
  ``timeouts``, ``settings``, ``metrics``, ``route``, ``repr``);
* :data:`OPERATIONS` and :func:`declare`: the engine operations each face
  exposes as a method of the same name, arguments, defaults and docstring,
  each wrapped by the face's own runner (``sync_method``, ``async_method``).

So a method exists on one face exactly when it exists on the other, and
its documentation is written once, on the engine's operation.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar, TypeVar

from memring.engine import defaults, versions
from memring.engine.base import Engine, check_expire, check_flags, check_noreply
from memring.engine.config import Settings, resolve
from memring.engine.health import NodeState
from memring.engine.keys import encode_key
from memring.engine.ops import Op
from memring.engine.policies import Failover, HealthPolicy, Timeouts
from memring.engine.serde import Serde
from memring.hashring import DEFAULT_VNODES, HashRing, Node
from memring.hashring.node import NodeSpec

__all__ = ["ALIASES", "BACKUP_OPERATIONS", "OPERATIONS", "Face", "as_operation", "declare",
           "logged", "unwrap_op_annotation"]

log = logging.getLogger("memring")

F = TypeVar("F")
TransportFactory = Callable[[Node], Any]

#: Options only the tests pass (fakes at the transport seam, a fake clock, no background).
PRIVATE = ("_transport_factory", "_clock", "_background", "_sleep", "_hlc")
_INT32 = 1 << 31

#: The engine operations every client exposes, run by its face.
OPERATIONS = (
    "get", "set", "gets", "add", "replace", "append", "prepend", "cas", "delete", "incr",
    "decr", "touch", "get_many", "gets_many", "set_many", "delete_many", "stats", "version",
    "flush_all", "cache_memlimit", "raw_command", "shutdown", "quit",
)
#: The backup client's operations besides.
BACKUP_OPERATIONS = ("wait_redundant",)
#: pymemcache's other names of the same methods.
ALIASES = {"get_multi": "get_many", "gets_multi": "gets_many", "set_multi": "set_many",
           "delete_multi": "delete_many"}


def declare(engine: type[Engine], wrap: Callable[[Any], Any],
            names: Iterable[str] = OPERATIONS) -> Callable[[type[F]], type[F]]:
    """A class decorator: each of ``names`` (and its aliases) as ``wrap(engine.name)``.

    A method the class defines itself (a fast path) is kept.
    """
    def decorate(cls: type[F]) -> type[F]:
        made: dict[str, Any] = {}
        for name in names:
            made[name] = vars(cls).get(name) or wrap(getattr(engine, name))
            setattr(cls, name, made[name])
        for alias, target in ALIASES.items():
            if target in made:
                setattr(cls, alias, made[target])
        return cls
    return decorate


def as_operation(method: Any, fn: Any) -> Any:
    """``method``, a face's runner of engine operation ``fn``, given ``fn``'s name,
    docstring and signature (``-> T``, not ``-> Op[T]``)."""
    functools.update_wrapper(method, fn)
    del method.__wrapped__
    unwrap_op_annotation(method, fn)
    return method


def unwrap_op_annotation(method: Any, fn: Any) -> None:
    """Show ``-> T`` (not ``-> Op[T]``) in the method's signature and help()."""
    sig = inspect.signature(fn)
    ret = sig.return_annotation
    if isinstance(ret, str):
        m = re.fullmatch(r"Op\[(.*)\]", ret)
        if m:
            ret = m.group(1)
    method.__signature__ = sig.replace(return_annotation=ret)
    method.__annotations__ = {**fn.__annotations__, "return": ret}


def logged(op: Op[Any]) -> Op[None]:
    """``op`` run as background work: a failure is logged, never raised."""
    try:
        yield from op
    except Exception:  # background work must never end its runner
        log.exception("memring background work failed")


class Face:
    """What every public client is, whatever drives its engine.

    ``servers`` are ``"host:port[:weight]"`` strings, ``(host, port)`` tuples
    or :class:`~memring.Node` objects; every other argument is keyword-only
    (see :class:`memring.Client`).
    """

    _engine: Engine
    ENGINE: ClassVar[type[Engine]]
    #: Keyword arguments that configure this face's transport, not the engine.
    TRANSPORT_OPTIONS: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        servers: Iterable[NodeSpec] | str,
        *,
        failover: Failover | str = defaults.FAILOVER_MODE,
        timeouts: Timeouts | None = None,
        health: HealthPolicy | None = None,
        serde: Serde | None = None,
        key_prefix: bytes | str = b"",
        hash: str = defaults.HASH,
        vnodes: int = DEFAULT_VNODES,
        max_item_size: int = defaults.MAX_VALUE_SIZE,
        max_pool_size: int | None = defaults.MAX_POOL_SIZE,
        tls_context: Any = None,
        **pymemcache_options: Any,
    ) -> None:
        options = pymemcache_options
        private = {name: options.pop(name) for name in PRIVATE if name in options}
        transport_options = {name: options.pop(name) for name in self.TRANSPORT_OPTIONS
                             if name in options}
        settings = resolve(
            failover=failover, timeouts=timeouts, health=health, serde=serde,
            key_prefix=key_prefix, hash=hash, vnodes=vnodes, max_item_size=max_item_size,
            max_pool_size=max_pool_size, tls_context=tls_context,
            clock=private.get("_clock"), **options)
        self._settings = settings
        self._private = private
        self._engine = self.ENGINE(servers, settings, hlc=private.get("_hlc") or versions.clock())
        factory: TransportFactory | None = private.get("_transport_factory")
        if factory is None:
            def factory(node: Node) -> Any:
                return self._new_transport(node, settings, transport_options)
        self._transports: dict[Node, Any] = {n: factory(n) for n in self._engine.ring.nodes}
        for transport in self._transports.values():
            if hasattr(transport, "on_reconnect"):
                transport.on_reconnect = self._engine.note_reconnect
        self._engine.attach(self._transports)
        self._background = bool(private.get("_background", True))
        self._start_face()

    def _start_face(self) -> None:
        """What the face adds once the engine and transports exist (its runner's state)."""

    def _new_transport(self, node: Node, settings: Settings, options: Mapping[str, Any]) -> Any:
        """This face's transport to ``node``."""
        raise NotImplementedError

    # ------------------------------------------------------------------
    # background work, for the faces' runners
    def _no_background(self) -> bool:
        """No background work is started: the client is closed, or a test said so."""
        return not self._background or self._engine.closed

    def _tick_op(self) -> Op[tuple[float | None, list[Op[Any]]]]:
        """The background work due now, as one operation.

        It runs the short work (probes, keep-alives, and any work that makes
        due, such as a returned node's handoff) and returns the seconds until
        more is due (None: none is) and the long work (handoffs, rebuilds)
        for the face to run beside its prober, not in its way.
        """
        apart: list[Op[Any]] = []
        for _ in range(8):
            work, wait = self._engine.background()
            if not work:
                return wait, apart
            for op, long in work:
                if long and self._background:
                    apart.append(op)
                else:
                    yield from logged(op)
        return 0.0, apart

    # ------------------------------------------------------------------
    # introspection: no I/O, the same on both faces
    @property
    def ring(self) -> HashRing:
        """The placement ring."""
        return self._engine.ring

    @property
    def failover(self) -> Failover:
        """The :class:`~memring.Failover` policy."""
        return self._engine.failover

    @property
    def timeouts(self) -> Timeouts:
        """The :class:`~memring.Timeouts`."""
        return self._engine.timeouts

    @property
    def settings(self) -> Settings:
        return self._settings

    def metrics(self) -> dict[str, Any]:
        """Counters: per node (ops, errors, timeouts, failovers, state changes) and
        client-wide. Every key is there from the start."""
        return self._engine.metrics()

    def route(self, key: str | bytes) -> Node:
        """The node a call for ``key`` would talk to now (home, or its failover node)."""
        engine = self._engine
        kb = engine.key(key)
        home = engine.ring.node_for(kb)
        if engine.health.state(home) is NodeState.DOWN and engine.failover.mode == "next":
            return engine.failover_node(kb, home)
        return home

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({[n.label for n in self._engine.ring.nodes]!r}, "
                f"failover={self._engine.failover!r}, timeouts={self._engine.timeouts!r})")

    # ------------------------------------------------------------------
    # the fast paths' argument checks
    def _store_args(self, key: str | bytes, value: Any, expire: Any, noreply: Any, flags: Any
                    ) -> tuple[bytes, tuple[bytes, int]]:
        """A store call's wire key and serialized item; every argument checked first."""
        engine = self._engine
        kb = encode_key(key, engine.prefix, engine.unicode_keys)
        if expire.__class__ is not int or not -_INT32 <= expire < _INT32:
            check_expire(expire)
        if noreply is not None and noreply.__class__ is not bool:
            check_noreply(noreply)
        return kb, engine.serialize(kb, value, None if flags is None else check_flags(flags))
