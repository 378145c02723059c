"""Every public method of the client against real memcached processes."""

from __future__ import annotations

import time
from typing import Any

import pytest
from pymemcache.client.base import Client as PymemcacheClient
from pymemcache.serde import FLAG_BYTES, FLAG_INTEGER, FLAG_TEXT, pickle_serde

from memring import Client, SerializationError
from memring.client.transport import raw_serde
from memring.engine.serde import FLAG_JSON, safe_serde
from memring.engine.versions import FLAG_VERSIONED, TRAILER_SIZE, USER_FLAGS
from tests import faces
from tests.stored import plain

pytestmark = [pytest.mark.integration,
              pytest.mark.parametrize("face", faces.FACES, indirect=True)]


class Session:
    """A custom class: only pickle can store it."""

    def __init__(self, user: int) -> None:
        self.user = user

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Session) and other.user == self.user


def spread(client: Client, ns: str, n: int = 40) -> list[str]:
    """At least n keys, and at least one on every node of the ring (ports vary by run)."""
    keys = [f"{ns}:{i}" for i in range(n)]
    missing = set(client.ring.nodes) - {client.ring.node_for(k) for k in keys}
    i = n
    while missing:
        key = f"{ns}:{i}"
        if client.ring.node_for(key) in missing:
            missing.discard(client.ring.node_for(key))
            keys.append(key)
        i += 1
    return keys


# -- get / set ------------------------------------------------------------
def test_get_of_a_missing_key_returns_the_default(client, ns) -> None:
    assert client.get(f"{ns}:nothing") is None
    assert client.get(f"{ns}:nothing", "fallback") == "fallback"
    assert client.get(f"{ns}:nothing", default=0) == 0


@pytest.mark.parametrize(("value", "flags"), [
    (b"\x00\x01binary\r\nEND\r\n\xff", FLAG_BYTES),
    (b"", FLAG_BYTES),
    ("sessión ✓ — text", FLAG_TEXT),
    ("", FLAG_TEXT),
    (42, FLAG_INTEGER),
    (-7, FLAG_INTEGER),
    (0, FLAG_INTEGER),
    (2**70, FLAG_INTEGER),
    ({"user": 7, "roles": ["a", "b"], "cart": {"sku": 3}, "ok": True, "x": None}, FLAG_JSON),
    ([1, "two", 3.5, [4], {}], FLAG_JSON),
    ({}, FLAG_JSON),
    (True, FLAG_JSON),
    (1.25, FLAG_JSON),
], ids=lambda v: type(v).__name__)
def test_set_get_round_trip(cluster, make_client, raw, ns, value: Any, flags: int) -> None:
    client = make_client(cluster, encoding="utf-8")
    key = f"{ns}:v"
    assert client.set(key, value) is True
    got = client.get(key)
    assert got == value
    assert type(got) is type(value)
    _, stored_flags = raw(client.route(key)).get(key.encode())
    assert stored_flags == flags | FLAG_VERSIONED


def test_bytes_and_str_keys_are_the_same_key(client, ns) -> None:
    client.set(f"{ns}:k", "v")
    assert client.get(f"{ns}:k".encode()) == "v"


def test_set_overwrites(client, ns) -> None:
    key = f"{ns}:k"
    client.set(key, "one")
    client.set(key, {"two": 2})
    assert client.get(key) == {"two": 2}


# -- add / replace / append / prepend ---------------------------------------
def test_add_only_stores_a_missing_key(client, ns) -> None:
    key = f"{ns}:k"
    assert client.add(key, "first") is True
    assert client.add(key, "second") is False
    assert client.get(key) == "first"


def test_replace_only_stores_an_existing_key(client, ns) -> None:
    key = f"{ns}:k"
    assert client.replace(key, "x") is False
    assert client.get(key) is None
    client.set(key, "old")
    assert client.replace(key, "new") is True
    assert client.get(key) == "new"


