"""Every misbehaving server costs one bounded call: in time, in memory, in correctness.

For each behaviour of the survey (:data:`tests.netfaults.survey.CASES`:
garbage, drips, huge headers, undecodable values, wrong CAS tokens,
overlong numbers, huge lines, stray replies, versions from the far
future, a full listen queue, ...), one hostile fake node joins the real
memcached nodes of the shared ``cluster``; and for each network fault a
:class:`~tests.netfaults.FaultProxy` can make (pause, blackhole, refuse,
drip, delay, cut), one real node is reached through a proxy. A :class:`~memring.Client` and a
:class:`~memring.BackupClient` (timeouts 0.2 s + 0.3 s) make ``get``,
``set``, ``get_many`` and ``gets`` calls that involve it, each twice on a fresh
client (the second call finds the node as the first left it), and every call must:

* return, or raise a :class:`~memring.MemringError`, within connect + read
  timeout plus scheduling slack (:data:`BOUND`);
* grow the traced heap by less than a few item sizes at its peak
  (:data:`MEMORY_BOUND`), and keep less than one item size once it is over;
* return only the key's own value (old or new) or a miss, never another
  key's, for the hostile node's keys and the others alike;
* serve the healthy nodes' keys in the same ``get_many``.

Then the healthy nodes' keys must still be read and written right.
Run with ``-s`` for the slowest call and the largest peak.
"""

from __future__ import annotations

import contextlib
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

import tests.netfaults.server as hostile_server
from memring import (
    BackupClient,
    Client,
    HealthPolicy,
    MemringError,
    MultiKeyError,
    SerializationError,
    Timeouts,
)
from memring.hashring.node import parse_node
from memring.tools.local import LocalCluster
from tests import faces
from tests.netfaults import FaultProxy, HostileServer, behaviours, proxied_node
from tests.netfaults.behaviours import Behaviour
from tests.netfaults.survey import CASES, SERVER_CASES

pytestmark = pytest.mark.integration


def _async(backup: bool) -> Callable[..., Any]:
    """An asyncio client of the servers, called as the sync one is (tests/faces.py)."""
    def make(servers: list[Any], **options: Any) -> Any:
        return faces.make("async", servers, backup=backup, **options)
    make.__name__ = "AsyncBackupClient" if backup else "AsyncClient"
    return make


#: The clients every hostile case runs against: both faces.
KINDS: list[Any] = [Client, BackupClient, _async(False), _async(True)]
KIND_IDS = [k.__name__ for k in KINDS]

#: read 0.3 s: a healthy node must answer within it even on a busy 2-core machine
TIMEOUTS = Timeouts(connect=0.2, read=0.3)
#: A call's deadline is connect + read; the rest is slack for a loaded machine.
BOUND = TIMEOUTS.connect + TIMEOUTS.read + 1.0
ITEM = 1024 * 1024  # the default item size limit
MEMORY_BOUND = 3 * ITEM
HEALTH = HealthPolicy(backoff_initial=0.1, backoff_max=0.5)
#: Keys per node kind in each call.
KEYS = 3


NAMES = [*CASES, *SERVER_CASES]

@dataclass
class Measured:
    """The slowest call and the largest peak seen, for the summary (-s)."""

    calls: int = 0
    slowest: tuple[float, str] = (0.0, "")
    peak: tuple[int, str] = (0, "")


MEASURED = Measured()


@pytest.fixture(scope="module")
def cluster(memcached_binary: str) -> Iterator[LocalCluster]:
    """Real nodes of this module alone. A hostile node's return can start a
    backup rebuild in the background, which streams the partner's keys while a
    call is traced: on the nodes the whole suite shares, that is every earlier
    test's keys, and the heap it takes would be counted as the call's."""
    c = LocalCluster(4, binary=memcached_binary).start()
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module", autouse=True)
def summary() -> Iterator[None]:
    """The fake server keeps only a little of what it sends (its records would count as
    the client's memory); the slowest call and the largest peak are printed at the end."""
    limit = hostile_server.RECORD_LIMIT
    hostile_server.RECORD_LIMIT = 4096
    try:
        yield
    finally:
        hostile_server.RECORD_LIMIT = limit
        m = MEASURED
        print(f"\n{m.calls} calls; slowest {m.slowest[0]:.3f} s ({m.slowest[1]}); "
              f"largest peak {m.peak[0] / 1e6:.2f} MB ({m.peak[1]})")


