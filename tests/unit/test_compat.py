"""pymemcache's constructor arguments and methods, on memring's clients.

The first tests read pymemcache's own signatures, so a new pymemcache
argument fails here instead of at a user's start-up.
"""

from __future__ import annotations

import inspect
import math
import pickle
import threading
import types
from collections.abc import Iterator
from typing import Any

import pytest
from pymemcache.client.base import Client as PmClient
from pymemcache.client.base import KeepaliveOpts, PooledClient
from pymemcache.client.hash import HashClient
from pymemcache.exceptions import MemcacheClientError
from pymemcache.serde import FLAG_TEXT, LegacyWrappingSerde, pickle_serde

import memring
from memring import (
    BackupClient,
    Client,
    ConfigError,
    Failover,
    HealthPolicy,
    InvalidArgument,
    InvalidKey,
    SerializationError,
    Timeouts,
)
from memring.client.transport import SocketTransport
from memring.engine import compat, defaults
from memring.engine.serde import SafeSerde
from tests.fakes import FakeClock, FakeCluster

PYMEMCACHE_CLASSES = (PmClient, PooledClient, HashClient)
SERVER_PARAMETERS = {"self", "server", "servers"}


def pymemcache_parameters() -> dict[str, inspect.Parameter]:
    """Every keyword parameter of pymemcache's three client constructors (the first
    class's default wins for a name they share)."""
    out: dict[str, inspect.Parameter] = {}
    for cls in PYMEMCACHE_CLASSES:
        for name, param in inspect.signature(cls.__init__).parameters.items():
            if name not in SERVER_PARAMETERS:
                out.setdefault(name, param)
    return out


@pytest.fixture
def fake() -> Iterator[FakeCluster]:
    yield FakeCluster(3, FakeClock())


def on(cluster: FakeCluster, cls: type[Client] = Client, **options: Any) -> Client:
    return cls(cluster.nodes, _transport_factory=cluster.transport_factory,
               _clock=cluster.clock, _hlc=cluster.hlc, _background=False, **options)


# -- every argument is listed, both ways --------------------------------------
def test_every_pymemcache_argument_is_listed() -> None:
    params = pymemcache_parameters()
    assert sorted(set(params) - set(compat.ARGUMENTS)) == [], (
        "a pymemcache argument memring does not know: add it to compat.ARGUMENTS")
    assert sorted(set(compat.ARGUMENTS) - set(params)) == [], (
        "compat.ARGUMENTS lists an argument pymemcache no longer has")


def test_memring_arguments_named_like_pymemcaches_are_memrings_own() -> None:
    own = set(inspect.signature(Client.__init__).parameters)
    same = {n for n, a in compat.ARGUMENTS.items() if a.treatment == "same"}
    assert same <= own
    assert not ({n for n in compat.ARGUMENTS if n not in same} & own)


@pytest.mark.parametrize("name", sorted(pymemcache_parameters()))
def test_each_argument_at_pymemcaches_default_is_accepted_or_refused_with_a_reason(
        fake: FakeCluster, name: str) -> None:
    default = pymemcache_parameters()[name].default
    if compat.ARGUMENTS[name].treatment == "refused":
        with pytest.raises(ConfigError) as info:
            on(fake, **{name: default})
        assert compat.ARGUMENTS[name].meaning in str(info.value)
        assert isinstance(info.value, ValueError)
    else:
        with on(fake, **{name: default}) as client:
            assert client.set("k", b"v") is True
            assert client.get("k") == b"v"


def test_hasher_is_refused_and_says_what_to_use() -> None:
    with pytest.raises(ConfigError, match="hash='ketama'") as info:
        Client(["10.0.0.1:11211"], hasher=object)
    assert "Invariant S" in str(info.value)


def test_an_unknown_argument_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match="unknown Client options: bogus"):
        Client(["10.0.0.1:11211"], bogus=1)


# -- retry_attempts, retry_timeout, dead_timeout -> HealthPolicy ------------------
def test_hashclients_tuning_maps_onto_a_health_policy() -> None:
    client = Client(["10.0.0.1:11211"], retry_attempts=2, retry_timeout=1, dead_timeout=60,
                    _background=False)
    policy = client.settings.health
    assert policy == HealthPolicy(failure_threshold=3, backoff_initial=1.0, backoff_max=60.0)
    # Every client must see a returned node inside its warming window: the copies
    # live as long as the longest probe delay.
    assert client.failover.failover_ttl == math.ceil(60 * (1 + policy.jitter))
    assert client.failover.warming_seconds > policy.slowest_probe