def test_append_and_prepend(cluster, make_client, client, ns) -> None:
    key = f"{ns}:k"
    assert client.append(key, b"tail") is False
    assert client.prepend(key, b"head") is False
    assert client.get(key) is None
    client.set(key, b"middle")
    assert client.append(key, b"-tail") is True
    assert client.prepend(key, b"head-") is True
    assert client.get(key) == b"head-middle-tail"
    text = f"{ns}:text"
    client.set(text, "e")
    assert client.append(text, "u") is True
    assert client.get(text) == "eu"
    with pytest.raises(SerializationError):  # pymemcache's default encoding: ASCII
        client.append(text, "ü")
    utf8 = make_client(cluster, encoding="utf-8")
    utf8.set(text, "é")
    assert utf8.append(text, "ü") is True
    assert utf8.get(text) == "éü"
    assert client.get(text) == "éü"  # text is read back as UTF-8 whatever wrote it


# -- delete -------------------------------------------------------------------
def test_delete(client, ns) -> None:
    key = f"{ns}:k"
    client.set(key, "v")
    assert client.delete(key) is True
    assert client.get(key) is None
    assert client.delete(key) is False


# -- multi-key ------------------------------------------------------------------
def test_set_many_get_many_delete_many(client, ns) -> None:
    keys = spread(client, ns)
    values = {k: {"i": i} if i % 2 else f"v{i}" for i, k in enumerate(keys)}
    assert client.set_many(values) == []
    missing = [f"{ns}:missing:{i}" for i in range(5)]
    assert client.get_many(keys + missing) == values
    assert client.get_multi(keys) == values
    assert client.get_many([]) == {}
    assert client.delete_many(keys[:10]) is True
    assert client.get_many(keys) == {k: values[k] for k in keys[10:]}
    assert client.delete_many(keys) is True  # some already gone: still True
    assert client.get_many(keys) == {}


def test_set_multi_is_set_many_and_keeps_key_types(client, ns) -> None:
    keys = spread(client, ns)
    mixed: dict[Any, Any] = {k.encode() if i % 2 else k: i for i, k in enumerate(keys)}
    assert client.set_multi(mixed) == []
    got = client.get_many(list(mixed))
    assert got == mixed  # bytes keys come back as bytes, str keys as str
    assert {type(k) for k in got} == {str, bytes}


def test_set_many_with_expire(client, ns) -> None:
    keys = spread(client, ns, 20)
    assert client.set_many(dict.fromkeys(keys, "v"), expire=100) == []
    assert client.get_many(keys) == dict.fromkeys(keys, "v")


def test_gets_many(client, ns) -> None:
    keys = spread(client, ns, 20)
    client.set_many({k: k.upper() for k in keys})
    got = client.gets_many(keys + [f"{ns}:missing"])
    assert set(got) == set(keys)
    for k in keys:
        value, token = got[k]
        assert value == k.upper()
        assert client.cas(k, "changed", token) is True
    assert client.get_many(keys) == dict.fromkeys(keys, "changed")


# -- counters -------------------------------------------------------------------
def test_incr_and_decr(client, ns) -> None:
    key = f"{ns}:n"
    assert client.incr(key, 1) is None
    assert client.decr(key, 1) is None
    client.set(key, 10)
    assert client.incr(key, 5) == 15
    assert client.get(key) == 15
    assert client.decr(key, 3) == 12
    assert client.decr(key, 100) == 0  # floors at 0
    assert client.get(key) == 0
    assert client.incr(key, 2**64 - 1) == 2**64 - 1
    assert client.incr(key, 1) == 0  # wraps at 64 bits, as memcached does


def test_incr_of_a_string_counter(client, ns) -> None:
    key = f"{ns}:n"
    client.set(key, "41")
    assert client.incr(key, 1) == 42
    assert client.get(key) == "42"


def test_incr_rejects_bad_amounts(client, ns) -> None:
    for bad in (-1, 2**64, 1.5, True, "1"):
        with pytest.raises(ValueError):
            client.incr(f"{ns}:n", bad)


# -- gets / cas -------------------------------------------------------------------
def test_gets_and_cas(client, ns) -> None:
    key = f"{ns}:k"
    assert client.gets(key) == (None, None)
    assert client.gets(key, "d", "c") == ("d", "c")
    assert client.cas(key, "v", b"1") is None  # missing key
    assert client.get(key) is None
    client.set(key, {"n": 1})
    value, token = client.gets(key)
    assert value == {"n": 1}
    assert token is not None
    assert client.cas(key, {"n": 2}, token) is True
    assert client.get(key) == {"n": 2}
    assert client.cas(key, {"n": 3}, token) is False  # the token is spent
    assert client.get(key) == {"n": 2}
    value, token = client.gets(key)
    client.set(key, "someone else")
    assert client.cas(key, "mine", token) is False  # changed since gets
    assert client.get(key) == "someone else"
    _, token = client.gets(key)
    assert client.cas(key, "mine", int(token)) is True  # an int token works too
    assert client.get(key) == "mine"


