"""Small immutable, validated policy objects: Timeouts, HealthPolicy, Failover."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Literal

from memring.engine import defaults
from memring.errors import ConfigError

__all__ = ["Failover", "HealthPolicy", "Timeouts"]


def _positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero) or value != value:
        raise ConfigError(f"{name} must be > 0, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Timeouts:
    """Connect and read timeouts in seconds. Both always on.

    >>> Timeouts(0.2)
    Timeouts(connect=0.2, read=0.2)
    >>> Timeouts(read=2.0)
    Timeouts(connect=0.5, read=2.0)
    """

    connect: float = defaults.CONNECT_TIMEOUT
    read: float = defaults.READ_TIMEOUT

    def __init__(self, timeout: float | None = None, *, connect: float | None = None,
                 read: float | None = None) -> None:
        c = connect if connect is not None else timeout
        r = read if read is not None else timeout
        object.__setattr__(self, "connect", _positive(
            "connect timeout", defaults.CONNECT_TIMEOUT if c is None else c))
        object.__setattr__(self, "read", _positive(
            "read timeout", defaults.READ_TIMEOUT if r is None else r))

    def __repr__(self) -> str:
        return f"Timeouts(connect={self.connect}, read={self.read})"


@dataclass(frozen=True)
class HealthPolicy:
    """When a node is marked down, and how often it is probed while down.

    ``failure_threshold`` consecutive failures mark a node down. Probes start
    ``backoff_initial`` seconds later and the delay grows by
    ``backoff_multiplier`` up to ``backoff_max``, each delay scaled by a random
    factor in ``[1 - jitter, 1 + jitter]`` so that many clients do not probe
    in step.
    """

    failure_threshold: int = defaults.FAILURE_THRESHOLD
    backoff_initial: float = defaults.BACKOFF_INITIAL
    backoff_multiplier: float = defaults.BACKOFF_MULTIPLIER
    backoff_max: float = defaults.BACKOFF_MAX
    jitter: float = defaults.BACKOFF_JITTER

    def __post_init__(self) -> None:
        t = self.failure_threshold
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ConfigError(f"failure_threshold must be an int >= 1, got {t!r}")
        _positive("backoff_initial", self.backoff_initial)
        if _positive("backoff_multiplier", self.backoff_multiplier) < 1:
            raise ConfigError("backoff_multiplier must be >= 1")
        if _positive("backoff_max", self.backoff_max) < self.backoff_initial:
            raise ConfigError("backoff_max must be >= backoff_initial")
        if not 0 <= _positive("jitter", self.jitter, allow_zero=True) < 1:
            raise ConfigError("jitter must be in [0, 1)")

    @property
    def slowest_probe(self) -> float:
        """The longest a down node can wait for its next probe (backoff_max, jitter included)."""
        return self.backoff_max * (1 + self.jitter)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds before probe number ``attempt`` (0-based), jitter applied."""
        base = min(self.backoff_max, self.backoff_initial * self.backoff_multiplier ** attempt)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1 + spread))


@dataclass(frozen=True)
class Failover:
    """What a call does when its key's home node is down, and how long copies live.

    ``Failover("next")`` (default): the key goes to the next live node of its
    preference list. Copies written there live at most ``failover_ttl``
    seconds after the home node returns (they are kept alive while it is
    down), and when it returns it is *warming* for that long: reads consult
    both, and the newer version wins, so no stale value or deleted key comes
    back.

    ``Failover("fail")``: raise :class:`~memring.NodeUnavailable`, or with
    ``return_default=True`` behave like a miss (``get`` returns its default,
    writes return False) — the pymemcache ``ignore_exc`` behaviour, chosen
    explicitly.

    ``tombstone_ttl``: how long a delete's tombstone lives (default 300 s, or
    ``failover_ttl`` + 7 s if that is longer). A copy of a key
    older than this is never put back onto a node that lacks the key (the
    delete that removed it could have been forgotten), unless that node
    restarted more recently than this. Tombstones cost memory: about 100
    bytes each, times deletes per second, times ``tombstone_ttl``.

    ``verify_reads``: read the key's home and the node after it at once, and
    return the newer. It costs a second read per ``get`` and removes stale
    reads by clients that did not see a fault another client failed over for.
    None means the client's default: off for :class:`~memring.Client`, on for
    :class:`~memring.BackupClient` (which reads its two copies).
    """

    mode: Literal["next", "fail"] = "next"
    failover_ttl: int = defaults.FAILOVER_TTL
    return_default: bool = False
    tombstone_ttl: int = None  # type: ignore[assignment]  # None: derived, see __post_init__
    verify_reads: bool | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("next", "fail"):
            raise ConfigError(f"failover mode must be 'next' or 'fail', got {self.mode!r}")
        ttl = self.failover_ttl
        # memcached's clock ticks once a second: a 1-second TTL can end at once.
        if isinstance(ttl, bool) or not isinstance(ttl, int) or not 2 <= ttl <= 30 * 24 * 3600:
            raise ConfigError(f"failover_ttl must be an int of seconds in 2..2592000, got {ttl!r}")
        if not isinstance(self.return_default, bool):
            raise ConfigError("return_default must be a bool")
        if self.return_default and self.mode != "fail":
            raise ConfigError("return_default applies to Failover('fail') only")
        least = int(self.warming_seconds) + defaults.TOMBSTONE_MARGIN
        if self.tombstone_ttl is None:
            object.__setattr__(self, "tombstone_ttl", max(defaults.TOMBSTONE_TTL, least))
        tomb = self.tombstone_ttl
        if isinstance(tomb, bool) or not isinstance(tomb, int) or not least <= tomb <= 30 * 86400:
            raise ConfigError(
                f"tombstone_ttl must be an int of seconds from failover_ttl + "
                f"{least - ttl} ({least}) to 2592000, got {tomb!r}")
        if self.verify_reads is not None and not isinstance(self.verify_reads, bool):
            raise ConfigError("verify_reads must be a bool or None")

    @classmethod
    def coerce(cls, value: Failover | str) -> Failover:
        if isinstance(value, Failover):
            return value
        if isinstance(value, str):
            return cls(value)  # type: ignore[arg-type]
        raise ConfigError(f"failover must be a Failover or 'next'/'fail', got {value!r}")

    @property
    def warming_seconds(self) -> float:
        """How long a returning node is warming: no failover copy outlives it."""
        return self.failover_ttl + defaults.WARMING_MARGIN

    @property
    def keepalive_seconds(self) -> float:
        """How often, while a node is down, the copies of its keys get their TTL back."""
        return self.failover_ttl / defaults.KEEPALIVES_PER_TTL