def _keys(client: Client, hostile: Any, ns: str) -> tuple[list[str], list[str]]:
    """Keys the hostile node holds (as home or copy), and keys it holds no copy of."""
    on: list[str] = []
    off: list[str] = []
    i = 0
    while len(on) < KEYS or len(off) < KEYS:
        key = f"{ns}:{i}"
        holders = (client.owners(key) if hasattr(client, "owners")
                   else [client.ring.node_for(key)])
        (on if hostile in holders else off).append(key)
        i += 1
    return on[:KEYS], off[:KEYS]


class Watch:
    """Runs calls and checks each one's time, memory and answer."""

    def __init__(self, case: str) -> None:
        self.case = case

    def call(self, what: str, fn: Callable[[], Any]) -> tuple[Any, MemringError | None]:
        # Traced during the call only: what it allocates (and what the fake server's
        # threads do meanwhile, a little), not the test's own bookkeeping.
        tracemalloc.start()
        start = time.monotonic()
        error: MemringError | None = None
        result: Any = None
        try:
            result = fn()
        except MemringError as exc:  # anything else fails the test
            error = exc
        finally:
            seconds = time.monotonic() - start
            current, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
        label = f"{self.case} {what}"
        MEASURED.calls += 1
        MEASURED.slowest = max(MEASURED.slowest, (seconds, label))
        MEASURED.peak = max(MEASURED.peak, (peak, label))
        assert seconds < BOUND, f"{label} took {seconds:.2f} s (bound {BOUND} s): {error!r}"
        assert peak < MEMORY_BOUND, f"{label}: peak +{peak / 1e6:.1f} MB"
        assert current < ITEM, f"{label}: kept +{current / 1e6:.1f} MB"
        return result, error


def _own(allowed: dict[str, set[Any]], key: str, value: Any, label: str) -> None:
    assert value in allowed[key] | {None}, f"{label}: {key} read {value!r}"


#: The survey's misbehaviours on both sync clients and the single-copy async one (the
#: async backup client meets each network fault below, and the stray reply).
@pytest.mark.parametrize("kind", KINDS[:3], ids=KIND_IDS[:3])
@pytest.mark.parametrize("case", NAMES)
def test_a_hostile_node_costs_one_bounded_call(cluster: LocalCluster, ns: str, case: str,
                                               kind: type[Client]) -> None:
    server = HostileServer()

    def fault() -> None:
        if case in SERVER_CASES:
            SERVER_CASES[case](server)
        else:
            server.behave(CASES[case]())

    _exercise(kind, [*cluster.servers, server.server], server.node, ns, case, fault,
              stop=server.close)


#: Faults of the network between the client and a real node, by a proxy in between.
NETWORK_CASES: dict[str, Callable[[FaultProxy], None]] = {
    "proxy pause": FaultProxy.pause,
    "proxy blackhole": FaultProxy.blackhole,
    "proxy refuse": FaultProxy.refuse,
    "proxy drip(0.1)": lambda proxy: proxy.drip(0.1),
    "proxy delay(0.5)": lambda proxy: proxy.delay(0.5),
    "proxy cut": lambda proxy: None if proxy.cut() else None,
}


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
@pytest.mark.parametrize("case", list(NETWORK_CASES))
def test_a_faulty_network_to_a_real_node_costs_one_bounded_call(
        cluster: LocalCluster, ns: str, case: str, kind: type[Client]) -> None:
    real = parse_node(cluster.servers[0])
    proxy = FaultProxy(real.address)
    node = proxied_node(real, proxy)
    _exercise(kind, [node, *cluster.servers[1:]], node, ns, case,
              lambda: NETWORK_CASES[case](proxy), stop=proxy.close)


