"""A client's settings, resolved once from its constructor's arguments.

Both faces take the same keyword arguments; :func:`resolve` validates them
and maps pymemcache's ``Client``/``PooledClient``/``HashClient`` arguments
onto memring's policy objects (:mod:`memring.engine.compat`), so code
written for pymemcache starts unchanged.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from typing import Any

from memring.engine import compat, defaults
from memring.engine.health import Clock, SystemClock
from memring.engine.keys import encode_key
from memring.engine.policies import Failover, HealthPolicy, Timeouts
from memring.engine.serde import Serde
from memring.errors import ConfigError, InvalidKey
from memring.hashring import DEFAULT_VNODES

__all__ = ["Settings", "resolve"]


@dataclass(frozen=True)
class Settings:
    failover: Failover
    timeouts: Timeouts
    health: HealthPolicy
    serde: Serde
    key_prefix: bytes
    hash: str
    vnodes: int
    max_item_size: int
    max_pool_size: int | None
    tls_context: ssl.SSLContext | None
    default_noreply: bool
    clock: Clock = field(default_factory=SystemClock)
    #: pymemcache's default: a non-ASCII str key raises InvalidKey.
    allow_unicode_keys: bool = False
    #: How a serde's str data becomes bytes (pymemcache's ``encoding``).
    encoding: str = "ascii"
    #: How the transport makes and pools connections.
    sockets: compat.SocketOptions = field(default_factory=compat.SocketOptions)


def resolve(
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
    tls_context: ssl.SSLContext | None = None,
    clock: Clock | None = None,
    **pymemcache_options: Any,
) -> Settings:
    """Validate a client's keyword arguments (pymemcache's included, see
    :data:`memring.engine.compat.ARGUMENTS`)."""
    legacy = compat.translate(pymemcache_options, failover=failover, timeouts=timeouts,
                              health=health, serde=serde)
    failover, timeouts, health = legacy.failover, legacy.timeouts, legacy.health
    failover = Failover.coerce(failover)
    timeouts = timeouts if timeouts is not None else Timeouts()
    if not isinstance(timeouts, Timeouts):
        raise ConfigError("timeouts must be a Timeouts")
    policy = health if health is not None else HealthPolicy()
    if not isinstance(policy, HealthPolicy):
        raise ConfigError("health must be a HealthPolicy")
    if failover.mode == "next" and policy.slowest_probe >= failover.warming_seconds:
        # Clients learn of a return at their own next probe; one that
        # still routes to the failover node after another client's
        # warming window has ended could read an old value at home.
        raise ConfigError(
            f"HealthPolicy.backoff_max (with jitter, {policy.slowest_probe:g}s) must be "
            f"shorter than the warming window, failover_ttl + margin "
            f"({failover.warming_seconds:g}s)")
    if isinstance(key_prefix, str):
        key_prefix = key_prefix.encode("utf-8")
    if not isinstance(key_prefix, bytes):
        raise ConfigError("key_prefix must be str or bytes")
    if key_prefix:
        try:
            encode_key(key_prefix)  # the prefix alone must be a valid key
        except InvalidKey as exc:
            raise ConfigError(f"key_prefix: {exc}") from None
    if isinstance(max_item_size, bool) or not isinstance(max_item_size, int) or (
            max_item_size <= defaults.ITEM_OVERHEAD):
        raise ConfigError(f"max_item_size must be an int > {defaults.ITEM_OVERHEAD}")
    if max_pool_size is not None and (isinstance(max_pool_size, bool) or not isinstance(
            max_pool_size, int) or max_pool_size < 1):
        raise ConfigError(f"max_pool_size must be an int >= 1 or None, got {max_pool_size!r}")
    if tls_context is not None and not isinstance(tls_context, ssl.SSLContext):
        raise ConfigError("tls_context must be an ssl.SSLContext")
    chosen = legacy.serde
    if not (callable(getattr(chosen, "serialize", None))
            and callable(getattr(chosen, "deserialize", None))):
        raise ConfigError("serde must have serialize() and deserialize() methods")
    return Settings(
        failover=failover, timeouts=timeouts, health=policy, serde=chosen,
        key_prefix=key_prefix, hash=hash, vnodes=vnodes, max_item_size=max_item_size,
        max_pool_size=max_pool_size, tls_context=tls_context,
        default_noreply=legacy.default_noreply, clock=clock or SystemClock(),
        allow_unicode_keys=legacy.allow_unicode_keys, encoding=legacy.encoding,
        sockets=legacy.sockets,
    )
