"""memring's ketama ring against placements recorded from twemproxy and libmemcached.

``tests/data/ketama_golden.json`` holds, per case, the server specs a real
program was given and the server each key actually landed on (regenerate it
with ``python bench/ketama_golden.py``). Rebuilding ``HashRing(servers,
hash="ketama")`` from the same specs must put every key on the same server.
No server is needed here.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from memring.hashring import HashRing

GOLDEN = Path(__file__).resolve().parent.parent / "data" / "ketama_golden.json"


def _load() -> list[dict[str, Any]]:
    with GOLDEN.open(encoding="utf-8") as f:
        doc = json.load(f)
    cases: list[dict[str, Any]] = doc["cases"]
    return cases


CASES = _load()


def _key(encoded: str | dict[str, str]) -> str | bytes:
    """A key as recorded: a JSON string, or ``{"hex": ...}`` for non-UTF-8 bytes."""
    return encoded if isinstance(encoded, str) else bytes.fromhex(encoded["hex"])


def test_golden_file_covers_both_programs_and_every_case() -> None:
    seen = {(c["program"], c["name"]) for c in CASES}
    for program in ("twemproxy", "libmemcached"):
        for name in ("3-equal", "4-equal", "25-equal", "weights-1-2-3-5", "default-port-11211"):
            assert (program, name) in seen
    assert ("twemproxy", "named") in seen
    for case in CASES:
        assert len(case["keys"]) == len(case["owners"]) >= 2000
        assert any(isinstance(k, dict) for k in case["keys"]), "no raw bytes keys"
        assert any(isinstance(k, str) and not k.isascii() for k in case["keys"]), "no unicode keys"


@pytest.mark.parametrize("case", CASES, ids=[f"{c['program']}-{c['name']}" for c in CASES])
def test_ketama_ring_matches_real_program(case: dict[str, Any]) -> None:
    servers: list[str] = case["servers"]
    ring = HashRing(servers, hash="ketama")
    # Map ring nodes back to positions in the program's server list.
    index = {node: i for i, node in enumerate(ring.nodes)}
    assert len(index) == len(servers)

    mismatches = []
    for encoded, owner in zip(case["keys"], case["owners"], strict=True):
        got = index[ring.node_for(_key(encoded))]
        if got != owner:
            mismatches.append((encoded, servers[owner], servers[got]))

    total = len(case["keys"])
    assert not mismatches, (
        f"{case['program']} ({case.get('version', '?')}) {case['name']}: "
        f"{len(mismatches)}/{total} keys placed differently; first few "
        f"(key, program's server, memring's server): {mismatches[:5]!r}"
    )


def test_25_equal_servers_get_156_points_each() -> None:
    """float32 rounding in the point count, the case the 25-server vectors pin down."""
    case = next(c for c in CASES if c["name"] == "25-equal")
    assert HashRing(case["servers"], hash="ketama").point_count == 25 * 156
