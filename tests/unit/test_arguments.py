"""Every public method, every argument of a wrong type or range: a typed error, nothing sent.

The walk is driven by the methods' signatures: each parameter name has a
valid value and a list of bad ones, each with the builtin exception a
plain Python function would raise for it. For each public method of
:class:`~memring.Client` and :class:`~memring.BackupClient`, and of the asyncio
face's :class:`~memring.AsyncClient` and :class:`~memring.AsyncBackupClient`, every bad value
of every parameter is passed (the others valid) and the call must raise a
:class:`~memring.MemringError` that is also that builtin, having sent
nothing: the transports record every call made on them. A method with a
parameter this table does not know fails the walk, so a new method cannot
go unchecked.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Iterator
from typing import Any

import pytest

from memring import (
    AsyncBackupClient,
    AsyncClient,
    BackupClient,
    Client,
    InvalidKeyType,
    MemringError,
)
from tests.faces import Blocking
from tests.fakes import AsyncFakeTransport, FakeClock, FakeCluster, FakeTransport

#: Every client of both faces.
KINDS: list[type[Any]] = [Client, BackupClient, AsyncClient, AsyncBackupClient]

#: ``parameter name -> (valid value, [(bad value, builtin it must also be), ...])``.
#: ``value`` is a stored value except for ``incr``/``decr`` (see AMOUNT).
PARAMETERS: dict[str, tuple[Any, list[tuple[Any, type[Exception]]]]] = {
    "key": ("k", [(5, TypeError), (None, TypeError), (1.5, TypeError), (["k"], TypeError),
                  ("", ValueError), ("a b", ValueError), ("a\r\nflush_all", ValueError),
                  (b"x" * 251, ValueError)]),
    "value": ("v", [(object(), TypeError), (b"x" * (2 * 1024 * 1024), ValueError)]),
    "expire": (0, [("10", TypeError), (1.5, TypeError), (None, TypeError), (True, TypeError),
                   (2**31, ValueError), (-(2**31) - 1, ValueError)]),
    "noreply": (None, [("x", TypeError), (1, TypeError)]),
    "flags": (None, [("x", TypeError), (1.0, TypeError), (-1, ValueError),
                     (1 << 24, ValueError)]),
    "cas": (1, [(1.5, TypeError), (None, TypeError), ("abc", ValueError), (-1, ValueError),
                (2**64, ValueError), ("1" * 21, ValueError),
                (str(2**64), ValueError)]),
    "keys": (["a", "b"], [(5, TypeError), (None, TypeError), ("abc", TypeError),
                          (b"abc", TypeError), ([1], TypeError), ([""], ValueError),
                          (["ok", "a b"], ValueError)]),
    "values": ({"a": "v"}, [(["a", "b"], TypeError), (None, TypeError), ({5: "v"}, TypeError),
                            ({"a": object()}, TypeError), ({"a b": "v"}, ValueError)]),
    "delay": (0, [("x", TypeError), (1.5, TypeError), (-1, ValueError)]),
    "timeout": (1.0, [("x", TypeError), (None, TypeError), (-1, ValueError),
                      (float("nan"), ValueError), (float("inf"), ValueError)]),
    "args": ((), [((5,), TypeError), (("a b",), ValueError), (("",), ValueError)]),
    # pymemcache's extra methods (cache_memlimit, raw_command, shutdown, check_key).
    "memlimit": (64, [("x", TypeError), (1.5, TypeError), (0, ValueError)]),
    "command": ("version", [("", ValueError), ("version\r\nflush_all", ValueError)]),
    "end_tokens": ("\r\n", [("", ValueError)]),
    "graceful": (False, [("yes", TypeError), (1, TypeError)]),
    "key_prefix": (None, [(5, TypeError)]),
    "gets": (False, [("yes", TypeError), (1, TypeError)]),
    # Any value is a valid default: nothing to refuse.
    "default": (None, []),
    "cas_default": (None, []),
}

#: ``incr``/``decr``'s ``value``: an amount.
AMOUNT: tuple[Any, list[tuple[Any, type[Exception]]]] = (
    1, [("1", TypeError), (1.5, TypeError), (None, TypeError), (True, TypeError),
        (-1, ValueError), (2**64, ValueError)])

#: Methods that do no I/O at all (the rest must send something when called right).
NO_IO = {"route", "owners", "metrics", "close", "disconnect_all", "check_key"}
#: pymemcache's methods that memring does not support yet: they raise NotImplementedError.
UNSUPPORTED = {"add_server", "remove_server"}


class RecordingTransport(FakeTransport):
    """A fake node connection that records every call made on it."""

    def __init__(self, *args: Any, log: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log = log

    def call(self, method: str, *args: Any) -> Any:
        self._log.append(method)
        return super().call(method, *args)

    def send(self, method: str, *args: Any) -> Any:
        self._log.append(method)
        return super().send(method, *args)

    def get(self, key: bytes) -> Any:
        self._log.append("get")
        return super().get(key)

    def set(self, key: bytes, item: Any, expire: int) -> bool:
        self._log.append("set")
        return super().set(key, item, expire)


class AsyncRecordingTransport(AsyncFakeTransport):
    """:class:`RecordingTransport` at the asyncio face's seam."""

    def __init__(self, *args: Any, log: list[str], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._log = log

    async def call(self, method: str, *args: Any) -> Any:
        self._log.append(method)
        return await super().call(method, *args)

    def send(self, method: str, *args: Any) -> Any:
        self._log.append(method)
        return super().send(method, *args)

    async def get(self, key: bytes) -> Any:
        self._log.append("get")
        return await super().get(key)

    async def set(self, key: bytes, item: Any, expire: int) -> bool:
        self._log.append("set")
        return await super().set(key, item, expire)


def _client(kind: type[Client], log: list[str]) -> Client:
    """A client of ``kind`` on recording fakes (an async one called through Blocking)."""
    clock = FakeClock()
    cluster = FakeCluster(3, clock)
    recorder: Any = (AsyncRecordingTransport if kind in (AsyncClient, AsyncBackupClient)
                     else RecordingTransport)
    client: Any = kind(cluster.servers, _clock=clock, _background=False, _hlc=cluster.hlc,
                       _transport_factory=lambda node: recorder(cluster[node], log=log))
    return client if recorder is RecordingTransport else Blocking(client)  # type: ignore[return-value]


def _methods(kind: type[Client]) -> list[str]:
    return sorted(name for name in dir(kind) if not name.startswith("_")
                  and inspect.isfunction(getattr(kind, name)) and name not in UNSUPPORTED)


def _parameters(kind: type[Client], name: str) -> list[inspect.Parameter]:
    params = list(inspect.signature(getattr(kind, name)).parameters.values())
    return params[1:]  # self


def _table(name: str, param: str) -> tuple[Any, list[tuple[Any, type[Exception]]]]:
    if param == "value" and name in ("incr", "decr"):
        return AMOUNT
    if param not in PARAMETERS:
        raise AssertionError(f"{name}({param}=...): add valid and bad values for {param!r}")
    return PARAMETERS[param]


def _call(client: Client, name: str, params: list[inspect.Parameter],
          override: tuple[str, Any] | None) -> Any:
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    for p in params:
        value = override[1] if override and override[0] == p.name else _table(name, p.name)[0]
        if p.kind is p.VAR_POSITIONAL:
            args.extend(value)
        elif p.kind is p.KEYWORD_ONLY:
            kwargs[p.name] = value
        else:
            args.append(value)
    return getattr(client, name)(*args, **kwargs)


def _cases() -> Iterator[Any]:
    for kind in KINDS:
        for name in _methods(kind):
            for p in _parameters(kind, name):
                if p.kind is p.VAR_KEYWORD:
                    continue
                for i, (bad, builtin) in enumerate(_table(name, p.name)[1]):
                    yield pytest.param(kind, name, p.name, bad, builtin,
                                       id=f"{kind.__name__}.{name}-{p.name}-{i}")


@pytest.mark.parametrize(("kind", "name", "param", "bad", "builtin"), list(_cases()))
def test_a_bad_argument_raises_a_typed_error_and_sends_nothing(
        kind: type[Client], name: str, param: str, bad: Any, builtin: type[Exception]) -> None:
    log: list[str] = []
    client = _client(kind, log)
    with pytest.raises(MemringError) as caught:
        _call(client, name, _parameters(kind, name), (param, bad))
    assert isinstance(caught.value, builtin), (
        f"{type(caught.value).__name__} is not a {builtin.__name__}")
    assert log == [], f"{name} sent {log} before refusing {param}={bad!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_every_public_method_is_walked_and_its_valid_call_reaches_a_node(
        kind: type[Client]) -> None:
    """The walk's control: with only valid arguments each method runs, and sends
    (so an empty log above means "refused first", not "the recorder is blind")."""
    methods = _methods(kind)
    assert {"get", "set", "get_many", "set_many", "cas", "incr", "flush_all"} <= set(methods)
    for name in methods:
        log: list[str] = []
        client = _client(kind, log)
        # The fake need not implement every command: what matters is that the call
        # got as far as a node.
        with contextlib.suppress(Exception):
            _call(client, name, _parameters(kind, name), None)
        if name in NO_IO:
            assert log == [], name
        else:
            assert log, f"{name} with valid arguments sent nothing"