def _exercise(kind: type[Client], servers: list[Any], odd: Any, ns: str, case: str,
              fault: Callable[[], None], stop: Callable[[], None]) -> None:
    """Keys on node ``odd`` and on the others are written; ``fault()`` makes ``odd``
    misbehave; then every call is watched (see the module docstring). ``stop()``
    ends the fault's server or proxy, before the clients close (a probe waiting on
    it then ends at once)."""
    clients: list[Client] = []

    def make() -> Client:
        c = kind(servers, timeouts=TIMEOUTS, health=HEALTH)
        clients.append(c)
        return c

    try:
        setup = make()
        on, off = _keys(setup, odd, ns)
        allowed = {k: {f"{k}=old"} for k in on + off}
        assert setup.set_many({k: f"{k}=old" for k in on + off}) == []
        fault()
        watch = Watch(f"{kind.__name__} {case}")

        c = make()
        for _ in range(2):
            got, error = watch.call("get", lambda: c.get(on[0]))
            _own(allowed, on[0], got, case)
            if isinstance(error, SerializationError):
                assert error.node == odd, f"{case}: {error!r} names {error.node}"

        c = make()
        for _ in range(2):  # gets: the CAS token's reply format
            got, error = watch.call("gets", lambda: c.gets(on[2]))
            if error is None:
                _own(allowed, on[2], got[0], case)
                assert got[0] is None or isinstance(got[1], bytes) and got[1].isdigit(), got

        c = make()
        new = f"{on[1]}=new"
        allowed[on[1]].add(new)
        for _ in range(2):
            watch.call("set", lambda: c.set(on[1], new))

        c = make()
        for _ in range(2):
            got, error = watch.call("get_many", lambda: c.get_many(on + off))
            if isinstance(error, MultiKeyError):
                got = error.results
                for key, exc in error.failed.items():
                    assert key in on, f"{case}: a healthy key failed: {key}: {exc!r}"
                    if isinstance(exc, SerializationError):
                        assert exc.node == odd, f"{case}: {exc!r} names {exc.node}"
            elif error is not None:
                raise AssertionError(f"{case}: get_many raised {error!r}")
            for key, value in got.items():
                _own(allowed, key, value, case)
            for key in off:
                assert got.get(key) == f"{key}=old", f"{case}: {key} not served"

        # The healthy nodes go on serving, through the same kind of client.
        c = clients[-1]
        for key in off:
            assert c.get(key) == f"{key}=old"
        assert c.set(off[0], "after") is True
        assert c.get(off[0]) == "after"
        assert c.get_many(off) == {off[0]: "after", **{k: f"{k}=old" for k in off[1:]}}
    finally:
        with contextlib.suppress(Exception):  # a behaviour's own error is not the client's
            stop()
        for c in clients:
            c.close()




def test_a_slow_large_request_leaves_its_reply_only_the_time_left() -> None:
    """The deadline counts from the call's start: a request that took most of it to
    send (a slow network, a full window) leaves its reply only what is left."""
    from memring.client.transport import SocketTransport

    read = 0.5
    with HostileServer(behaviours.silent()) as server:
        transport = SocketTransport(server.node, timeouts=Timeouts(connect=0.5, read=read),
                                    max_item_size=ITEM)
        slow_send = transport._send

        def send(sock: Any, request: bytes, deadline: float) -> None:
            time.sleep(0.9 * read)  # most of the call's time goes to writing
            slow_send(sock, request, deadline)

        transport._send = send  # type: ignore[method-assign]
        start = time.monotonic()
        with pytest.raises(MemringError):
            transport.set(b"big", (b"x" * 200_000, 0), 0)
        took = time.monotonic() - start
        transport.close()
    # The deadline (0.5 s) plus slack, well short of sending time + a whole read timeout.
    assert took < 0.9 * read + 0.8 * read, f"{took:.2f} s"


