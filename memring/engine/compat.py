"""pymemcache's constructor arguments, mapped onto memring's settings.

Code written for pymemcache 4's ``Client``, ``PooledClient`` or
``HashClient`` passes their keyword arguments; every one of them is in
:data:`ARGUMENTS` with what memring does with it, and :func:`translate`
applies it. An argument memring cannot honour raises
:class:`~memring.ConfigError` saying why and what to use instead; none is
dropped without a word. Both faces (and any future one) reach this module
through :func:`memring.engine.config.resolve`, so they take the same
arguments with the same meaning.

``tests/unit/test_compat.py`` reads pymemcache's own constructor signatures
and fails on any argument missing from :data:`ARGUMENTS`, so a new
pymemcache argument fails a test, not a user's start-up.
"""

from __future__ import annotations

import math
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from memring.engine import defaults
from memring.engine.policies import Failover, HealthPolicy, Timeouts
from memring.engine.serde import SafeSerde, Serde
from memring.errors import ConfigError

__all__ = ["ARGUMENTS", "Argument", "Legacy", "PymemcacheMethods", "SocketOptions", "translate"]

Treatment = Literal["same", "mapped", "ignored", "refused"]


@dataclass(frozen=True)
class Argument:
    """One pymemcache constructor argument and what memring does with it.

    ``treatment``: ``same`` (memring's own argument of that name, same
    meaning), ``mapped`` (onto a memring policy or option), ``ignored``
    (memring always does what it asks for, or it has no effect here), or
    ``refused`` (:class:`~memring.ConfigError`, with why and what instead).
    """

    treatment: Treatment
    meaning: str


#: Every keyword argument of pymemcache 4's ``Client``, ``PooledClient`` and
#: ``HashClient`` (the server argument aside), and what memring does with it.
ARGUMENTS: dict[str, Argument] = {
    "serde": Argument("same", "a pymemcache serde object; None: memring's safe serde "
                              "(bytes, str, int, JSON; never pickle) with `encoding`"),
    "serializer": Argument("mapped", "with `deserializer`, wrapped as pymemcache does "
                                     "(LegacyWrappingSerde); not together with `serde`"),
    "deserializer": Argument("mapped", "see `serializer`"),
    "connect_timeout": Argument("mapped", "Timeouts(connect=...); None: memring's 0.5 s, "
                                          "never 'forever'"),
    "timeout": Argument("mapped", "Timeouts(read=...), bounding a whole reply; None: "
                                  "memring's 1.0 s, never 'forever'"),
    "no_delay": Argument("ignored", "memring always sets TCP_NODELAY"),
    "ignore_exc": Argument("mapped", "True: Failover('fail', return_default=True): a failed "
                                     "node's reads miss and its writes return False"),
    "socket_module": Argument("mapped", "sockets are made with it (gevent's, say); a module "
                                        "other than the stdlib's gets Python-level timeouts"),
    "socket_keepalive": Argument("mapped", "a KeepaliveOpts, set on every connection "
                                           "(Linux only, as in pymemcache)"),
    "key_prefix": Argument("same", "prepended to every key; the prefixed key is routed"),
    "default_noreply": Argument("mapped", "True: store commands return True, as in "
                                          "pymemcache, but every write still waits for "
                                          "its reply (see the README)"),
    "allow_unicode_keys": Argument("mapped", "False (pymemcache's default): a non-ASCII str "
                                             "key raises InvalidKey; True: keys are UTF-8"),
    "encoding": Argument("mapped", "how str values become bytes ('ascii', pymemcache's "
                                   "default: a non-ASCII str raises SerializationError)"),
    "tls_context": Argument("same", "an ssl.SSLContext: every connection is TLS"),
    "max_pool_size": Argument("same", "connections kept per node (None: one per thread)"),
    "pool_idle_timeout": Argument("mapped", "an idle pooled connection older than this "
                                            "many seconds is closed instead of reused "
                                            "(0: never)"),
    "lock_generator": Argument("mapped", "makes the lock each node's pool takes when it "
                                         "opens or drops a connection"),
    "use_pooling": Argument("ignored", "memring always pools connections"),
    "retry_attempts": Argument("mapped", "HealthPolicy(failure_threshold=retry_attempts + 1): "
                                         "a node is taken out after that many failures "
                                         "in a row, as pymemcache marks it dead"),
    "retry_timeout": Argument("mapped", "HealthPolicy(backoff_initial=...): the first "
                                        "retry of a failed node, off the request path"),
    "dead_timeout": Argument("mapped", "HealthPolicy(backoff_max=...): the longest a dead "
                                       "node goes untried; failover_ttl grows to cover it"),
    "hasher": Argument("refused", "every client must derive the same failover order from "
                                  "the ring for Invariant S; use hash='murmur3' or "
                                  "hash='ketama' (libmemcached's placement)"),
}

