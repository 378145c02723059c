"""What a chaos run reports: the report's types, its invariants, and its output.

:class:`ChaosReport` (with :class:`PhaseLatency` and :class:`FaultEvent`),
the checks that make it fail (:func:`_violations`, :func:`_multi_downs`),
and :func:`format_report`, which renders it as a table or JSON.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from memring.errors import ConfigError
from memring.tools.chaos.config import FORMATS, ChaosConfig


@dataclass(frozen=True)
class PhaseLatency:
    """Call latency in one phase, in milliseconds."""

    phase: str
    ops: int
    p50_ms: float
    p99_ms: float
    max_ms: float


@dataclass
class FaultEvent:
    """One injected fault and what the client and the workload saw of it.

    Times are seconds since the start of the run. ``detect_s``: from the
    injection until the client marked the node down (None: it never did,
    e.g. a restart that completed before any call noticed); for a flap, from
    the injection of the first of its cycles that the client noticed. ``recover_s``:
    from the (last) resume or restart until the client saw the node answer
    again. ``warm_s``: from then until every node was UP again.

    ``keys_checked``: keys with an acknowledged value from before the fault
    that were read during or after it (first read only); ``keys_missing``:
    those whose read missed. ``expected_fraction`` is what the mode promises
    for a kill or restart: 1/N for the single-copy ring, 0 for backup; a
    hang in mode "next" only hides a node's keys while it is out, so it
    misses at most 1/N (``expected_is_bound``). ``victim_share``: the share of checked keys whose
    home is the victim — the exact expectation of a kill for these keys.
    """

    index: int
    kind: str
    node: str
    actions: list[str]
    injected_at: float
    hold_s: float
    detect_s: float | None = None
    recover_s: float | None = None
    warm_s: float | None = None
    keys_checked: int = 0
    keys_missing: int = 0
    victim_keys: int = 0
    expected_fraction: float = 0.0
    expected_is_bound: bool = False
    #: A rolling restart: the nodes in the order restarted, and for each the
    #: seconds it waited until redundancy was back (None: it did not wait).
    rolled: list[str] = field(default_factory=list)
    waits_s: list[float | None] = field(default_factory=list)

    @property
    def missing_fraction(self) -> float:
        return self.keys_missing / self.keys_checked if self.keys_checked else 0.0

    @property
    def victim_share(self) -> float:
        return self.victim_keys / self.keys_checked if self.keys_checked else 0.0

    def as_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["missing_fraction"] = self.missing_fraction
        out["victim_share"] = self.victim_share
        return out


@dataclass
class ChaosReport:
    """What a chaos run measured. ``ok`` is False when an invariant broke."""

    config: ChaosConfig
    elapsed_s: float
    ops: int
    ops_by_kind: dict[str, int]
    errors: dict[str, int]
    unexpected_errors: int
    reads: dict[str, int]
    lost_keys: int
    unexpected_lost_keys: int
    latency: list[PhaseLatency]
    max_latency_s: float
    slow_calls: int
    slow_calls_in_stalls: int
    max_stall_s: float
    slowest: list[dict[str, Any]]
    events: list[FaultEvent]
    client_metrics: dict[str, Any]
    examples: list[dict[str, Any]]
    notes: dict[str, int]
    unplanned_downs: list[dict[str, Any]] = field(default_factory=list)
    multi_downs: list[dict[str, Any]] = field(default_factory=list)
    servers: list[str] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    #: Fault kinds of ``config.faults`` the run never injected, and why.
    skipped_faults: dict[str, str] = field(default_factory=dict)
    #: Backup mode: keys lost because a rolling restart did not wait for
    #: redundancy (both copies' nodes restarted before the rebuild): caused by
    #: the operator's schedule, reported, and no broken promise.
    nowait_lost_keys: int = 0

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def ops_per_s(self) -> float:
        return self.ops / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def stale_reads(self) -> int:
        return self.reads.get("stale", 0)

    @property
    def resurrected_deletes(self) -> int:
        return self.reads.get("resurrected", 0)

    @property
    def latency_bound_s(self) -> float:
        return self.config.latency_bound

    def as_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "violations": list(self.violations),
            "config": self.config.as_dict(),
            "elapsed_s": self.elapsed_s,
            "ops": self.ops,
            "ops_per_s": self.ops_per_s,
            "ops_by_kind": dict(self.ops_by_kind),
            "errors": dict(self.errors),
            "unexpected_errors": self.unexpected_errors,
            "reads": dict(self.reads),
            "stale_reads": self.stale_reads,
            "resurrected_deletes": self.resurrected_deletes,
            "lost_keys": self.lost_keys,
            "unexpected_lost_keys": self.unexpected_lost_keys,
            "nowait_lost_keys": self.nowait_lost_keys,
            "latency": [dataclasses.asdict(p) for p in self.latency],
            "max_latency_s": self.max_latency_s,
            "latency_bound_s": self.latency_bound_s,
            "slow_calls": self.slow_calls,
            "slow_calls_in_stalls": self.slow_calls_in_stalls,
            "max_stall_s": self.max_stall_s,
            "slowest": list(self.slowest),
            "events": [e.as_dict() for e in self.events],
            "client_metrics": self.client_metrics,
            "examples": list(self.examples),
            "notes": dict(self.notes),
            "unplanned_downs": list(self.unplanned_downs),
            "multi_downs": list(self.multi_downs),
            "servers": list(self.servers),
            "pids": list(self.pids),
            "skipped_faults": dict(self.skipped_faults),
        }


def _percentile(sorted_values: Sequence[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    rank = max(1, math.ceil(q * len(sorted_values)))
    return sorted_values[rank - 1]


def _violations(r: ChaosReport, stuck: list[str]) -> list[str]:
    out = []
    if r.stale_reads:
        out.append(f"{r.stale_reads} stale reads (Invariant S)")
    if r.resurrected_deletes:
        out.append(f"{r.resurrected_deletes} reads of deleted keys (Invariant S)")
    if r.config.mode == "backup" and r.lost_keys - r.nowait_lost_keys:
        out.append(f"{r.lost_keys - r.nowait_lost_keys} keys lost in backup mode "
                   f"({r.reads['lost_expected'] + r.reads['lost_unexpected']} reads missed); "
                   "0 is promised with one fault at a time")
    elif r.unexpected_lost_keys:
        out.append(f"{r.unexpected_lost_keys} keys lost whose home node had not failed "
                   f"since they were written ({r.reads['lost_unexpected']} reads missed)")
    if r.unexpected_errors:
        shown = ", ".join(f"{k} x{v}" for k, v in sorted(r.errors.items()))
        out.append(f"{r.unexpected_errors} errors reached the caller ({shown})")
    if r.slow_calls:
        out.append(f"{r.slow_calls} calls took longer than the bound of "
                   f"{r.latency_bound_s * 1000:.0f} ms (slowest {r.max_latency_s * 1000:.0f} ms)")
    if stuck:
        out.append(f"worker threads did not stop: {', '.join(stuck)}")
    return out


def _multi_downs(downs: dict[str, list[list[float | None]]],
                 end: float) -> list[dict[str, Any]]:
    """When two or more nodes were down at once in the client's view.

    One fault at a time is the premise of Invariant S and of the loss
    promises; a machine that freezes for longer than a read timeout breaks
    it by itself (every node misses its timeout).
    """
    marks: list[tuple[float, int, str]] = []
    for label, intervals in downs.items():
        for a, b in intervals:
            assert a is not None
            marks.append((a, 1, label))
            marks.append((b if b is not None else end, -1, label))
    marks.sort(key=lambda m: (m[0], m[1]))
    out: list[dict[str, Any]] = []
    down: set[str] = set()
    start = 0.0
    for t, step, label in marks:
        if step > 0:
            down.add(label)
            if len(down) == 2:
                start = t
                out.append({"t": round(t, 4), "nodes": sorted(down), "for_s": 0.0})
            elif len(down) > 2 and out:
                out[-1]["nodes"] = sorted(set(out[-1]["nodes"]) | down)
        else:
            if len(down) == 2 and out:
                out[-1]["for_s"] = round(t - start, 4)
            down.discard(label)
    return out


def _finite(t: float) -> float | None:
    """A time for the report; None for "before the run"."""
    return round(t, 4) if math.isfinite(t) else None


def _plain(value: Any) -> Any:
    """``value`` with every key a str, for JSON."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------