# -- expiry -------------------------------------------------------------------------
def test_expiry_and_touch(client, ns) -> None:
    short, touched, extended, forever = (f"{ns}:{n}" for n in ("s", "t", "e", "f"))
    assert client.set(short, "s", expire=1)
    client.set(touched, "t")
    assert client.touch(touched, 1) is True
    client.set(extended, "e", expire=1)
    assert client.touch(extended, 100) is True
    client.set(forever, "f", expire=100)
    assert client.touch(f"{ns}:missing", 10) is False
    assert client.get_many([short, touched, extended, forever]) == {
        short: "s", touched: "t", extended: "e", forever: "f"}
    time.sleep(2.1)
    assert client.get(short) is None
    assert client.get(touched) is None
    assert client.get(extended) == "e"
    assert client.get(forever) == "f"


def test_negative_expire_stores_nothing_visible(client, ns) -> None:
    client.set(f"{ns}:k", "old")
    client.set(f"{ns}:k", "v", expire=-1)
    assert client.get(f"{ns}:k") is None


# -- whole-cluster commands --------------------------------------------------------
def test_stats(client, cluster) -> None:
    stats = client.stats()
    assert set(stats) == {p.node.label for p in cluster.processes}
    for p in cluster.processes:
        assert int(stats[p.node.label][b"pid"]) == p.pid
    some = client.stats("settings")
    assert set(some) == set(stats)
    assert all(b"item_size_max" in s for s in some.values())


def test_version(client, cluster) -> None:
    versions = client.version()
    assert set(versions) == {n.label for n in cluster.nodes}
    assert all(isinstance(v, str) and v[:1].isdigit() for v in versions.values())


def test_flush_all(fresh_cluster, make_client, ns) -> None:
    client = make_client(fresh_cluster)
    keys = spread(client, ns)
    client.set_many(dict.fromkeys(keys, "v"))
    assert client.flush_all() is True
    assert client.get_many(keys) == {}
    assert all(int(s[b"cmd_flush"]) == 1 for s in client.stats().values())


# -- lifecycle ---------------------------------------------------------------------
def _open_connections(raw, cluster) -> set[tuple[str, bytes]]:
    """``(node, client address)`` of every connection open on the cluster's nodes.

    Read from ``stats conns``: the raw clients' own connections are among
    them, and so may be one that its client closed a moment ago but whose
    close the server has not processed yet (such as the readiness check of a
    node just started). Tests look at the connections that appear and go,
    never at a total that such a connection can tip.
    """
    found: set[tuple[str, bytes]] = set()
    for node in cluster.nodes:
        stats = raw(node).stats("conns")
        accepted = {key.split(b":")[0] for key in stats if key.endswith(b":listen_addr")}
        found |= {(node.label, stats[fd + b":addr"]) for fd in accepted}
    return found


def _wait_closed(raw, cluster, connections: set[tuple[str, bytes]]) -> set[tuple[str, bytes]]:
    """Wait (up to 5 s) until none of ``connections`` is open; return those still open."""
    deadline = time.monotonic() + 5
    while (still := connections & _open_connections(raw, cluster)) and time.monotonic() < deadline:
        time.sleep(0.02)
    return still


def test_close_releases_every_connection(fresh_cluster, raw, ns, face) -> None:
    before = _open_connections(raw, fresh_cluster)  # the raw clients' own
    client = faces.make(face, fresh_cluster.servers)
    keys = spread(client, ns)
    client.set_many(dict.fromkeys(keys, "v"))
    assert client.get_many(keys) == dict.fromkeys(keys, "v")
    own = _open_connections(raw, fresh_cluster) - before
    assert {label for label, _ in own} == {n.label for n in fresh_cluster.nodes}
    client.close()
    client.close()  # idempotent
    assert _wait_closed(raw, fresh_cluster, own) == set()


