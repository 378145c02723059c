"""Errors raised by memring.

Every error memring raises derives from :class:`MemringError`::

    MemringError
    ├── ConfigError (ValueError)          bad constructor arguments or server specs
    ├── InvalidArgument (ValueError)      a call's argument is out of range; nothing sent
    │   └── InvalidArgumentType (TypeError)     ... or of the wrong type
    ├── InvalidKey (ValueError)           key rejected before any I/O
    ├── ValueTooLarge (ValueError)        value over the item size limit, nothing written
    ├── SerializationError (TypeError)    a value the serde cannot encode, or stored
    │                                     bytes it cannot decode (``key``, ``node``)
    ├── NodeError                         something went wrong talking to one node
    │   ├── NodeUnavailable (ConnectionError)   node down, unreachable or timed out
    │   │   ├── NodeTimeout (TimeoutError)      the node did not answer in time
    │   │   └── ProtocolError             the node's reply broke the protocol
    │   ├── PoolExhausted (RuntimeError)   max_pool_size connections to it are all in use
    │   ├── ServerError                   the node answered with an error
    │   └── MultiKeyError                 some keys of a multi-key call failed
    └── ClusterError                      no live node can take the key

pymemcache and socket errors are translated into this tree at exactly one
seam (:mod:`memring.client.transport`), always with ``raise ... from exc`` so
the original cause stays in ``__cause__``.
"""

from __future__ import annotations

from typing import Any, Protocol


class _Labelled(Protocol):
    """What an error needs of a node: its label. (errors.py imports nothing of memring's,
    so that every layer, :mod:`memring.hashring` included, can raise these.)"""

    @property
    def label(self) -> str: ...

__all__ = [
    "ClusterError",
    "ConfigError",
    "InvalidArgument",
    "InvalidArgumentType",
    "InvalidKey",
    "MemringError",
    "MultiKeyError",
    "NodeError",
    "NodeTimeout",
    "NodeUnavailable",
    "PoolExhausted",
    "ProtocolError",
    "SerializationError",
    "ServerError",
    "ValueTooLarge",
]


class MemringError(Exception):
    """Root of every error raised by memring."""


class ConfigError(MemringError, ValueError):
    """A constructor argument, policy value or server spec is invalid."""


class InvalidKey(MemringError, ValueError):
    """The key cannot be sent: empty, too long, or holds whitespace/control bytes."""

    def __init__(self, message: str, *, key: object = None) -> None:
        super().__init__(message)
        self.key = key


class ValueTooLarge(MemringError, ValueError):
    """The serialized value is over the item size limit. Nothing was written."""

    def __init__(self, message: str, *, key: object = None, size: int = 0, limit: int = 0) -> None:
        super().__init__(message)
        self.key = key
        self.size = size
        self.limit = limit


class InvalidArgument(MemringError, ValueError):
    """An argument of a call is out of range (a negative ``delay``, a bad CAS token, ...).
    Nothing was sent."""


class InvalidArgumentType(InvalidArgument, TypeError):
    """An argument of a call has the wrong type (``expire="10"``, ``flags="x"``, ...).
    Nothing was sent."""


class SerializationError(MemringError, TypeError):
    """The serde cannot encode this value (pickle is off by default), or the
    bytes stored under ``key`` on ``node`` do not decode under their flags."""

    def __init__(self, message: str, *, key: object = None, node: _Labelled | None = None
                 ) -> None:
        super().__init__(message)
        self.key = key
        self.node: Any = node


class NodeError(MemringError):
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


class ProtocolError(NodeUnavailable):
    """The node's reply is not a reply to the request (garbage, a value for another
    key, a value larger than the item limit, a reply with no end). Its connection
    was closed; the node counts as failed."""


class PoolExhausted(NodeError, RuntimeError):
    """Every connection ``max_pool_size`` allows to the node is in use by other calls.
    Not a failure of the node: it is not marked down."""


class ServerError(NodeError):
    """The node answered with an error (``SERVER_ERROR``/``CLIENT_ERROR``/``ERROR``).

    ``kind`` says which: ``"server"``, ``"client"`` or ``"command"``.
    """

    def __init__(self, message: str, *, node: _Labelled | None = None, key: object = None,
                 kind: str = "server") -> None:
        super().__init__(message, node=node, key=key)
        self.kind = kind


class ClusterError(MemringError):
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
