"""Errors raised by memring.

Every error memring raises derives from :class:`MemringError`. Each one is
also the builtin it is closest to and the pymemcache exception that
pymemcache raises for the same event, so handlers written for pymemcache's
clients (``except MemcacheClientError``, ``except MemcacheServerError``,
``except OSError``, ...) catch memring's errors unchanged::

    memring                                builtin           pymemcache (same event)
    -------                                -------           -----------------------
    MemringError                           Exception         -
    ├── ConfigError                        ValueError        -  (pymemcache: ValueError/TypeError)
    ├── InvalidArgument                    ValueError        MemcacheIllegalInputError
    │   ├── InvalidArgumentType            TypeError         MemcacheIllegalInputError
    │   └── InvalidKey                     ValueError        MemcacheIllegalInputError
    │       └── InvalidKeyType             TypeError         MemcacheIllegalInputError
    ├── ValueTooLarge                      ValueError        MemcacheServerError
    ├── SerializationError                 TypeError         MemcacheIllegalInputError
    │   └── UnpicklableValue               pickle.PicklingError  (pickle's own error)
    ├── NodeError                          -                 MemcacheError
    │   ├── NodeUnavailable                ConnectionError   MemcacheError
    │   │   ├── NodeTimeout                TimeoutError      MemcacheError
    │   │   ├── ConnectionClosed           ConnectionError   MemcacheUnexpectedCloseError
    │   │   └── ProtocolError              ConnectionError   MemcacheUnknownError
    │   ├── PoolExhausted                  RuntimeError      MemcacheError
    │   ├── ServerError                    -                 MemcacheError
    │   │   ├── ServerReplyError           -                 MemcacheServerError
    │   │   └── ClientReplyError           -                 MemcacheClientError
    │   │       └── UnknownCommandError    -                 MemcacheUnknownCommandError
    │   └── MultiKeyError                  -                 MemcacheError
    └── ClusterError                       -                 MemcacheError

What each one means, and why it maps where it does:

``ConfigError``
    A bad constructor argument, policy value or server spec. pymemcache
    raises plain ``ValueError``/``TypeError`` for those, never a
    ``MemcacheError``, so neither does memring: an ``except MemcacheError``
    around cache calls must not swallow a misconfiguration.
``InvalidArgument``
    An argument other than the key rejected before any I/O: an
    ``incr``/``decr`` amount, an expiry or a CAS token that is not an
    integer. pymemcache raises ``MemcacheIllegalInputError`` ("value must be
    integer, got bad value", "cas must only contain digits").
``InvalidArgumentType``
    The same, for an argument of the wrong type (``expire="10"``,
    ``flags="x"``, ``set_many`` of a list): also a ``TypeError``, as the
    builtin would raise.
``InvalidKey``
    Empty, over 250 bytes (prefix included), whitespace or a control
    character, or a type other than str/bytes. pymemcache raises
    ``MemcacheIllegalInputError`` for each ("Key contains whitespace", "Key
    is too long", "Non-ASCII key"), before anything is sent.
``InvalidKeyType``
    A key (or a collection of keys) of the wrong type: ``get(5)``,
    ``get_many(None)``. Also a ``TypeError``, as the builtin would raise.
``ValueTooLarge``
    memring refuses the value before any I/O; pymemcache sends it and
    memcached answers ``SERVER_ERROR object too large for cache``, which
    pymemcache raises as ``MemcacheServerError``. A pymemcache user catches
    that class for this event (pymemcache's own integration test
    ``test_get_set_large`` does), so this is one, though memring never sent
    anything.
``SerializationError``
    The serde cannot encode the value, or the bytes stored under ``key`` on
    ``node`` do not decode under their flags (in a multi-key call that costs
    only that key). pymemcache's equivalent is "Data values must be
    binary-safe" (a value its ``encoding`` cannot encode), a
    ``MemcacheIllegalInputError``.
``UnpicklableValue``
    The serde's pickle refused the value. pymemcache lets pickle's own
    ``PicklingError`` through, and Django's cache contract says a value that
    cannot be pickled raises ``pickle.PickleError``; this is one.
``NodeError``
    Something went wrong talking to one node: a ``MemcacheError``, the
    root a pymemcache user catches for "the cache failed".
``NodeUnavailable``
    Down, refused, reset or unreachable. pymemcache lets the socket error
    through (``ConnectionRefusedError``, ``ConnectionResetError``: both
    ``ConnectionError``), and its ``HashClient`` raises a bare
    ``MemcacheError`` ("All servers seem to be down right now") once its
    nodes are marked dead. This is both, so ``except OSError`` and
    ``except MemcacheError`` both catch it.
``NodeTimeout``
    No answer in time. pymemcache lets ``socket.timeout`` through, which is
    ``TimeoutError`` (an ``OSError``).
``ConnectionClosed``
    The server closed the connection in the middle of a call: pymemcache's
    ``MemcacheUnexpectedCloseError`` (a ``MemcacheServerError``).
``ProtocolError``
    The node's reply is not a reply to the request: garbage, a value for a
    key not asked for, a value claiming more than the item size limit, a
    reply that does not end. pymemcache raises ``MemcacheUnknownError``.
    The connection is closed and the node counts as failed (its keys fail
    over), because a node that answers nonsense is not serving.
``PoolExhausted``
    Every connection ``max_pool_size`` allows to the node is in use;
    pymemcache's pool raises ``RuntimeError``. Not the node's fault: it is
    not marked down.
``ServerError``
    The node's reply is an error, or a call could not finish against it
    (contention in a CAS loop). Its subclasses are the three error replies
    of the text protocol, as pymemcache tells them apart:
    ``SERVER_ERROR ...`` -> ``ServerReplyError`` (``MemcacheServerError``);
    ``CLIENT_ERROR ...`` -> ``ClientReplyError`` (``MemcacheClientError``),
    which is also what ``incr``/``decr`` of a non-numeric value raise
    ("cannot increment or decrement non-numeric value"), emulated or not;
    ``ERROR`` -> ``UnknownCommandError`` (``MemcacheUnknownCommandError``).
``MultiKeyError``
    Some keys of a multi-key call failed. pymemcache's ``HashClient`` raises
    the failing node's error for these; memring raises one error for the
    call, keeping each key's error in ``failed``.
``ClusterError``
    No live node can take the key: pymemcache's ``HashClient`` raises
    ``MemcacheError("All servers seem to be down right now")``.

pymemcache and socket errors are translated into this tree at exactly one
seam (:mod:`memring.client.transport`), always with ``raise ... from exc`` so
the original cause stays in ``__cause__``. Since memring's errors are
pymemcache exceptions too, that seam must let a memring error pass untouched
rather than translate it again.

This module imports :mod:`pymemcache.exceptions`, and nothing of memring's.
:mod:`memring.hashring`, which must not depend on pymemcache, imports this
module for :class:`ConfigError`, so it now loads pymemcache indirectly.
That is acceptable: the exceptions module is plain class definitions with no
I/O, and any import of a memring submodule first runs ``memring/__init__``,
which loads pymemcache through the client anyway, so no program imports
anything more than before. hashring's own code still uses no pymemcache API
(the layering test checks its imports). Should the ring ever ship without
pymemcache, move :class:`MemringError` and :class:`ConfigError` to a
pymemcache-free module that this one re-exports, and have hashring import
them from there.
"""