def test_context_manager_closes(fresh_cluster, raw, ns, face) -> None:
    before = _open_connections(raw, fresh_cluster)
    with faces.make(face, fresh_cluster.servers) as client:
        keys = spread(client, ns)
        client.set_many(dict.fromkeys(keys, 1))
        assert client.get_many(keys) == dict.fromkeys(keys, 1)
        own = _open_connections(raw, fresh_cluster) - before
    assert {label for label, _ in own} == {n.label for n in fresh_cluster.nodes}
    assert _wait_closed(raw, fresh_cluster, own) == set()


# -- key prefix ---------------------------------------------------------------------
def test_key_prefix_is_stored_and_routed(cluster, make_client, raw, everywhere, ns) -> None:
    client = make_client(cluster, key_prefix="app1:")
    key = f"{ns}:session"
    client.set(key, "data")
    stored = f"app1:{ns}:session".encode()
    home = client.ring.node_for(stored)
    assert client.route(key) == home
    assert plain(raw(home).get(stored)) == (b"data", FLAG_TEXT)
    assert list(everywhere(cluster.nodes, stored)) == [home.label]
    assert everywhere(cluster.nodes, key.encode()) == {}  # never unprefixed
    assert client.get(key) == "data"
    # The multi-key calls speak unprefixed keys, too.
    keys = spread(client, ns)
    assert client.set_many(dict.fromkeys(keys, "m")) == []
    assert client.get_many(keys) == dict.fromkeys(keys, "m")
    assert all(raw(client.ring.node_for(f"app1:{k}")).get(f"app1:{k}".encode()) is not None
               for k in keys)
    # Another prefix is another key space.
    other = make_client(cluster, key_prefix=b"app2:")
    assert other.get(key) is None


# -- serialization ---------------------------------------------------------------------
def test_pickle_is_refused_by_default(cluster, client, everywhere, ns) -> None:
    key = f"{ns}:obj"
    with pytest.raises(SerializationError) as info:
        client.set(key, Session(7))
    assert isinstance(info.value, TypeError)
    assert "pickle" in str(info.value)
    with pytest.raises(SerializationError):
        client.set_many({f"{ns}:ok": "fine", key: Session(8)})
    for k in (key, f"{ns}:ok"):
        assert everywhere(cluster.nodes, k.encode()) == {}


def test_pickle_works_when_asked_for(cluster, make_client, ns) -> None:
    client = make_client(cluster, serde=pickle_serde)
    key = f"{ns}:obj"
    client.set(key, Session(7))
    assert client.get(key) == Session(7)
    assert client.get_many([key]) == {key: Session(7)}
    # A client with the safe serde reading a pickled value refuses to unpickle it.
    safe = make_client(cluster)
    with pytest.raises(SerializationError):
        safe.get(key)


def test_values_interoperate_with_plain_pymemcache(cluster, make_client, ns) -> None:
    """pymemcache's values read as they are; memring's carry their version after the bytes."""
    client = make_client(cluster, encoding="utf-8")
    cases = [("s", "héllo", "héllo".encode()), ("i", 42, b"42"), ("b", b"raw", b"raw")]
    for name, value, stored in cases:
        key = f"{ns}:{name}"
        client.set(key, value)
        home = client.route(key)
        # A plain client sees the value's bytes, a 12-byte trailer (version, expiry)
        # and flag bit 27; the serde's own flags are unchanged below bit 24.
        plain = PymemcacheClient(home.address, serde=raw_serde, timeout=1.0)
        try:
            data, flags = plain.get(key)
        finally:
            plain.close()
        assert data[:-TRAILER_SIZE] == stored and len(data) == len(stored) + TRAILER_SIZE
        assert flags & FLAG_VERSIONED and flags & USER_FLAGS == safe_serde.serialize(
            key.encode(), value)[1]
        # The other way round: pymemcache writes, memring reads.
        back = f"{ns}:{name}:back"
        plain = PymemcacheClient(client.route(back).address, serde=pickle_serde, timeout=1.0,
                                 default_noreply=False)
        try:
            assert plain.set(back, value) is True
        finally:
            plain.close()
        got = client.get(back)
        assert got == value
        assert type(got) is type(value)