@pytest.fixture
def many_descriptors() -> Iterator[int]:
    """More than 1,024 descriptors open (the soft limit raised if needed): a socket the
    client opens now has a number select() cannot take."""
    import os
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 1500
    if soft < want + 200:
        if hard != resource.RLIM_INFINITY and hard < want + 200:
            pytest.fail(f"the hard limit on open files ({hard}) is below {want + 200}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (want + 200, hard))
    opened = [os.open(os.devnull, os.O_RDONLY) for _ in range(want)]
    try:
        assert max(opened) > 1024
        yield max(opened)
    finally:
        for fd in opened:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_past_1024_descriptors_a_hung_node_costs_one_bounded_call(
        cluster: LocalCluster, ns: str, many_descriptors: int) -> None:
    with HostileServer(behaviours.silent()) as server:
        servers = [*cluster.servers, server.server]
        single = Client(servers, timeouts=TIMEOUTS, health=HEALTH)
        backup = BackupClient(servers, timeouts=TIMEOUTS, health=HEALTH)
        try:
            on, off = _keys(backup, server.node, ns)
            keys = [*on, *off]
            assert single.set_many({k: f"{k}=v" for k in off}) == []
            watch = Watch("past 1024 descriptors")
            got, error = watch.call("get_many", lambda: single.get_many(keys))
            if isinstance(error, MultiKeyError):
                got = error.results
            else:
                assert error is None, repr(error)
            assert {k: got.get(k) for k in off} == {k: f"{k}=v" for k in off}
            # A write whose pair holds the hung node: acknowledged by the other and a stand-in.
            ok, error = watch.call("BackupClient.set", lambda: backup.set(on[0], "written"))
            assert error is None and ok is True, repr(error)
            assert backup.get(on[0]) == "written"
            socks = [t._pool.free for t in single._transports.values()]
            assert any(c.sock.fileno() > 1024 for pool in socks for c in pool if c.sock)
        finally:
            server.close()
            single.close()
            backup.close()


@pytest.mark.parametrize("kind", KINDS, ids=KIND_IDS)
def test_a_stray_reply_on_an_idle_connection_is_never_read_as_the_next_one(
        cluster: LocalCluster, ns: str, kind: type[Client]) -> None:
    """A node that answers a get twice, the second time 50 ms later: the copy lands on
    a connection back in the pool. The next get on it must not return that old value
    after another client wrote a new one."""
    with HostileServer() as server:
        servers = [*cluster.servers, server.server]
        reader = kind(servers, timeouts=TIMEOUTS, health=HEALTH)
        writer = kind(servers, timeouts=TIMEOUTS, health=HEALTH)
        try:
            key = _keys(reader, server.node, ns)[0][0]
            assert writer.set(key, "old") is True
            server.behave(behaviours.extra_reply(None, gap=0.05), "get", "gets", "mg")
            assert reader.get(key) == "old"
            time.sleep(0.3)  # the stray copy is in the reader's idle connection now
            server.behave(None, "get", "gets", "mg")
            assert writer.set(key, "new") is True
            assert reader.get(key) == "new"
        finally:
            server.close()
            reader.close()
            writer.close()


@pytest.mark.parametrize("op", ["get", "set"])
def test_a_late_first_byte_then_a_drip_ends_at_the_read_timeout(op: str) -> None:
    """The fast paths' deadline counts from the request, not from the first byte."""
    from tests.netfaults.behaviours import Send, Sleep

    read = 0.5
    late = Behaviour("late drip", lambda req: [Sleep(0.8 * read),
                                               Send(req.honest(), chunk=1, interval=0.05)])
    with HostileServer() as server:
        client = Client([server.server], timeouts=Timeouts(connect=0.5, read=read),
                        failover="fail")
        try:
            assert client.set("k", "v") is True  # a pooled connection: the fast path's
            server.behave(late)
            start = time.monotonic()
            with pytest.raises(MemringError):
                client.get("k") if op == "get" else client.set("k", "v")
            took = time.monotonic() - start
        finally:
            server.close()
            client.close()
    # The read timeout plus slack; a deadline counted from the first byte would give
    # 0.8 + 1.0 read timeouts.
    assert took < 1.5 * read, f"{took:.2f} s"
