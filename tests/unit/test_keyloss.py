"""Tests for memring.tools.keyloss: the simulated key-loss measurement (and what of the
live one needs no server: argument checks, the missing binary, plotting).

Statistical checks use bounds derived from the key count, so they tell a
correct simulation from a broken one rather than merely "something near":

* sampling error: a measured fraction of ``n`` keys has standard error
  ``sqrt(p(1-p)/n)``; we allow 5 of them.
* the ring's own imbalance: with ``V`` random points per node, the share of
  ``k`` of ``N`` nodes is about Beta(kV, (N-k)V), standard deviation
  ``sqrt(k(N-k)/(N^3 V))``; we allow 4 of them when comparing with ``k/N``.

The tight checks compare against the *exact* share of the ring computed here
from the ring's points, leaving only the sampling error.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import re
import subprocess
import sys
from fractions import Fraction
from itertools import combinations
from typing import Any

import pytest

from memring import ConfigError, HashRing
from memring.hashring import DEFAULT_VNODES, Node
from memring.hashring.hashes import ketama_key_hash, murmur3_key_hash, murmur3_points
from memring.tools.keyloss import (
    FIELDS,
    FORMATS,
    MAX_LIVE_NODES,
    MAX_NODES,
    MODES,
    NODE_LIMITS,
    PLOT_INSTALL_HINT,
    KeylossRow,
    PlotUnavailable,
    backup_expected_loss,
    check_plot_available,
    choose_killed,
    describe_run,
    format_rows,
    measure_live,
    modulo_expected_loss,
    plot_rows,
    ring_expected_loss,
    session_keys,
    simulate,
    synthetic_nodes,
)
from memring.tools.local import MemcachedNotFound

KEYS = 50_000
ALL = ("ring", "modulo", "backup")
EXPECTED_FIELDS = (
    "nodes",
    "killed",
    "mode",
    "keys",
    "lost",
    "lost_fraction",
    "expected_fraction",
)


def std_error(p: float, n: int) -> float:
    return math.sqrt(p * (1 - p) / n)


def ring_sd(n: int, k: int, vnodes: int = DEFAULT_VNODES) -> float:
    return math.sqrt(k * (n - k) / (n**3 * vnodes))


def exact_shares(
    nodes: list[Node], vnodes: int = DEFAULT_VNODES
) -> tuple[dict[Node, float], dict[frozenset[Node], float]]:
    """Exact key-space share of each owner and each (primary, backup) pair.

    Computed from the murmur3 points, independently of HashRing's lookup code:
    a key hash h belongs to the first point >= h, wrapping around.
    """
    entries = sorted((p, node.label, node) for node in nodes for p in murmur3_points(node, vnodes))
    points = [e[0] for e in entries]
    owners = [e[2] for e in entries]
    total = len(points)
    owner_share: dict[Node, int] = {}
    pair_share: dict[frozenset[Node], int] = {}
    for i, point in enumerate(points):
        length = point - points[i - 1] if i else point + (1 << 64) - points[-1]
        owner = owners[i]
        owner_share[owner] = owner_share.get(owner, 0) + length
        j = (i + 1) % total
        while owners[j] == owner:
            j = (j + 1) % total
        pair = frozenset((owner, owners[j]))
        pair_share[pair] = pair_share.get(pair, 0) + length
    scale = 1 << 64
    return (
        {k: v / scale for k, v in owner_share.items()},
        {k: v / scale for k, v in pair_share.items()},
    )


def row_for(rows: list[KeylossRow], n: int, mode: str) -> KeylossRow:
    (row,) = [r for r in rows if r.nodes == n and r.mode == mode]
    return row


# -- the known answers ---------------------------------------------------------
@pytest.mark.parametrize(("n", "answer"), [(3, 1 / 3), (4, 1 / 4)])
def test_known_answer_one_node_of_n(n: int, answer: float) -> None:
    (row,) = simulate([n], keys=KEYS, modes=("ring",))
    assert row.expected_fraction == pytest.approx(answer)
    bound = 5 * std_error(answer, KEYS) + 4 * ring_sd(n, 1)
    # 3 nodes: bound ~0.065, so 1/4 (0.083 away) fails; 4 nodes: ~0.054, so 1/3 fails.
    assert abs(row.lost_fraction - answer) < bound


@pytest.mark.parametrize("n", [3, 4, 5, 10])
@pytest.mark.parametrize("kill", [1, 2])
def test_ring_matches_exact_share_of_killed_nodes(n: int, kill: int) -> None:
    (row,) = simulate([n], keys=KEYS, kill=kill, modes=("ring",))
    nodes = synthetic_nodes(n)
    owner_share, _ = exact_shares(nodes)
    share = sum(owner_share[node] for node in choose_killed(nodes, kill))
    assert abs(row.lost_fraction - share) < 5 * std_error(share, KEYS)
    # and the ring itself is close to k/N, within its own imbalance
    assert abs(share - kill / n) < 4 * ring_sd(n, kill)
    assert row.expected_fraction == pytest.approx(kill / n)


@pytest.mark.parametrize("n", [2, 3, 4, 5, 10])
def test_modulo_one_down_remaps_n_minus_1_over_n(n: int) -> None:
    (row,) = simulate([n], keys=KEYS, modes=("modulo",))
    expected = (n - 1) / n
    assert row.expected_fraction == pytest.approx(expected)
    assert abs(row.lost_fraction - expected) < 5 * std_error(expected, KEYS)


@pytest.mark.parametrize("n", [3, 4, 5, 6, 10])
def test_modulo_two_down_matches_exact_expectation(n: int) -> None:
    (row,) = simulate([n], keys=KEYS, kill=2, modes=("modulo",))
    nodes = synthetic_nodes(n)
    dead = [nodes.index(node) for node in choose_killed(nodes, 2)]
    expected = modulo_expected_loss(n, dead)
    assert row.expected_fraction == pytest.approx(expected)
    assert abs(row.lost_fraction - expected) < 5 * std_error(expected, KEYS)


@pytest.mark.parametrize("n", range(2, 9))
def test_modulo_expected_loss_is_exact(n: int) -> None:
    """Brute force over whole periods of (h % n, h % (n - k)): the formula is exact."""
    for k in (1, 2):
        if k >= n:
            continue
        m = n - k
        period = n * m // math.gcd(n, m)
        for dead in combinations(range(n), k):
            survivors = [a for a in range(n) if a not in dead]
            moved = sum(1 for h in range(period) if survivors[h % m] != h % n)
            assert modulo_expected_loss(n, dead) == pytest.approx(float(Fraction(moved, period)))


def test_modulo_expected_loss_depends_on_which_nodes_die() -> None:
    # 4 -> 2 nodes: killing 0 and 1 keeps half the keys home; killing 0 and 3
    # moves every key (old 1 -> new 0 needs h odd and even at once, likewise 2 -> 1).
    assert modulo_expected_loss(4, [0, 1]) == pytest.approx(0.5)
    assert modulo_expected_loss(4, [0, 3]) == pytest.approx(1.0)
    assert modulo_expected_loss(5, [1]) == pytest.approx(0.8)
    with pytest.raises(ConfigError):
        modulo_expected_loss(4, [4])
    with pytest.raises(ConfigError):
        modulo_expected_loss(2, [0, 1])


@pytest.mark.parametrize("n", [2, 3, 4, 5, 10])
def test_backup_loses_nothing_with_one_node_down(n: int) -> None:
    (row,) = simulate([n], keys=KEYS, modes=("backup",))
    assert row.lost == 0
    assert row.lost_fraction == 0.0
    assert row.expected_fraction == 0.0


@pytest.mark.parametrize("n", [3, 4, 5, 10])
def test_backup_two_down_loses_about_2_over_n_n_minus_1(n: int) -> None:
    (row,) = simulate([n], keys=KEYS, kill=2, modes=("backup",))
    expected = 2 / (n * (n - 1))
    assert row.expected_fraction == pytest.approx(expected)
    nodes = synthetic_nodes(n)
    _, pair_share = exact_shares(nodes)
    share = pair_share.get(frozenset(choose_killed(nodes, 2)), 0.0)
    assert abs(row.lost_fraction - share) < 5 * std_error(share, KEYS)
    # A pair holds about 2V/(N-1) arcs; its share varies by about sqrt((N-1)/V) relative.
    spread = expected * math.sqrt((n - 1) / DEFAULT_VNODES)
    assert abs(row.lost_fraction - expected) < 5 * std_error(expected, KEYS) + 4 * spread


@pytest.mark.parametrize("hash", ["murmur3", "ketama"])
@pytest.mark.parametrize("kill", [1, 2])
def test_counts_match_an_independent_recount(hash: str, kill: int) -> None:
    keys, n = 3000, 5
    rows = simulate([n], keys=keys, kill=kill, modes=ALL, seed=7, hash=hash)
    nodes = synthetic_nodes(n)
    killed = set(choose_killed(nodes, kill, seed=7))
    ring = HashRing(nodes, hash=hash)
    key_list = session_keys(keys, seed=7)
    key_hash = murmur3_key_hash if hash == "murmur3" else ketama_key_hash
    survivors = [node for node in nodes if node not in killed]
    expect = {
        "ring": sum(ring.node_for(k) in killed for k in key_list),
        "modulo": sum(
            nodes[key_hash(k) % n] != survivors[key_hash(k) % len(survivors)] for k in key_list
        ),
        "backup": sum(set(ring.nodes_for(k, 2)) <= killed for k in key_list),
    }
    assert {r.mode: r.lost for r in rows} == expect
    for r in rows:
        assert r.lost_fraction == r.lost / keys


def test_ketama_ring_is_near_one_over_n() -> None:
    rows = simulate([3, 4, 10], keys=KEYS, modes=ALL, hash="ketama")
    for n in (3, 4, 10):
        ring = row_for(rows, n, "ring")
        # ketama has 160 points per node
        assert abs(ring.lost_fraction - 1 / n) < 5 * std_error(1 / n, KEYS) + 4 * ring_sd(n, 1, 160)
        assert row_for(rows, n, "backup").lost == 0


def test_expected_helpers() -> None:
    assert ring_expected_loss(3, 1) == pytest.approx(1 / 3)
    assert ring_expected_loss(10, 2) == pytest.approx(0.2)
    assert backup_expected_loss(10, 1) == 0.0
    assert backup_expected_loss(4, 2) == pytest.approx(1 / 6)


# -- rows, determinism, inputs -------------------------------------------------
def test_row_fields_are_exact_and_frozen() -> None:
    assert tuple(f.name for f in dataclasses.fields(KeylossRow)) == EXPECTED_FIELDS
    assert FIELDS == EXPECTED_FIELDS
    row = KeylossRow(3, 1, "ring", 10, 3, 0.3, 1 / 3)
    assert list(row.as_dict()) == list(EXPECTED_FIELDS)
    assert row.as_dict()["lost"] == 3
    with pytest.raises(dataclasses.FrozenInstanceError):
        row.lost = 4  # type: ignore[misc]


def test_rows_come_in_node_then_mode_order() -> None:
    rows = simulate([4, 3], keys=100, modes=("backup", "ring"))
    assert [(r.nodes, r.mode) for r in rows] == [
        (4, "backup"),
        (4, "ring"),
        (3, "backup"),
        (3, "ring"),
    ]
    assert all(r.keys == 100 and r.killed == 1 for r in rows)


def test_default_modes_are_ring_and_modulo() -> None:
    assert [r.mode for r in simulate([3], keys=10)] == ["ring", "modulo"]


def test_same_seed_same_rows_other_seed_other_keys() -> None:
    a = simulate([3, 5], keys=2000, modes=ALL, seed=1)
    assert a == simulate([3, 5], keys=2000, modes=ALL, seed=1)
    assert session_keys(5, seed=1) != session_keys(5, seed=2)
    assert a != simulate([3, 5], keys=2000, modes=ALL, seed=2)


def test_session_keys_look_like_session_ids() -> None:
    keys = session_keys(1000, seed=3)
    assert len(set(keys)) == 1000
    assert all(re.fullmatch(r"session:[0-9a-f]{32}", k) for k in keys)
    assert session_keys(10, seed=3) == keys[:10]


def test_synthetic_nodes_and_killed_choice() -> None:
    nodes = synthetic_nodes(300)
    assert len({n.label for n in nodes}) == 300
    assert nodes[0].label == "10.0.0.1:11211"
    killed = choose_killed(nodes[:10], 2, seed=5)
    assert len(set(killed)) == 2 and set(killed) <= set(nodes[:10])
    assert killed == choose_killed(nodes[:10], 2, seed=5)
    # the victim varies with the seed
    assert len({tuple(choose_killed(nodes[:10], 1, seed=s)) for s in range(20)}) > 1


def test_progress_reports_every_key() -> None:
    calls: list[tuple[int, int]] = []
    simulate([3, 4], keys=25_000, modes=ALL, progress=lambda d, t: calls.append((d, t)))
    total = 25_000 * 2 * 3
    assert calls[0] == (0, total)
    assert calls[-1] == (total, total)
    done = [d for d, _ in calls]
    assert done == sorted(done)
    assert all(t == total for _, t in calls)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"node_counts": []},
        {"node_counts": [1]},
        {"node_counts": [0]},
        {"node_counts": [-3]},
        {"node_counts": [3.0]},
        {"node_counts": [True]},
        {"node_counts": "3,4"},
        {"node_counts": [100_000]},
        {"node_counts": [2], "kill": 2},
        {"node_counts": [3], "kill": 3},
        {"node_counts": [3], "kill": 0},
        {"node_counts": [3], "keys": 0},
        {"node_counts": [3], "keys": -1},
        {"node_counts": [3], "modes": ("ring", "rendezvous")},
        {"node_counts": [3], "modes": ()},
        {"node_counts": [3], "hash": "crc32"},
        {"node_counts": [3], "vnodes": 0},
        {"node_counts": [3], "hash": "ketama", "vnodes": 100},
        {"node_counts": [3], "seed": "x"},
    ],
)
def test_bad_input_raises_config_error(kwargs: dict[str, Any]) -> None:
    counts = kwargs.pop("node_counts")
    with pytest.raises(ConfigError) as info:
        simulate(counts, **kwargs)
    assert isinstance(info.value, ValueError)
    message = str(info.value)
    assert message and "\n" not in message


# -- output formats ------------------------------------------------------------
@pytest.fixture(scope="module")
def rows() -> list[KeylossRow]:
    return simulate([3, 4], keys=2000, modes=ALL)


def test_json_has_exactly_the_field_names(rows: list[KeylossRow]) -> None:
    data = json.loads(format_rows(rows, "json"))
    assert isinstance(data, list) and len(data) == 6
    for obj, row in zip(data, rows, strict=True):
        assert list(obj) == list(EXPECTED_FIELDS)
        assert obj == row.as_dict()


def test_csv_has_header_and_rows(rows: list[KeylossRow]) -> None:
    text = format_rows(rows, "csv")
    assert text.splitlines()[0] == ",".join(EXPECTED_FIELDS)
    parsed = list(csv.DictReader(io.StringIO(text)))
    assert len(parsed) == 6
    assert [(int(p["nodes"]), p["mode"], int(p["lost"])) for p in parsed] == [
        (r.nodes, r.mode, r.lost) for r in rows
    ]
    assert float(parsed[0]["lost_fraction"]) == rows[0].lost_fraction


def test_table_shows_every_row_with_percentages(rows: list[KeylossRow]) -> None:
    text = format_rows(rows, "table")
    lines = text.rstrip("\n").splitlines()
    assert re.split(r"\s{2,}", lines[0]) == [
        "nodes",
        "killed",
        "mode",
        "keys",
        "lost",
        "lost %",
        "expected %",
    ]
    assert len(lines) == 2 + len(rows)
    for line, row in zip(lines[2:], rows, strict=True):
        cells = line.split()
        assert cells[:5] == [str(row.nodes), "1", row.mode, "2000", str(row.lost)]
        assert cells[5] == f"{row.lost_fraction * 100:.2f}%"
        assert cells[6] == f"{row.expected_fraction * 100:.2f}%"
    assert len({len(line) for line in lines[:2]}) == 1  # header and rule align


def test_the_table_says_how_the_rows_were_measured(rows: list[KeylossRow]) -> None:
    simulated = describe_run(live=False, keys=2000, seed=0)
    assert simulated == "simulated: placement math only, no servers (2,000 keys, seed 0)"
    local = describe_run(live=True, keys=2000, seed=4)
    assert local.startswith("live: real memcached processes on 127.0.0.1")
    servers = describe_run(live=True, keys=2000, seed=0, servers=3)
    assert servers.startswith("live: your 3 servers") and "stood in for" in servers
    text = format_rows(rows, "table", heading=local)
    assert text == f"{local}\n" + format_rows(rows, "table")
    # Machine formats stay as they are: the heading is for people.
    assert format_rows(rows, "json", heading=local) == format_rows(rows, "json")
    assert format_rows(rows, "csv", heading=local) == format_rows(rows, "csv")


def test_every_format_ends_with_newline(rows: list[KeylossRow]) -> None:
    for fmt in FORMATS:
        assert format_rows(rows, fmt).endswith("\n")
    assert format_rows([], "json") == "[]\n"


def test_unknown_format_raises_config_error(rows: list[KeylossRow]) -> None:
    with pytest.raises(ConfigError, match="format"):
        format_rows(rows, "xml")


def test_modes_constant() -> None:
    assert MODES == ("ring", "modulo", "backup")


def test_keyloss_does_not_import_the_cli() -> None:
    code = "import sys, memring.tools.keyloss; sys.exit('memring.cli' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


# -- the live measurement: what needs no server ------------------------------------
@pytest.fixture
def no_memcached(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEMRING_MEMCACHED", "memring-test-no-such-memcached")


@pytest.mark.usefixtures("no_memcached")
@pytest.mark.parametrize(
    ("counts", "kwargs", "needle"),
    [
        (None, {}, "node counts"),
        ([1], {}, NODE_LIMITS),
        ([MAX_LIVE_NODES + 1], {}, NODE_LIMITS),
        ([3], {"kill": 3}, "--kill"),
        ([3, 2], {"kill": 2}, "cannot kill 2 of 2"),
        ([3], {"keys": 0}, "--keys"),
        ([3], {"modes": ("ring", "rendezvous")}, "mode"),
        ([3], {"hash": "crc32"}, "hash"),
        (None, {"servers": "127.0.0.1:1,127.0.0.1:2"}, "--down"),
        (None, {"down": "127.0.0.1:1"}, "--servers"),
        ([3], {"servers": "127.0.0.1:1,127.0.0.1:2", "down": "127.0.0.1:1"}, "--nodes"),
        (None, {"servers": "127.0.0.1:1,127.0.0.1:2", "down": "127.0.0.1:3"}, "not one of"),
        (
            None,
            {"servers": "127.0.0.1:1,127.0.0.1:2,127.0.0.1:3", "down": "127.0.0.1:1", "kill": 2},
            "--kill 2",
        ),
        (None, {"servers": "127.0.0.1:1,127.0.0.1:2", "down": "127.0.0.1:1", "keys": -1}, "--keys"),
    ],
)
def test_measure_live_checks_its_arguments_before_anything_starts(
    counts: list[int] | None, kwargs: dict[str, Any], needle: str
) -> None:
    # No memcached binary is needed to be told the input is wrong.
    with pytest.raises(ConfigError, match=re.escape(needle)):
        measure_live(counts, **kwargs)


@pytest.mark.usefixtures("no_memcached")
def test_the_node_limits_have_one_wording_live_and_simulated() -> None:
    with pytest.raises(ConfigError) as simulated:
        simulate([MAX_NODES + 1], keys=10)
    with pytest.raises(ConfigError) as live:
        measure_live([MAX_LIVE_NODES + 1], keys=10)
    assert str(simulated.value) == f"each node count must be an integer {NODE_LIMITS}; got 1001"
    assert str(live.value) == f"each node count must be an integer {NODE_LIMITS}; got 65"
    assert f"2 to {MAX_LIVE_NODES} live" in NODE_LIMITS and f"to {MAX_NODES} with" in NODE_LIMITS
    simulate([MAX_LIVE_NODES + 1], keys=10)  # over the live limit is fine in a simulation


@pytest.mark.usefixtures("no_memcached")
def test_measure_live_without_memcached_raises_with_the_install_hint() -> None:
    with pytest.raises(MemcachedNotFound, match="apt-get install -y memcached"):
        measure_live([3], keys=10)
    with pytest.raises(MemcachedNotFound):
        measure_live(keys=10, servers="127.0.0.1:1,127.0.0.1:2", down="127.0.0.1:2")


def test_plot_rows_draws_every_mode(tmp_path: Any) -> None:
    pytest.importorskip("matplotlib")
    rows = simulate([3, 4], keys=1000, modes=ALL)
    target = tmp_path / "loss.svg"
    plot_rows(rows, str(target), title="key loss")
    svg = target.read_text()
    for label in ("ring: measured", "modulo: expected", "backup: measured", "key loss"):
        assert label in svg
    with pytest.raises(ConfigError, match="nothing to plot"):
        plot_rows([], str(target))


def test_plot_rows_without_matplotlib_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    for name in ("matplotlib", "matplotlib.figure", "matplotlib.backends.backend_agg"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(PlotUnavailable, match=re.escape(PLOT_INSTALL_HINT)):
        check_plot_available()
    with pytest.raises(ImportError):  # PlotUnavailable is an ImportError too
        plot_rows(simulate([3], keys=10), str(tmp_path / "x.png"))
