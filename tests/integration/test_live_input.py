"""Bad keys and oversized values are refused before any I/O, and nothing is written.

"Nothing sent" is measured on the servers: between two ``stats`` snapshots
every node must have read exactly one ``stats`` command and nothing else.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from pymemcache.exceptions import MemcacheServerError

from memring import Client, InvalidKey, ValueTooLarge
from memring.engine.base import ITEM_OVERHEAD
from tests import faces

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("face", faces.FACES, indirect=True)]

MAX_ITEM = 1024 * 1024  # memcached's default -I 1m

CONTROL = [chr(c) for c in range(0x20)] + ["\x7f", " "]

#: Every public call that takes keys, as (name, call with one key).
ONE_KEY: list[tuple[str, Callable[[Client, Any], object]]] = [
    ("get", lambda c, k: c.get(k)),
    ("gets", lambda c, k: c.gets(k)),
    ("set", lambda c, k: c.set(k, "v")),
    ("add", lambda c, k: c.add(k, "v")),
    ("replace", lambda c, k: c.replace(k, "v")),
    ("append", lambda c, k: c.append(k, b"v")),
    ("prepend", lambda c, k: c.prepend(k, b"v")),
    ("cas", lambda c, k: c.cas(k, "v", 1)),
    ("delete", lambda c, k: c.delete(k)),
    ("incr", lambda c, k: c.incr(k, 1)),
    ("decr", lambda c, k: c.decr(k, 1)),
    ("touch", lambda c, k: c.touch(k, 10)),
    ("route", lambda c, k: c.route(k)),
    ("get_many", lambda c, k: c.get_many(["fine", k])),
    ("gets_many", lambda c, k: c.gets_many(["fine", k])),
    ("set_many", lambda c, k: c.set_many({"fine": "v", k: "v"})),
    ("delete_many", lambda c, k: c.delete_many(["fine", k])),
]

BAD_KEYS = [
    "",
    b"",
    "x" * 251,
    b"x" * 251,
    "é" * 126,  # 252 bytes in UTF-8
    "a\r\nflush_all",
    b"a\r\nflush_all",
    "a\r\nset x 0 0 1\r\nz",
    "with space",
    "tab\tkey",
    "newline\n",
    "\rleading",
    "nul\x00",
    "del\x7f",
    123,
    None,
]


@pytest.fixture
def quiet(cluster, wire, client):
    """Asserts that nothing reached any node during the test body."""
    w = wire(cluster.nodes)
    client.get("warm-up")  # connections may open before the snapshot, not after
    before = w.snapshot()
    yield
    w.assert_quiet_since(before)


@pytest.mark.parametrize("key", BAD_KEYS, ids=repr)
@pytest.mark.parametrize(("name", "call"), ONE_KEY, ids=[n for n, _ in ONE_KEY])
def test_bad_keys_are_refused_before_any_io(client, quiet, name, call, key) -> None:
    with pytest.raises(InvalidKey) as info:
        call(client, key)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("char", CONTROL, ids=lambda c: f"{ord(c):#04x}")
def test_every_control_character_and_space_is_refused(client, quiet, char) -> None:
    for key in (f"{char}k", f"k{char}", f"k{char}k"):
        for form in (key, key.encode()):
            with pytest.raises(InvalidKey):
                client.set(form, "v")
            with pytest.raises(InvalidKey):
                client.get(form)


def test_key_length_counts_the_prefix_in_bytes(cluster, make_client, raw, ns) -> None:
    plain = make_client(cluster, allow_unicode_keys=True)
    longest = (ns + "x" * 250)[:250]
    assert plain.set(longest, "v") is True
    assert plain.get(longest) == "v"
    assert raw(plain.route(longest)).get(longest.encode()) is not None
    with pytest.raises(InvalidKey):
        plain.set(longest + "x", "v")
    wide = ns + "é" * ((250 - len(ns)) // 2)  # multi-byte characters count as bytes
    assert len(wide.encode()) <= 250
    assert plain.set(wide, "v") is True
    assert plain.get(wide) == "v"
    with pytest.raises(InvalidKey):
        plain.set(wide + "éé", "v")

    prefixed = make_client(cluster, key_prefix="app:")
    fits = longest[4:]
    assert prefixed.set(fits, "p") is True
    assert prefixed.get(fits) == "p"
    assert raw(prefixed.route(fits)).get(b"app:" + fits.encode()) is not None
    with pytest.raises(InvalidKey):
        prefixed.set(fits + "x", "p")  # 247 bytes, 251 with the prefix
    with pytest.raises(InvalidKey):
        prefixed.get(fits + "x")


def test_injected_command_in_a_key_runs_nothing(fresh_cluster, make_client, wire, ns) -> None:
    client = make_client(fresh_cluster)
    victims = {}
    i = 0
    while {client.route(k) for k in victims} != set(fresh_cluster.nodes):
        victims[f"{ns}:victim:{i}"] = f"precious {i}"
        i += 1
    assert client.set_many(victims) == []
    w = wire(fresh_cluster.nodes)
    before = w.snapshot()
    for key in ("a\r\nflush_all", b"a\r\nflush_all", "a\nflush_all", "a\rflush_all",
                "a flush_all", "a\r\nflush_all\r\n", "\r\nflush_all"):
        for call in (lambda k: client.set(k, "x"), lambda k: client.get(k),
                     lambda k: client.delete(k), lambda k: client.touch(k, 1),
                     lambda k: client.get_many([k]), lambda k: client.set_many({k: "x"}),
                     lambda k: client.delete_many([k]), lambda k: client.incr(k, 1)):
            with pytest.raises(InvalidKey):
                call(key)
    w.assert_quiet_since(before)
    stats = client.stats()
    assert {label: int(s[b"cmd_flush"]) for label, s in stats.items()} == {
        n.label: 0 for n in fresh_cluster.nodes}
    assert client.get_many(list(victims)) == victims


def test_a_command_inside_a_value_is_just_data(fresh_cluster, make_client, ns) -> None:
    client = make_client(fresh_cluster)
    keep = f"{ns}:keep"
    client.set(keep, "kept")
    payload = "x\r\nflush_all\r\nEND\r\n"
    client.set(f"{ns}:v", payload)
    client.set(f"{ns}:b", payload.encode())
    assert client.get(f"{ns}:v") == payload
    assert client.get(f"{ns}:b") == payload.encode()
    assert client.get(keep) == "kept"
    assert all(int(s[b"cmd_flush"]) == 0 for s in client.stats().values())


# -- values over the item size limit ------------------------------------------------
@pytest.mark.parametrize("prefix", ["", "app:"])
def test_value_too_large_writes_nothing(cluster, make_client, wire, everywhere, ns,
                                        prefix) -> None:
    client = make_client(cluster, key_prefix=prefix, encoding="utf-8")
    key = f"{ns}:big"
    stored_key = (prefix + key).encode()
    big = b"x" * MAX_ITEM
    client.get(key)  # open a connection before the snapshot
    w = wire(cluster.nodes)
    before = w.snapshot()
    for call in (lambda: client.set(key, big), lambda: client.add(key, big),
                 lambda: client.replace(key, big), lambda: client.cas(key, big, 1),
                 lambda: client.set(key, "é" * (MAX_ITEM // 2)),
                 lambda: client.set(key, list(range(MAX_ITEM // 4))),
                 lambda: client.append(key, big), lambda: client.prepend(key, big)):
        with pytest.raises(ValueTooLarge) as info:
            call()
        assert isinstance(info.value, ValueError)
        assert info.value.limit == MAX_ITEM
    w.assert_quiet_since(before)
    assert everywhere(cluster.nodes, stored_key) == {}


def test_value_too_large_keeps_the_old_value(client, ns) -> None:
    key = f"{ns}:k"
    client.set(key, "old")
    with pytest.raises(ValueTooLarge):
        client.set(key, b"x" * MAX_ITEM)
    assert client.get(key) == "old"


def test_set_many_with_one_value_too_large_writes_none_of_the_batch(
        cluster, client, wire, everywhere, ns) -> None:
    batch: dict[str, Any] = {f"{ns}:{i}": f"small {i}" for i in range(40)}
    batch[f"{ns}:huge"] = b"y" * (MAX_ITEM + 1)
    batch[f"{ns}:after"] = "small after"  # after the bad one in iteration order
    client.get(f"{ns}:warm")
    w = wire(cluster.nodes)
    before = w.snapshot()
    with pytest.raises(ValueTooLarge) as info:
        client.set_many(batch)
    assert info.value.key == f"{ns}:huge".encode()
    w.assert_quiet_since(before)
    for key in batch:
        assert everywhere(cluster.nodes, key.encode()) == {}, key
    assert client.get_many(list(batch)) == {}


# -- where exactly the limit lies -----------------------------------------------------
def _largest(fits: Callable[[int], bool], lo: int, hi: int) -> int:
    """The largest n in [lo, hi] with fits(n), for a monotone fits with fits(lo)."""
    assert fits(lo)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _server_accepts(raw_client, key: bytes, flags: int) -> Callable[[int], bool]:
    def fits(n: int) -> bool:
        try:
            return bool(raw_client.set(key, (b"s" * n, flags), noreply=False))
        except MemcacheServerError:  # "object too large for cache"
            return False
    return fits


def _memring_accepts(client: Client, key: str) -> Callable[[int], bool]:
    def fits(n: int) -> bool:
        try:
            client.set(key, b"m" * n)
        except ValueTooLarge:
            return False
        return True
    return fits


MARGIN = 64  # bytes memring may leave unused below the real limit


@pytest.mark.parametrize("key_length", [20, 120, 250])
def test_item_size_check_matches_the_real_server(client, raw, ns, key_length) -> None:
    """memring is never looser than memcached -I 1m, and stricter by under MARGIN bytes."""
    key = (ns + "k" * 250)[:key_length]
    kb = key.encode()
    home = client.route(key)
    low = MAX_ITEM // 2
    # FLAG_BYTES values have flags 0; every other kind (and failover copies) carries flags,
    # which cost the server 4 more bytes. memring must fit the stricter case.
    server_max = min(_largest(_server_accepts(raw(home), kb, flags), low, 2 * MAX_ITEM)
                     for flags in (0, 1 << 4))
    memring_max = _largest(_memring_accepts(client, key), low, 2 * MAX_ITEM)
    assert memring_max == MAX_ITEM - ITEM_OVERHEAD - key_length
    # The largest value memring accepts is really stored, and reads back whole.
    value = bytes(range(256)) * (memring_max // 256) + b"z" * (memring_max % 256)
    assert client.set(key, value) is True
    assert client.get(key) == value
    text = "t" * memring_max
    assert client.set(key, text) is True
    assert client.get(key) == text
    assert memring_max <= server_max
    assert server_max - memring_max <= MARGIN, (server_max, memring_max)
    print(f"key {key_length} B: memcached accepts {server_max} B, memring {memring_max} B")
