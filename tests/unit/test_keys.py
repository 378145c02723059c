"""encode_keys checks a batch exactly as encode_key checks each of its keys."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memring.engine.keys import encode_key, encode_keys
from memring.errors import InvalidKey

# Mostly valid keys, with every way of being invalid mixed in.
valid = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), min_size=1, max_size=40)
bad = st.sampled_from(["", "a b", "a\r\nflush_all", "tab\t", "\x00", "del\x7f", "x" * 251,
                       "ü" * 126, b"", b"a\nb", 7, None, bytearray(b"k")])
keys = st.lists(valid | valid.map(str.encode) | bad, max_size=12)


def one_by_one(batch: list[object], prefix: bytes) -> dict[bytes, object] | type[Exception]:
    try:
        return {encode_key(k, prefix): k for k in batch}  # type: ignore[arg-type]
    except InvalidKey as exc:
        return type(exc)


@settings(max_examples=400, deadline=None)
@given(batch=keys, prefix=st.sampled_from([b"", b"app:"]))
def test_a_batch_is_checked_like_each_key(batch: list[object], prefix: bytes) -> None:
    expected = one_by_one(batch, prefix)
    if isinstance(expected, dict):
        assert encode_keys(batch, prefix) == expected  # type: ignore[arg-type]
    else:
        with pytest.raises(expected):
            encode_keys(batch, prefix)  # type: ignore[arg-type]


def test_the_error_names_the_first_bad_key() -> None:
    with pytest.raises(InvalidKey) as info:
        encode_keys(["ok", "a\r\nflush_all", "b c"])
    assert info.value.key == "a\r\nflush_all"
    assert encode_keys([]) == {}
    assert encode_keys(iter(["x", "x"])) == {b"x": "x"}


@settings(max_examples=500, deadline=None)
@given(key=st.text(max_size=30) | st.binary(max_size=30))
def test_a_key_is_refused_exactly_when_its_bytes_could_end_the_command(key: str | bytes) -> None:
    raw = key.encode() if isinstance(key, str) else key
    unsafe = not raw or any(b <= 0x20 or b == 0x7f for b in raw)
    if unsafe:
        with pytest.raises(InvalidKey):
            encode_key(key)
    else:
        assert encode_key(key) == raw
        assert encode_key(key, b"app:") == b"app:" + raw
