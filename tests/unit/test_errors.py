"""memring's error tree also fits pymemcache's: handlers written for pymemcache catch memring's.

Each class is pinned to its place under ``MemringError``, to the builtin it
mixes in, and to the pymemcache exception pymemcache raises for the same
event (the table in ``memring/errors.py``'s docstring).
"""

from __future__ import annotations

import ast
import inspect
import pickle
from pathlib import Path

import pytest
from pymemcache import exceptions as pm

import memring.errors as errors
from memring.errors import (
    ClientReplyError,
    ClusterError,
    ConfigError,
    ConnectionClosed,
    InvalidArgument,
    InvalidArgumentType,
    InvalidKey,
    InvalidKeyType,
    MemringError,
    MultiKeyError,
    NodeError,
    NodeTimeout,
    NodeUnavailable,
    PoolExhausted,
    ProtocolError,
    SerializationError,
    ServerError,
    ServerReplyError,
    UnknownCommandError,
    UnpicklableValue,
    ValueTooLarge,
)

#: class -> (memring parent, builtins it must be, pymemcache exception it must be)
MAPPING: dict[type[Exception], tuple[type[Exception], tuple[type[BaseException], ...],
                                     type[Exception] | None]] = {
    ConfigError: (MemringError, (ValueError,), None),
    InvalidArgument: (MemringError, (ValueError,), pm.MemcacheIllegalInputError),
    InvalidArgumentType: (InvalidArgument, (TypeError, ValueError),
                          pm.MemcacheIllegalInputError),
    InvalidKey: (InvalidArgument, (ValueError,), pm.MemcacheIllegalInputError),
    InvalidKeyType: (InvalidKey, (TypeError, ValueError), pm.MemcacheIllegalInputError),
    ValueTooLarge: (MemringError, (ValueError,), pm.MemcacheServerError),
    SerializationError: (MemringError, (TypeError,), pm.MemcacheIllegalInputError),
    # pickle.PicklingError: what pymemcache lets through, and Django's cache
    # contract ("except pickle.PickleError") expects.
    UnpicklableValue: (SerializationError, (TypeError, pickle.PicklingError),
                       pm.MemcacheIllegalInputError),
    NodeError: (MemringError, (), pm.MemcacheError),
    NodeUnavailable: (NodeError, (ConnectionError, OSError), pm.MemcacheError),
    NodeTimeout: (NodeUnavailable, (TimeoutError, ConnectionError, OSError), pm.MemcacheError),
    ConnectionClosed: (NodeUnavailable, (ConnectionError, OSError),
                       pm.MemcacheUnexpectedCloseError),
    ServerError: (NodeError, (), pm.MemcacheError),
    ServerReplyError: (ServerError, (), pm.MemcacheServerError),
    ClientReplyError: (ServerError, (), pm.MemcacheClientError),
    UnknownCommandError: (ClientReplyError, (), pm.MemcacheUnknownCommandError),
    ProtocolError: (NodeUnavailable, (ConnectionError, OSError), pm.MemcacheUnknownError),
    PoolExhausted: (NodeError, (RuntimeError,), pm.MemcacheError),
    MultiKeyError: (NodeError, (), pm.MemcacheError),
    ClusterError: (MemringError, (), pm.MemcacheError),
}

#: pymemcache exceptions a class must NOT be: catching one of these in
#: pymemcache code means another event, which memring's error is not.
NOT: dict[type[Exception], tuple[type[Exception], ...]] = {
    ConfigError: (pm.MemcacheError,),
    InvalidKey: (pm.MemcacheServerError,),
    ValueTooLarge: (pm.MemcacheClientError,),
    NodeUnavailable: (pm.MemcacheServerError, pm.MemcacheClientError),
    NodeTimeout: (pm.MemcacheServerError, pm.MemcacheClientError),
    ServerError: (pm.MemcacheServerError, pm.MemcacheClientError),
    ServerReplyError: (pm.MemcacheClientError, OSError),
    ClientReplyError: (pm.MemcacheServerError, OSError),
    ProtocolError: (pm.MemcacheServerError, pm.MemcacheClientError),
    PoolExhausted: (pm.MemcacheServerError, pm.MemcacheClientError, OSError),
    MultiKeyError: (pm.MemcacheServerError, pm.MemcacheClientError),
    ClusterError: (OSError,),
}