@pytest.mark.parametrize(("options", "threshold", "first", "longest"), [
    ({"retry_attempts": 0}, 1, defaults.BACKOFF_INITIAL, defaults.BACKOFF_MAX),
    ({"retry_timeout": 2}, 1, 2.0, 2.0),
    ({"dead_timeout": 0}, 1, compat.MIN_PROBE_DELAY, compat.MIN_PROBE_DELAY),
    ({"retry_timeout": 5, "dead_timeout": 1}, 1, 1.0, 1.0),
])
def test_each_retry_argument_alone(options: dict[str, Any], threshold: int, first: float,
                                   longest: float) -> None:
    policy = Client(["10.0.0.1:11211"], _background=False, **options).settings.health
    assert (policy.failure_threshold, policy.backoff_initial, policy.backoff_max) == (
        threshold, first, longest)


def test_a_short_dead_timeout_keeps_the_default_failover() -> None:
    client = Client(["10.0.0.1:11211"], dead_timeout=5, _background=False)
    assert client.failover == Failover("next")


@pytest.mark.parametrize("options", [
    {"retry_attempts": -1}, {"retry_attempts": 1.5}, {"retry_attempts": True},
    {"retry_timeout": -1}, {"dead_timeout": "60"}, {"dead_timeout": math.inf},
    {"retry_attempts": 2, "health": HealthPolicy()},
    {"dead_timeout": 60, "failover": Failover("next")},  # copies too short for the probes
    {"timeout": 1, "timeouts": Timeouts()},
    {"ignore_exc": True, "failover": Failover("next")},
    {"ignore_exc": 1}, {"no_delay": "yes"}, {"use_pooling": None}, {"default_noreply": 0},
    {"allow_unicode_keys": "y"}, {"encoding": "no-such-codec"}, {"encoding": 8},
    {"serializer": "pickle"}, {"serde": pickle_serde, "serializer": lambda k, v: (v, 0)},
    {"socket_module": "socket"}, {"socket_module": types.ModuleType("empty")},
    {"socket_keepalive": {"idle": 1}}, {"pool_idle_timeout": -1},
    {"pool_idle_timeout": "5"}, {"lock_generator": threading.Lock()},
])
def test_bad_values_raise_config_error(options: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        Client(["10.0.0.1:11211"], _background=False, **options)
    assert isinstance(info.value, ValueError)


def test_ignore_exc_is_failover_fail_with_defaults() -> None:
    wanted = Failover("fail", return_default=True)
    assert Client(["10.0.0.1:11211"], ignore_exc=True, _background=False).failover == wanted
    assert Client(["10.0.0.1:11211"], ignore_exc=True, failover=wanted,
                  _background=False).failover == wanted


# -- serde, serializer/deserializer, encoding, unicode keys ---------------------------
def test_serializer_and_deserializer_are_wrapped_as_pymemcache_wraps_them(fake) -> None:
    def serializer(key: bytes, value: Any) -> tuple[Any, int]:
        return (value, 0) if isinstance(value, bytes) else (repr(value), 7)

    def deserializer(key: bytes, value: bytes, flags: int) -> Any:
        return ("decoded", value, flags)

    with on(fake, serializer=serializer, deserializer=deserializer) as client:
        assert isinstance(client.settings.serde, LegacyWrappingSerde)
        client.set("k", [1, 2])
        assert client.get("k") == ("decoded", b"[1, 2]", 7)
    with on(fake, serializer=serializer) as client:  # pymemcache's default deserializer
        client.set("k", 5)
        assert client.get("k") == b"5"


def test_pymemcaches_defaults_refuse_non_ascii_keys_and_text(fake) -> None:
    with on(fake) as client:
        assert client.settings.serde.encoding == "ascii"
        with pytest.raises(InvalidKey, match="allow_unicode_keys=True") as key_error:
            client.set("sessión", b"v")
        with pytest.raises(InvalidKey):
            client.get_many(["a", "sessión"])
        with pytest.raises(SerializationError, match="encoding='utf-8'") as value_error:
            client.set("k", "olé")
        for error in (key_error.value, value_error.value):
            assert isinstance(error, MemcacheClientError)  # what pymemcache raises
        assert sum(sum(s.calls.values()) for s in fake.servers.values()) == 0  # nothing sent
        assert client.set("k", "ascii text") is True
        assert client.get("k") == "ascii text"


def test_allow_unicode_keys_and_utf8_encoding_store_any_text(fake) -> None:
    with on(fake, allow_unicode_keys=True, encoding="utf8") as utf8, on(fake) as ascii_client:
        assert utf8.settings.encoding == "utf-8"
        assert utf8.set("sessión", "olé ✓") is True
        assert utf8.get("sessión") == "olé ✓"
        assert utf8.check_key("sessión") == "sessión".encode()
        utf8.set("k", "olé")
        assert ascii_client.get("k") == "olé"  # text is read back as UTF-8


def test_a_latin1_encoding_round_trips_in_latin1(fake) -> None:
    with on(fake, encoding="latin-1") as client:
        client.set("k", "olé")
        (data, flags), = [s.peek(b"k") for s in fake.servers.values() if s.peek(b"k")]
        assert data.startswith("olé".encode("latin-1")) and flags & FLAG_TEXT
        assert client.get("k") == "olé"


def test_an_unpicklable_value_raises_picklings_error_before_any_io(fake) -> None:
    class Unpicklable:
        def __getstate__(self) -> Any:
            raise pickle.PickleError("no")

    with on(fake, serde=pickle_serde) as client:
        with pytest.raises(pickle.PickleError) as info:
            client.set("k", Unpicklable())
        assert isinstance(info.value, memring.UnpicklableValue)
        assert isinstance(info.value, SerializationError)
        assert all(s.peek(b"k") is None for s in fake.servers.values())


def test_safe_serde_keeps_utf8_unless_told() -> None:
    assert SafeSerde().serialize(b"k", "é") == ("é".encode(), FLAG_TEXT)
    with pytest.raises(SerializationError):
        SafeSerde("ascii").serialize(b"k", "é")
    with pytest.raises(ConfigError):
        SafeSerde("no-such-codec")


# -- the socket options reach the transport -------------------------------------
def test_socket_options_reach_every_nodes_transport() -> None:
    import socket

    made: list[object] = []

    def lock_generator() -> Any:
        lock = threading.Lock()
        made.append(lock)
        return lock

    keepalive = KeepaliveOpts(idle=5, intvl=2, cnt=3)
    client = Client(["127.0.0.1:1", "127.0.0.1:2"], socket_module=socket,
                    socket_keepalive=keepalive, pool_idle_timeout=7, lock_generator=lock_generator,
                    _background=False)
    transports = list(client._transports.values())
    assert len(made) == 2  # one lock per node's pool
    for t in transports:
        assert isinstance(t, SocketTransport)
        assert t._pool._lock in made
        assert t._idle_timeout == 7.0
        conn = t._connection()
        assert conn.socket_keepalive is keepalive
        assert t._kernel_timeouts  # the stdlib's sockets: kernel timeouts
    client.close()


def test_a_cooperative_socket_module_gets_python_timeouts() -> None:
    import socket

    green = types.ModuleType("green_socket")
    green.__dict__.update({n: getattr(socket, n) for n in dir(socket) if not n.startswith("__")})
    client = Client(["127.0.0.1:1"], socket_module=green, timeout=0.25, _background=False)
    (t,) = client._transports.values()
    assert not t._kernel_timeouts
    conn = t._connection()
    assert conn.socket_module is green and conn.timeout == 0.25
    client.close()


# -- servers --------------------------------------------------------------------
@pytest.mark.parametrize("servers", [("127.0.0.1", 11211), "127.0.0.1:11211",
                                     ["127.0.0.1:11211"], memring.Node("127.0.0.1")])
def test_one_server_as_pymemcaches_client_takes_it(servers: Any) -> None:
    client = Client(servers, _background=False)
    assert [n.label for n in client.ring.nodes] == ["127.0.0.1:11211"]


@pytest.mark.parametrize(("spec", "path"), [
    ("unix:/run/memcached/memcached.sock", "/run/memcached/memcached.sock"),
    ("/run/memcached/memcached.sock", "/run/memcached/memcached.sock"),
])
def test_unix_socket_nodes(spec: str, path: str) -> None:
    node = memring.hashring.parse_node(spec)
    assert (node.host, node.port, node.address) == (path, 0, path)
    assert node.label == f"unix:{path}" and node.is_unix
    assert memring.hashring.parse_node(node.label) == node
    ring = memring.HashRing([spec, "10.0.0.1:11211"])
    assert {ring.node_for(f"k{i}") for i in range(200)} == set(ring.nodes)
    assert memring.HashRing([spec], hash="ketama").node_for("k") == node


@pytest.mark.parametrize("spec", ["unix:relative.sock", "unix:", "/bad path.sock"])
def test_bad_unix_socket_specs(spec: str) -> None:
    with pytest.raises(ConfigError):
        memring.hashring.parse_node(spec)
    with pytest.raises(ConfigError, match="no port"):
        memring.Node("/a.sock", 11212)


# -- the methods pymemcache has -----------------------------------------------------
@pytest.mark.parametrize("cls", [Client, BackupClient])
def test_multi_get_spellings(fake, cls: type[Client]) -> None:
    with on(fake, cls) as client:
        client.set_many({"a": b"1", "b": b"2"})
        got = client.get_many(["a", "b", "c"], gets=True)
        assert {k: v for k, (v, _) in got.items()} == {"a": b"1", "b": b"2"}
        assert client.gets_multi(["a"]).keys() == {"a"}
        assert client.get_multi(["a", "c"]) == {"a": b"1"}
        with pytest.raises(InvalidArgument):
            client.get_many(["a"], gets="yes")


def test_check_key_is_the_wire_form_with_the_prefix(fake) -> None:
    with on(fake, key_prefix="app:") as client:
        assert client.check_key("k") == b"app:k"
        assert client.check_key(b"k", b"other:") == b"other:k"
        with pytest.raises(InvalidKey):
            client.check_key("a b")
        with pytest.raises(InvalidKey):
            client.check_key("k" * 250)


def test_quit_leaves_the_client_usable(fake) -> None:
    with on(fake) as client:
        client.set("k", b"v")
        before = {n: dict(s.calls) for n, s in fake.servers.items()}
        assert client.quit() is None
        assert {n: dict(s.calls) for n, s in fake.servers.items()} == before
        assert client.get("k") == b"v"


def test_membership_methods_say_why_they_are_missing(fake) -> None:
    with on(fake) as client:
        for method in (client.add_server, client.remove_server):
            with pytest.raises(NotImplementedError, match="membership"):
                method("10.0.0.9", 11211)


def test_client_class_is_the_face_itself() -> None:
    assert Client.client_class is Client
    assert BackupClient.client_class is BackupClient
    assert Client(["10.0.0.1:11211"], _background=False).client_class is Client


def test_every_pymemcache_method_exists() -> None:
    for cls in PYMEMCACHE_CLASSES:
        missing = [n for n in dir(cls) if not n.startswith("_") and not hasattr(Client, n)]
        assert missing == [], f"{cls.__name__}: {missing}"


@pytest.mark.parametrize("cls", PYMEMCACHE_CLASSES, ids=lambda c: c.__name__)
def test_every_pymemcache_method_takes_pymemcaches_arguments(cls: type) -> None:
    """Each parameter pymemcache names, memring's method takes by the same name and,
    for the single-server clients, in the same position."""
    wrong = []
    for name in dir(cls):
        fn = getattr(cls, name)
        if name.startswith("_") or not callable(fn) or isinstance(fn, type):
            continue
        theirs = [p.name for p in inspect.signature(fn).parameters.values()
                  if p.name != "self" and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        mine = [p for p in inspect.signature(getattr(Client, name)).parameters if p != "self"]
        if not set(theirs) <= set(mine) or (cls is not HashClient
                                            and mine[:len(theirs)] != theirs):
            wrong.append(f"{name}: pymemcache {theirs}, memring {mine}")
    assert wrong == []


def test_retry_attempts_failures_in_a_row_take_a_node_out(fake: FakeCluster) -> None:
    with on(fake, retry_attempts=2) as client:
        dead = fake.nodes[0]
        key = next(k for k in (f"k{i}" for i in range(1000)) if client.ring.node_for(k) == dead)
        fake[dead].kill()
        for _ in range(2):  # below retry_attempts + 1 failures each call raises
            with pytest.raises(memring.NodeUnavailable):
                client.get(key)
            assert client.health()[dead.label].state is memring.NodeState.UP
        assert client.get(key) is None  # the third failure takes it out; this call fails over
        assert client.health()[dead.label].state is memring.NodeState.DOWN
        assert client.set(key, b"v") is True  # now its keys fail over
        assert client.get(key) == b"v"