#: The shortest probe delay retry_timeout=0 or dead_timeout=0 ("retry at
#: once") gives: probes run in the background, but not in a busy loop.
MIN_PROBE_DELAY = 0.05


@dataclass(frozen=True)
class SocketOptions:
    """How a face's transport makes and pools its connections."""

    #: None: the standard library's (the engine does no I/O, so it names none).
    socket_module: types.ModuleType | None = None
    socket_keepalive: Any = None
    pool_idle_timeout: float = 0.0
    lock_generator: Callable[[], Any] | None = None

    def as_kwargs(self) -> dict[str, Any]:
        """The transport's keyword arguments (those set)."""
        out: dict[str, Any] = {"socket_keepalive": self.socket_keepalive,
                               "pool_idle_timeout": self.pool_idle_timeout,
                               "lock_generator": self.lock_generator}
        if self.socket_module is not None:
            out["socket_module"] = self.socket_module
        return out


@dataclass(frozen=True)
class Legacy:
    """What :func:`translate` made of a client's arguments."""

    failover: Failover | str
    timeouts: Timeouts | None
    health: HealthPolicy | None
    serde: Serde
    default_noreply: bool
    allow_unicode_keys: bool
    encoding: str
    sockets: SocketOptions = field(default_factory=SocketOptions)


def translate(options: dict[str, Any], *, failover: Failover | str,
              timeouts: Timeouts | None, health: HealthPolicy | None,
              serde: Serde | None) -> Legacy:
    """Apply pymemcache's keyword arguments (``options``, consumed) to memring's own.

    Raises :class:`~memring.ConfigError` for an unknown or refused
    argument, a bad value, or an argument given together with the memring
    policy it maps onto.
    """
    unknown = sorted(set(options) - set(ARGUMENTS))
    if unknown:
        raise ConfigError(f"unknown Client options: {', '.join(unknown)}")
    if "hasher" in options:
        raise ConfigError(f"hasher is not supported: {ARGUMENTS['hasher'].meaning}")
    timeouts = _timeouts(options, timeouts)
    if _bool("ignore_exc", options.pop("ignore_exc", False)):
        wanted = Failover("fail", return_default=True)
        if isinstance(failover, Failover) and failover != wanted:
            raise ConfigError(f"ignore_exc=True means {wanted!r}; it contradicts "
                              f"failover={failover!r}: pass one of them")
        failover = wanted
    health, failover = _health(options, health, failover)
    encoding = _encoding(options.pop("encoding", "ascii"))
    for name in ("no_delay", "use_pooling"):
        _bool(name, options.pop(name, False))
    return Legacy(
        failover=failover, timeouts=timeouts, health=health,
        serde=_serde(options, serde, encoding),
        default_noreply=_bool("default_noreply", options.pop("default_noreply", False)),
        allow_unicode_keys=_bool("allow_unicode_keys",
                                 options.pop("allow_unicode_keys", False)),
        encoding=encoding, sockets=_sockets(options))


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be a bool, got {value!r}")
    return value


def _timeouts(options: dict[str, Any], timeouts: Timeouts | None) -> Timeouts | None:
    connect = options.pop("connect_timeout", None)
    read = options.pop("timeout", None)
    if connect is None and read is None:
        return timeouts
    if timeouts is not None:
        raise ConfigError("pass either timeouts= or connect_timeout=/timeout=, not both")
    return Timeouts(connect=connect, read=read)


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not (
            0 <= value < math.inf):
        raise ConfigError(f"{name} must be a number of seconds >= 0, got {value!r}")
    return max(float(value), MIN_PROBE_DELAY)


def _health(options: dict[str, Any], health: HealthPolicy | None, failover: Failover | str
            ) -> tuple[HealthPolicy | None, Failover | str]:
    """retry_attempts, retry_timeout, dead_timeout onto a HealthPolicy (and failover_ttl)."""
    given = {n: options.pop(n) for n in ("retry_attempts", "retry_timeout", "dead_timeout")
             if n in options}
    if not given:
        return health, failover
    if health is not None:
        raise ConfigError(f"pass either health= or {'/'.join(given)}=, not both")
    attempts = given.get("retry_attempts", defaults.FAILURE_THRESHOLD - 1)
    if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 0:
        raise ConfigError(f"retry_attempts must be an int >= 0, got {attempts!r}")
    first = (_seconds("retry_timeout", given["retry_timeout"]) if "retry_timeout" in given
             else defaults.BACKOFF_INITIAL)
    if "dead_timeout" in given:
        longest = _seconds("dead_timeout", given["dead_timeout"])
        first = min(first, longest)
    else:
        longest = max(first, defaults.BACKOFF_MAX)
    policy = HealthPolicy(failure_threshold=attempts + 1, backoff_initial=first,
                          backoff_max=longest)
    if isinstance(failover, str) and failover == "next":
        # Every client must see a returned node before its warming window
        # ends (see resolve()); a dead_timeout longer than the default
        # window lengthens the copies' life to match, as the user asked for
        # a node to stay out that long.
        ttl = max(defaults.FAILOVER_TTL, math.ceil(policy.slowest_probe))
        if ttl != defaults.FAILOVER_TTL:
            failover = Failover("next", failover_ttl=ttl)
    return policy, failover