def make(cls: type[Exception]) -> Exception:
    """An instance of ``cls``, built as memring's code builds it."""
    if cls is MultiKeyError:
        return cls("some keys failed", results={}, failed={})
    if issubclass(cls, NodeError):
        return cls("failed", key=b"k")
    if cls is InvalidKey or cls is ValueTooLarge:
        return cls("bad", key=b"k")
    return cls("bad")


def test_every_public_error_is_pinned() -> None:
    public = {getattr(errors, name) for name in errors.__all__}
    assert public == set(MAPPING) | {MemringError}


@pytest.mark.parametrize("cls", list(MAPPING), ids=lambda c: c.__name__)
def test_place_in_the_tree(cls: type[Exception]) -> None:
    parent, builtins, upstream = MAPPING[cls]
    assert parent in cls.__bases__
    assert issubclass(cls, MemringError)
    for builtin in builtins:
        assert issubclass(cls, builtin), builtin
    if upstream is not None:
        assert issubclass(cls, upstream), upstream
    for other in NOT.get(cls, ()):
        assert not issubclass(cls, other), other


@pytest.mark.parametrize("cls", list(MAPPING), ids=lambda c: c.__name__)
def test_a_pymemcache_handler_catches_it(cls: type[Exception]) -> None:
    _, builtins, upstream = MAPPING[cls]
    caught: list[type[BaseException]] = [MemringError, *builtins]
    if upstream is not None:
        caught.append(upstream)
    for handler in caught:
        with pytest.raises(handler) as info:
            raise make(cls)
        assert type(info.value) is cls


def test_the_root_is_not_a_pymemcache_error() -> None:
    # ConfigError, and memring's own tools' errors, must not be swallowed by
    # an "except MemcacheError" around cache calls.
    assert not issubclass(MemringError, pm.MemcacheError)


@pytest.mark.parametrize("cls", list(MAPPING), ids=lambda c: c.__name__)
def test_instances_keep_their_context(cls: type[Exception]) -> None:
    exc = make(cls)
    assert str(exc).startswith(exc.args[0])
    if isinstance(exc, NodeError) and not isinstance(exc, MultiKeyError):
        assert exc.key == b"k"
        assert exc.node is None


def test_node_errors_show_node_key_and_cause() -> None:
    class FakeNode:
        label = "127.0.0.1:1"

    try:
        try:
            raise ConnectionRefusedError(111, "Connection refused")
        except OSError as cause:
            raise NodeUnavailable("connection failed", node=FakeNode(), key=b"k") from cause
    except NodeUnavailable as exc:
        text = str(exc)
    assert text == ("connection failed (node=127.0.0.1:1, key=b'k', "
                    "cause=ConnectionRefusedError: [Errno 111] Connection refused)")


def test_a_closed_connection_is_also_a_pymemcache_server_error() -> None:
    # As in pymemcache, where MemcacheUnexpectedCloseError is a MemcacheServerError.
    assert issubclass(ConnectionClosed, pm.MemcacheServerError)
    assert issubclass(ConnectionClosed, NodeUnavailable)
    exc = ConnectionClosed("connection closed by the server")
    assert isinstance(exc, OSError) and exc.errno is None


def test_invalid_key_is_still_raised_and_caught_as_before() -> None:
    with pytest.raises(InvalidKey) as info:
        raise InvalidKey("key is empty", key=b"")
    assert info.value.key == b""
    with pytest.raises(ValueError):
        raise InvalidKey("key is empty", key=b"")


# -- the type checker's copy of pymemcache's hierarchy ----------------------------


def _type_checking_mirror() -> dict[str, list[str]]:
    """``{class: [base names]}`` of the classes errors.py declares for the type checker."""
    tree = ast.parse(Path(inspect.getfile(errors)).read_text(encoding="utf-8"))
    for node in tree.body:
        if (isinstance(node, ast.If) and isinstance(node.test, ast.Name)
                and node.test.id == "TYPE_CHECKING"):
            return {c.name: [b.id for b in c.bases if isinstance(b, ast.Name)]
                    for c in node.body if isinstance(c, ast.ClassDef)}
    raise AssertionError("errors.py has no TYPE_CHECKING block")


def test_the_type_checkers_copy_matches_pymemcache() -> None:
    mirror = _type_checking_mirror()
    real = {name: [b.__name__ for b in getattr(pm, name).__bases__] for name in mirror}
    assert mirror == real
    imported = {n for n in vars(errors) if n.startswith("Memcache")}
    assert imported == set(mirror)
    for name in mirror:
        assert getattr(errors, name) is getattr(pm, name)