from __future__ import annotations

import pickle
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    # pymemcache ships no type hints, so to mypy its exceptions are Any, and a
    # class derived from Any loses every check. Its hierarchy, as the type
    # checker should see it (tests/unit/test_errors.py pins it to the real one):
    class MemcacheError(Exception): ...
    class MemcacheClientError(MemcacheError): ...
    class MemcacheUnknownCommandError(MemcacheClientError): ...
    class MemcacheIllegalInputError(MemcacheClientError): ...
    class MemcacheServerError(MemcacheError): ...
    class MemcacheUnknownError(MemcacheError): ...
    class MemcacheUnexpectedCloseError(MemcacheServerError): ...
else:
    from pymemcache.exceptions import (
        MemcacheClientError,
        MemcacheError,
        MemcacheIllegalInputError,
        MemcacheServerError,
        MemcacheUnexpectedCloseError,
        MemcacheUnknownCommandError,
        MemcacheUnknownError,
    )


class _Labelled(Protocol):
    """What an error needs of a node: its label. (errors.py imports nothing of memring's,
    so that every layer, :mod:`memring.hashring` included, can raise these.)"""

    @property
    def label(self) -> str: ...

__all__ = [
    "ClientReplyError",
    "ClusterError",
    "ConfigError",
    "ConnectionClosed",
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidKey",
    "InvalidKeyType",
    "MemringError",
    "MultiKeyError",
    "NodeError",
    "NodeTimeout",
    "NodeUnavailable",
    "PoolExhausted",
    "ProtocolError",
    "SerializationError",
    "ServerError",
    "ServerReplyError",
    "UnknownCommandError",
    "UnpicklableValue",
    "ValueTooLarge",
]


class MemringError(Exception):
    """Root of every error raised by memring."""


class ConfigError(MemringError, ValueError):
    """A constructor argument, policy value or server spec is invalid."""


class InvalidArgument(MemringError, ValueError, MemcacheIllegalInputError):
    """An argument is not legal (an ``incr`` amount, an expiry, a CAS token). Nothing was sent."""


class InvalidArgumentType(InvalidArgument, TypeError):
    """An argument has the wrong type (``expire="10"``, ``flags="x"``, ...). Nothing was sent."""