def _encoding(value: Any) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"encoding must be a codec name, got {value!r}")
    return SafeSerde(encoding=value).encoding  # its name, or ConfigError


def _serde(options: dict[str, Any], serde: Serde | None, encoding: str) -> Serde:
    serializer = options.pop("serializer", None)
    deserializer = options.pop("deserializer", None)
    if serializer is None and deserializer is None:
        return serde if serde is not None else SafeSerde(encoding=encoding)
    if serde is not None:
        # pymemcache silently ignores the functions then; a user who passed
        # both meant one of them, and memring will not guess which.
        raise ConfigError("pass either serde= or serializer=/deserializer=, not both")
    for name, fn in (("serializer", serializer), ("deserializer", deserializer)):
        if fn is not None and not callable(fn):
            raise ConfigError(f"{name} must be callable, got {fn!r}")
    from pymemcache.serde import LegacyWrappingSerde

    wrapped: Serde = LegacyWrappingSerde(serializer, deserializer)
    return wrapped


def _sockets(options: dict[str, Any]) -> SocketOptions:
    module = options.pop("socket_module", None)
    if module is not None and not (isinstance(module, types.ModuleType)
                                   and callable(getattr(module, "socket", None))):
        raise ConfigError(f"socket_module must be a module with socket(), got {module!r}")
    keepalive = options.pop("socket_keepalive", None)
    if keepalive is not None:
        from pymemcache.client.base import KeepaliveOpts

        if not isinstance(keepalive, KeepaliveOpts):
            raise ConfigError(f"socket_keepalive must be a pymemcache KeepaliveOpts, got "
                              f"{keepalive!r}")
        if not sys.platform.startswith("linux"):
            raise ConfigError("socket_keepalive is supported on Linux only (as in pymemcache)")
    idle = options.pop("pool_idle_timeout", 0)
    if isinstance(idle, bool) or not isinstance(idle, (int, float)) or not 0 <= idle < math.inf:
        raise ConfigError(f"pool_idle_timeout must be a number of seconds >= 0, got {idle!r}")
    lock_generator = options.pop("lock_generator", None)
    if lock_generator is not None and not callable(lock_generator):
        raise ConfigError(f"lock_generator must be callable, got {lock_generator!r}")
    return SocketOptions(socket_module=module, socket_keepalive=keepalive,
                         pool_idle_timeout=float(idle), lock_generator=lock_generator)


class _OwnClass:
    """``client_class``: the class it is read from (see :class:`PymemcacheMethods`)."""

    def __get__(self, obj: object, owner: type) -> type:
        return owner


class PymemcacheMethods:
    """The pymemcache methods a face has that need no I/O, written once for every face.

    A face mixes this in; it has ``_engine``.
    """

    _engine: Any

    #: pymemcache's ``HashClient.client_class`` names the class it makes for
    #: each server. memring has no per-server client: a face's own class takes
    #: one server as pymemcache's ``Client`` does, so that is what this is.
    #: Setting it changes nothing.
    client_class = _OwnClass()

    def check_key(self, key: str | bytes, key_prefix: bytes | None = None) -> bytes:
        """The wire form of ``key``: ``key_prefix`` (by default the client's) and
        the key, checked as every call checks it; :class:`~memring.InvalidKey` if bad."""
        result: bytes = self._engine.check_key(key, key_prefix)
        return result

    def add_server(self, server: Any, port: int | None = None) -> None:
        """Not supported yet: raises ``NotImplementedError``."""
        raise NotImplementedError(_MEMBERSHIP.format(what="add_server"))

    def remove_server(self, server: Any, port: int | None = None) -> None:
        """Not supported yet: raises ``NotImplementedError``."""
        raise NotImplementedError(_MEMBERSHIP.format(what="remove_server"))


_MEMBERSHIP = (
    "{what}: memring's membership is fixed when the client is made. Changing it "
    "safely needs every client to agree on the new ring and hand keys over "
    "(Invariant S), which is the planned membership work; until then, make a new "
    "client with the new server list.")