# output


def format_report(report: ChaosReport, fmt: str = "table") -> str:
    """The report as ``"table"`` (for people) or ``"json"``; ends with a newline."""
    if fmt == "json":
        return json.dumps(report.as_dict(), indent=2) + "\n"
    if fmt != "table":
        raise ConfigError(f"format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    return _format_table(report)


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.0f} ms"


def _format_table(r: ChaosReport) -> str:
    c = r.config
    lines = [
        f"memring chaos: mode {c.mode} ({c.face} face), {c.nodes} nodes, {c.threads} threads x "
        f"{c.keys_per_thread} keys, {r.elapsed_s:.1f} s, seed {c.seed}, faults "
        f"{','.join(c.faults) or 'none'}",
        f"timeouts connect {c.timeouts.connect:g} s / read {c.timeouts.read:g} s, "
        f"failure_threshold {c.health.failure_threshold}, failover_ttl {c.failover_ttl} s, "
        f"rate {f'{c.rate:,.0f} ops/s' if c.rate else 'unlimited'}",
        "",
        f"ops        {r.ops:,} ({r.ops_per_s:,.0f}/s): "
        + ", ".join(f"{k} {v:,}" for k, v in r.ops_by_kind.items()),
        "errors     " + (", ".join(f"{k} x{v}" for k, v in sorted(r.errors.items())) or "none")
        + (f" ({r.unexpected_errors} unexpected)" if r.unexpected_errors else ""),
        f"reads      ok {r.reads['ok']:,}, stale {r.stale_reads}, "
        f"resurrected {r.resurrected_deletes}, missed {r.reads['lost_expected']:,} expected "
        f"+ {r.reads['lost_unexpected']:,} unexpected",
        f"keys lost  {r.lost_keys:,} (unexpected {r.unexpected_lost_keys:,}"
        + (f"; {r.nowait_lost_keys:,} to a rolling restart that did not wait for redundancy"
           if r.nowait_lost_keys else "") + "); promised: "
        + ("none (backup, one fault at a time)" if c.mode == "backup"
           else "only keys of a failed node (about 1/N per kill)"),
        "",
        f"{'latency':<10} {'ops':>9} {'p50':>9} {'p99':>9} {'max':>9}",
    ]
    for p in r.latency:
        lines.append(f"{p.phase:<10} {p.ops:>9,} {p.p50_ms:>6.2f} ms {p.p99_ms:>6.1f} ms "
                     f"{p.max_ms:>6.0f} ms")
    lines.append(f"bound      {r.latency_bound_s * 1000:.0f} ms per call (connect + read "
                 f"timeout + {c.latency_margin * 1000:.0f} ms); slowest "
                 f"{r.max_latency_s * 1000:.0f} ms; {r.slow_calls} over")
    if r.max_stall_s:
        lines.append(f"stalls     the process was frozen for up to {r.max_stall_s * 1000:.0f} ms "
                     f"at a time (machine overloaded); {r.slow_calls_in_stalls} slow call(s) "
                     "are explained by that and not counted")
    lines.append("")
    if r.events:
        lines.append(f"{'#':>2} {'t':>6}  {'fault':<8} {'node':<16} {'hold':>6} {'detect':>8} "
                     f"{'recover':>8} {'warm':>7} {'checked':>7} {'missed':>7} {'victim':>7} "
                     f"{'promise':>7}")
        for e in r.events:
            promise = ("<=" if e.expected_is_bound else "") + f"{e.expected_fraction:.0%}"
            lines.append(
                f"{e.index:>2} {e.injected_at:>5.1f}s  {e.kind:<8} {e.node:<16} "
                f"{e.hold_s:>5.2f}s {_ms(e.detect_s):>8} {_ms(e.recover_s):>8} "
                f"{'-' if e.warm_s is None else f'{e.warm_s:.1f} s':>7} {e.keys_checked:>7,} "
                f"{e.missing_fraction:>7.1%} {e.victim_share:>7.1%} {promise:>7}")
    else:
        lines.append("no fault injected")
    for e in r.events:
        if e.rolled:
            waits = ", ".join(f"{n} {'-' if w is None else f'{w:.2f}s'}"
                              for n, w in zip(e.rolled, e.waits_s, strict=False))
            lines.append(f"rolling    #{e.index} {e.kind}: waited for redundancy after each "
                         f"restart: {waits}")
    for kind, why in r.skipped_faults.items():
        lines.append(f"skipped    {kind}: {why}")
    for u in r.unplanned_downs:
        lines.append(f"unplanned  {u['node']} marked down at {u['t']:.2f}s for "
                     f"{'?' if u['down_s'] is None else format(u['down_s'], '.2f')}s "
                     "with no fault injected (a slow call timed out)")
    lines.append("")
    if r.ok:
        lines.append("result     OK: no invariant broken")
    else:
        lines.append(f"result     FAILED: {len(r.violations)} invariant(s) broken")
        lines.extend(f"  - {v}" for v in r.violations)
        if r.unplanned_downs:
            lines.append(f"  note: {len(r.unplanned_downs)} down-mark(s) of healthy nodes (see "
                         "'unplanned' above): faults were not always one at a time")
        for m in r.multi_downs:
            lines.append(f"  note: at {m['t']:.2f}s {len(m['nodes'])} nodes were down at once "
                         f"for {m['for_s']:.2f}s; the invariants assume one at a time")
        for ex in r.examples[:10]:
            lines.append("    e.g. " + ", ".join(f"{k}={v}" for k, v in ex.items()))
    return "\n".join(lines) + "\n"