class InvalidKey(InvalidArgument):
    """The key cannot be sent: empty, too long, or holds whitespace/control bytes."""

    def __init__(self, message: str, *, key: object = None) -> None:
        super().__init__(message)
        self.key = key


class InvalidKeyType(InvalidKey, TypeError):
    """A key, or a collection of keys, of the wrong type (``get(5)``, ``get_many(None)``)."""


class ValueTooLarge(MemringError, ValueError, MemcacheServerError):
    """The serialized value is over the item size limit. Nothing was written."""

    def __init__(self, message: str, *, key: object = None, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.key = key
        self.size = size
        self.limit = limit


class SerializationError(MemringError, TypeError, MemcacheIllegalInputError):
    """The serde cannot encode this value (pickle is off by default), or the
    bytes stored under ``key`` on ``node`` do not decode under their flags."""

    def __init__(self, message: str, *, key: object = None, node: _Labelled | None = None
                 ) -> None:
        super().__init__(message)
        self.key = key
        self.node: Any = node


class UnpicklableValue(SerializationError, pickle.PicklingError):
    """The serde's pickle could not pickle the value (its cause says why)."""


class NodeError(MemringError, MemcacheError):
    """An operation on one node failed. ``node`` and ``key`` say where."""

    #: Whether ``str()`` names the low-level cause (``__cause__`` always keeps it).
    _show_cause = True

    def __init__(
        self, message: str, *, node: _Labelled | None = None, key: object = None
    ) -> None:
        super().__init__(message)
        #: The :class:`memring.Node` concerned, or None. (Typed loosely: this
        #: module imports nothing of memring's, so no layer depends on another
        #: through its errors.)
        self.node: Any = node
        self.key = key

    def __str__(self) -> str:
        text = super().__str__()
        parts = []
        if self.node is not None:
            parts.append(f"node={self.node.label}")
        if isinstance(self.key, (list, tuple)):
            shown = ", ".join(repr(k) for k in self.key[:3])
            more = f", ... {len(self.key)} keys" if len(self.key) > 3 else ""
            parts.append(f"keys=[{shown}{more}]")
        elif self.key is not None:
            parts.append(f"key={self.key!r}")
        if (self._show_cause and self.__cause__ is not None
                and not isinstance(self.__cause__, MemringError)):
            parts.append(f"cause={type(self.__cause__).__name__}: {self.__cause__}")
        return f"{text} ({', '.join(parts)})" if parts else text


class NodeUnavailable(NodeError, ConnectionError):
    """The node is down, refused the connection, or did not answer in time."""


class NodeTimeout(NodeUnavailable, TimeoutError):
    """The node did not answer within the read (or connect) timeout."""

    _show_cause = False  # the kernel's EAGAIN says nothing the message does not


class ConnectionClosed(NodeUnavailable, MemcacheUnexpectedCloseError):
    """The server closed the connection before its reply was complete."""


class ProtocolError(NodeUnavailable, MemcacheUnknownError):
    """The node's reply is not a reply to the request (garbage, a value for another
    key, a value larger than the item limit, a reply with no end). Its connection
    was closed; the node counts as failed."""


class PoolExhausted(NodeError, RuntimeError):
    """Every connection ``max_pool_size`` allows to the node is in use by other calls.
    Not a failure of the node: it is not marked down."""


class ServerError(NodeError):
    """The node answered with an error, or a call could not complete on it.

    The error replies of the protocol raise one of the subclasses:
    :class:`ServerReplyError` (``SERVER_ERROR``), :class:`ClientReplyError`
    (``CLIENT_ERROR``) and :class:`UnknownCommandError` (``ERROR``).
    """

    @staticmethod
    def for_reply(kind: str) -> type[ServerError]:
        """The class for an error reply of ``kind`` ``"server"``, ``"client"`` or ``"command"``."""
        return {"server": ServerReplyError, "client": ClientReplyError,
                "command": UnknownCommandError}[kind]


class ServerReplyError(ServerError, MemcacheServerError):
    """The node replied ``SERVER_ERROR ...`` (out of memory, object too large, ...)."""


class ClientReplyError(ServerError, MemcacheClientError):
    """The node replied ``CLIENT_ERROR ...``, e.g. ``incr``/``decr`` of a non-numeric value."""


class UnknownCommandError(ClientReplyError, MemcacheUnknownCommandError):
    """The node replied ``ERROR``: it does not know the command."""


class ClusterError(MemringError, MemcacheError):
    """No live node can serve the key (every node of its preference list is down)."""


class MultiKeyError(NodeError):
    """A multi-key call failed for some keys and could not fail them over.

    ``results`` holds what the call did get done (for ``get_many``, the
    values found; for ``set_many``, the keys that failed to store for other
    reasons), and ``failed`` maps each key that failed to its error.
    """

    def __init__(self, message: str, *, results: object, failed: dict[object, Exception]) -> None:
        super().__init__(message)
        self.results = results
        self.failed = failed
