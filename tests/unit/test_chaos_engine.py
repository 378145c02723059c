"""``memring.tools.chaos`` without servers: config checks, the fault schedule, the report, the CLI.

The engine itself runs against real memcached in ``tests/chaos``.
"""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

import memring.tools.chaos as chaos
from memring import ConfigError, Timeouts
from memring.cli import main
from memring.tools.chaos import (
    DEFAULT_FAULTS,
    ChaosConfig,
    ChaosReport,
    FaultEvent,
    PhaseLatency,
    fit_schedule,
    format_report,
    plan_faults,
    skipped_faults,
)
from memring.tools.chaos.report import _multi_downs


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"nodes": 1}, "nodes must be an integer from 2"),
        ({"nodes": True}, "nodes must be an integer"),
        ({"duration": 0}, "duration must be a number of seconds > 0"),
        ({"duration": float("nan")}, "duration must be a number"),
        ({"threads": 0}, "threads must be an integer from 1"),
        ({"mode": "ring"}, "mode must be one of next, backup"),
        ({"faults": ("kill", "explode")}, "unknown fault 'explode'"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"keys_per_thread": 0}, "keys_per_thread must be an integer from 1"),
        ({"value_size": -1}, "value_size must be an integer from 0"),
        ({"timeouts": 0.3}, "timeouts must be a memring.Timeouts"),
        ({"health": {}}, "health must be a memring.HealthPolicy"),
        ({"failover_ttl": 0}, "failover_ttl must be an integer of seconds"),
        ({"hold": (2.0, 1.0)}, "hold must be (min, max) seconds"),
        ({"hold": (0.5,)}, "hold must be (min, max) seconds"),
        ({"latency_margin": -0.1}, "latency_margin must be a number of seconds >= 0"),
        ({"rate": -1}, "rate must be a number of ops per second >= 0"),
        ({"hold": (1.0, 5.0)}, "a hold of 5s outlasts failover copies"),
    ],
)
def test_bad_config_is_refused(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ChaosConfig(**options)


def test_long_holds_can_be_asked_for() -> None:
    cfg = ChaosConfig(hold=(1.0, 5.0), allow_long_holds=True)
    assert cfg.hold == (1.0, 5.0)


def test_config_normalizes_and_derives() -> None:
    cfg = ChaosConfig(faults=("hang", "kill", "hang"), hold=(1, 1),
                      timeouts=Timeouts(connect=0.1, read=0.4), latency_margin=0.2)
    assert cfg.faults == ("hang", "kill")
    assert cfg.hold == (1.0, 1.0)
    assert cfg.latency_bound == pytest.approx(0.7)
    assert cfg.warming_seconds == cfg.failover_ttl + 2.0
    d = cfg.as_dict()
    assert d["faults"] == ["hang", "kill"] and d["latency_bound"] == pytest.approx(0.7)
    json.dumps(d)
    # The longest allowed hold leaves a second of memcached's clock and one probe delay.
    longest = cfg.failover_ttl - 1.0 - cfg.probe_delay_max
    ChaosConfig(hold=(0.5, longest))
    with pytest.raises(ConfigError):
        ChaosConfig(hold=(0.5, longest + 0.01))


def test_the_schedule_is_the_same_for_the_same_seed() -> None:
    cfg = ChaosConfig(seed=5)
    assert plan_faults(cfg, 20) == plan_faults(ChaosConfig(seed=5), 20)
    assert plan_faults(cfg, 20) != plan_faults(ChaosConfig(seed=6), 20)


def test_the_schedule_gives_every_kind_before_repeating_one() -> None:
    cfg = ChaosConfig(seed=3, nodes=5)
    plan = plan_faults(cfg, 12)
    for start in range(0, 12, len(DEFAULT_FAULTS)):
        assert sorted(p.kind for p in plan[start:start + len(DEFAULT_FAULTS)]) == sorted(
            DEFAULT_FAULTS)
    for p in plan:
        assert 0 <= p.node < 5
        if p.kind == "restart":
            assert p.cycles == (("kill", 0.0, 0.0),)
        elif p.kind in ("kill", "hang"):
            ((action, hold, gap),) = p.cycles
            assert action == p.kind and cfg.hold[0] <= hold <= cfg.hold[1] and gap == 0
        else:
            assert len(p.cycles) == 2 and p.cycles[0][0] == p.cycles[1][0]
            assert p.cycles[0][2] > 0 and p.cycles[1][2] == 0
        assert p.busy == pytest.approx(sum(h + g for _, h, g in p.cycles))


def test_no_faults_means_an_empty_schedule() -> None:
    assert plan_faults(ChaosConfig(faults=()), 10) == []


@pytest.mark.parametrize("seed", range(8))
def test_a_run_as_long_as_one_turn_reaches_every_kind(seed: int) -> None:
    needed = fit_schedule(ChaosConfig(seed=seed)).needed_s
    fit = fit_schedule(ChaosConfig(seed=seed, duration=math.ceil(needed)))
    assert sorted(fit.kinds) == sorted(DEFAULT_FAULTS)  # the first turn has each kind once
    assert list(fit.starts) == sorted(fit.starts) and fit.starts[-1] < needed
    assert fit.needed_s == needed  # the estimate does not depend on the duration asked
    assert fit.skipped == () and fit.note is None
    # A fault and its warming window take over 5 s: four need well over 20 s.
    assert needed > 4 * ChaosConfig().warming_seconds


@pytest.mark.parametrize("seed", range(8))
def test_a_short_run_says_up_front_which_kinds_it_skips(seed: int) -> None:
    fit = fit_schedule(ChaosConfig(seed=seed, duration=20))
    assert fit.skipped  # four faults do not fit in 20 s...
    assert fit.skipped == fit.kinds[len(fit.kinds) - len(fit.skipped):]  # ...the last do not
    assert fit.note is not None and fit.note.startswith("a 20 s run is too short")
    for kind in fit.skipped:
        assert f"{kind} (its turn comes at about {fit.start_of(kind):.0f} s)" in fit.note
        assert "too late for a 20 s run" in fit.reason(kind)
    assert f"{math.ceil(fit.needed_s)} s or more" in fit.note


def test_the_report_names_each_kind_the_run_did_not_inject() -> None:
    short = ChaosConfig(seed=0, duration=20)
    fit = fit_schedule(short)
    reached = [k for k in fit.kinds if k not in fit.skipped]
    assert skipped_faults(short, reached) == {k: fit.reason(k) for k in fit.skipped}
    # A run long enough that still missed a kind says it was not the duration.
    (why,) = skipped_faults(ChaosConfig(duration=60), ["kill", "hang", "flap"]).values()
    assert "earlier faults took longer than planned" in why
    assert skipped_faults(ChaosConfig(faults=()), []) == {}
    report = _report(config=short, skipped_faults={"hang": "its turn comes too late"})
    assert "skipped    hang: its turn comes too late" in format_report(report)
    assert json.loads(format_report(report, "json"))["skipped_faults"] == {
        "hang": "its turn comes too late"}


def test_cli_says_before_the_run_which_kinds_it_will_skip(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    before_run: list[str] = []

    def fake_run(config: ChaosConfig, **kwargs: Any) -> ChaosReport:
        before_run.append(capsys.readouterr().err)
        return _report(config=config)

    monkeypatch.setattr(chaos, "run_chaos", fake_run)
    assert main(["chaos", "--duration", "20"]) == 0
    (err,) = before_run
    note = fit_schedule(ChaosConfig(duration=20)).note
    assert note is not None and err == f"memring chaos: note: {note}\n"
    assert main(["chaos", "--duration", "40"]) == 0
    assert before_run[1] == ""  # long enough: nothing to say


def _report(**changes: Any) -> ChaosReport:
    fields: dict[str, Any] = {
        "config": ChaosConfig(),
        "elapsed_s": 10.0, "ops": 100, "ops_by_kind": {"get": 90, "set": 6, "delete": 2,
                                                       "touch": 2},
        "errors": {}, "unexpected_errors": 0,
        "reads": {"ok": 88, "stale": 0, "resurrected": 0, "lost_expected": 2,
                  "lost_unexpected": 0},
        "lost_keys": 2, "unexpected_lost_keys": 0,
        "latency": [PhaseLatency(p, 10, 0.2, 1.0, 300.0) for p in chaos.PHASES],
        "max_latency_s": 0.3, "slow_calls": 0, "slow_calls_in_stalls": 0, "max_stall_s": 0.0,
        "slowest": [], "events": [FaultEvent(1, "kill", "127.0.0.1:1", ["kill 1.00s"], 1.5,
                                             1.0, 0.01, 0.1, 5.0, 100, 25, 26, 0.25)],
        "client_metrics": {}, "examples": [], "notes": {},
    }
    fields.update(changes)
    return ChaosReport(**fields)


def test_format_report_table_and_json() -> None:
    report = _report()
    table = format_report(report)
    assert "result     OK: no invariant broken" in table
    assert " 1   1.5s  kill     127.0.0.1:1" in table
    assert "25.0%" in table and "26.0%" in table
    d = json.loads(format_report(report, "json"))
    assert d["ok"] is True and d["ops_per_s"] == 10.0
    assert d["events"][0]["missing_fraction"] == 0.25
    with pytest.raises(ConfigError):
        format_report(report, "csv")


def test_format_report_lists_the_violations() -> None:
    report = _report(violations=["3 stale reads (Invariant S)"],
                     examples=[{"what": "stale", "key": "k"}])
    assert not report.ok
    table = format_report(report)
    assert "FAILED: 1 invariant(s) broken" in table
    assert "  - 3 stale reads (Invariant S)" in table
    assert "e.g. what=stale, key=k" in table


def test_cli_bad_input_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, message in [
        (["chaos", "--nodes", "1"], "memring chaos: error: nodes must be an integer from 2"),
        (["chaos", "--faults", "kill,boom"], "memring chaos: error: argument --faults"),
        (["chaos", "--hold", "a,b"], "memring chaos: error: argument --hold"),
        (["chaos", "--mode", "ring"], "memring chaos: error: argument --mode"),
        (["chaos", "--hold", "3,4"], "memring chaos: error: a hold of 4s outlasts"),
    ]:
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert out == ""
        assert len(err.strip().splitlines()) == 1 and err.startswith(message), err


@pytest.mark.parametrize(("violations", "status"), [([], 0), (["2 stale reads"], 1)])
def test_cli_exit_status_follows_the_report(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
    violations: list[str], status: int,
) -> None:
    seen: list[ChaosConfig] = []

    def fake_run(config: ChaosConfig, **kwargs: Any) -> ChaosReport:
        seen.append(config)
        return _report(config=config, violations=violations)

    monkeypatch.setattr(chaos, "run_chaos", fake_run)
    argv = ["chaos", "--nodes", "5", "--duration", "7", "--threads", "3", "--mode", "backup",
            "--faults", "hang,restart", "--seed", "9", "--format", "json",
            "--read-timeout", "0.4"]
    assert main(argv) == status
    out, _ = capsys.readouterr()
    assert json.loads(out)["ok"] is (status == 0)
    (cfg,) = seen
    assert (cfg.nodes, cfg.duration, cfg.threads, cfg.mode, cfg.faults, cfg.seed) == (
        5, 7.0, 3, "backup", ("hang", "restart"), 9)
    assert cfg.timeouts.read == 0.4


def test_cli_faults_none_is_a_baseline(monkeypatch: pytest.MonkeyPatch,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    seen: list[ChaosConfig] = []

    def fake_run(config: ChaosConfig, **kwargs: Any) -> ChaosReport:
        seen.append(config)
        return _report(config=config, events=[])

    monkeypatch.setattr(chaos, "run_chaos", fake_run)
    assert main(["chaos", "--faults", "none"]) == 0
    assert seen[0].faults == ()
    assert "no fault injected" in capsys.readouterr().out


def test_multi_node_downs_are_found() -> None:
    downs: dict[str, list[list[float | None]]] = {
        "a": [[1.0, 2.0], [5.0, None]], "b": [[1.5, 3.0]], "c": [[1.6, 1.7], [9.0, 9.5]]}
    assert _multi_downs(downs, 10.0) == [
        {"t": 1.5, "nodes": ["a", "b", "c"], "for_s": 0.5},
        {"t": 9.0, "nodes": ["a", "c"], "for_s": 0.5},
    ]
    assert _multi_downs({"a": [[1.0, 2.0]], "b": [[3.0, 4.0]]}, 10.0) == []
