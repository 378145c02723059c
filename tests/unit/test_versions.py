"""The stored format: what a copy says about the home node it stands in for."""

from __future__ import annotations

import pytest

from memring.engine.versions import (
    FLAG_FOR_BACKUP,
    FLAG_FOR_PRIMARY,
    USER_FLAGS,
    Kind,
    decode,
    encode,
    tombstone,
)

NOW = 1_000_000.0


@pytest.mark.parametrize("bits", [0, FLAG_FOR_PRIMARY, FLAG_FOR_BACKUP,
                                  FLAG_FOR_PRIMARY | FLAG_FOR_BACKUP])
def test_a_copy_keeps_the_home_nodes_it_stands_for(bits: int) -> None:
    value = decode(encode((b"v", 7), 42, 0, copy=True, stands_for=bits), NOW)
    assert (value.kind, value.version, value.item, value.copy) == (Kind.VALUE, 42, (b"v", 7), True)
    assert value.stands_for == bits
    gone = decode(tombstone(43, copy=True, stands_for=bits), NOW)
    assert (gone.kind, gone.version, gone.stands_for) == (Kind.TOMBSTONE, 43, bits)
    expired = decode(encode((b"v", 7), 44, int(NOW) - 1, copy=True, stands_for=bits), NOW)
    assert (expired.kind, expired.stands_for) == (Kind.TOMBSTONE, bits)


def test_only_copies_stand_in() -> None:
    raw = encode((b"v", USER_FLAGS), 42, 0, stands_for=FLAG_FOR_PRIMARY)
    assert raw[1] & (FLAG_FOR_PRIMARY | FLAG_FOR_BACKUP) == 0
    assert decode(raw, NOW).stands_for == 0
    assert decode(raw, NOW).item == (b"v", USER_FLAGS)
    assert tombstone(42, stands_for=FLAG_FOR_BACKUP)[1] & FLAG_FOR_BACKUP == 0


def test_the_bits_are_not_the_serdes() -> None:
    assert (FLAG_FOR_PRIMARY | FLAG_FOR_BACKUP) & USER_FLAGS == 0