def test_a_key_of_the_wrong_type_is_an_invalid_key_and_a_type_error() -> None:
    client: Any = _client(Client, [])  # wrong types on purpose
    for name, arg in (("get", 5), ("get_many", None), ("delete_many", 7),
                      ("gets_many", "one key")):
        with pytest.raises(InvalidKeyType) as caught:
            getattr(client, name)(arg)
        assert isinstance(caught.value, TypeError)


#: Constructor arguments of a wrong type or range: each a ConfigError (a ValueError).
BAD_OPTIONS: list[dict[str, Any]] = [
    {"servers": 5}, {"servers": None}, {"servers": [5]}, {"servers": ["host:x"]},
    {"servers": []}, {"timeouts": "x"}, {"health": 5}, {"failover": 5}, {"failover": "x"},
    {"max_item_size": "1"}, {"vnodes": -1}, {"vnodes": "x"}, {"key_prefix": 5},
    {"key_prefix": "a b"}, {"hash": "nope"}, {"max_pool_size": "x"}, {"serde": 5},
    {"tls_context": 5},
]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("options", BAD_OPTIONS, ids=lambda o: "-".join(map(str, o.items())))
def test_a_bad_constructor_argument_is_a_config_error(kind: type[Client],
                                                      options: dict[str, Any]) -> None:
    from memring import ConfigError

    options = dict(options)
    servers = options.pop("servers", ["10.0.0.1:11211"])
    made: list[Any] = []
    with pytest.raises(ConfigError) as caught:
        kind(servers, _background=False, _transport_factory=made.append, **options)
    assert isinstance(caught.value, ValueError)
    assert made == []  # no connection was even set up
