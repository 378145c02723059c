"""Node identity: one frozen value used as ring member, pool key, metric label and log field."""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Union

from memring.errors import ConfigError

__all__ = ["DEFAULT_PORT", "Node", "NodeSpec", "parse_node", "parse_nodes", "server_list"]

DEFAULT_PORT = 11211

_HOST_RE = re.compile(r"^[A-Za-z0-9._-]+$")


@dataclass(frozen=True, order=True)
class Node:
    """The address of one Memcached server: TCP ``host:port``, or a unix socket.

    A ``host`` that is an absolute path is a unix-domain socket: its port is
    0, its label ``unix:<path>``, and it sits on the ring like any node.

    ``weight`` is a relative capacity (an integer >= 1). ``name``, when given,
    replaces the address as the node's identity on the ring, so a node can move
    to another address without moving its keys (as in twemproxy's
    ``host:port:weight name`` syntax).

    >>> Node("10.0.0.1").label
    '10.0.0.1:11211'
    >>> Node("10.0.0.1").ketama_name
    '10.0.0.1'
    >>> Node("10.0.0.1", 11212).ketama_name
    '10.0.0.1:11212'
    """

    host: str
    port: int = DEFAULT_PORT
    weight: int = 1
    name: str | None = field(default=None)

    def __post_init__(self) -> None:
        if not isinstance(self.host, str) or not self.host:
            raise ConfigError(f"node host must be a non-empty string, got {self.host!r}")
        if self.is_unix:
            if any(c.isspace() or not c.isprintable() for c in self.host):
                raise ConfigError(f"invalid unix socket path {self.host!r}")
            if self.port not in (0, DEFAULT_PORT):
                raise ConfigError(f"a unix socket node has no port, got {self.port!r}")
            object.__setattr__(self, "port", 0)
        else:
            if not _HOST_RE.match(self.host) and not _is_ipv6(self.host):
                raise ConfigError(f"invalid node host {self.host!r}")
            if isinstance(self.port, bool) or not isinstance(self.port, int) or not (
                    0 < self.port < 65536):
                raise ConfigError(f"node port must be an int in 1..65535, got {self.port!r}")
        if isinstance(self.weight, bool) or not isinstance(self.weight, int) or self.weight < 1:
            raise ConfigError(f"node weight must be an int >= 1, got {self.weight!r}")
        if self.name is not None and (
            not isinstance(self.name, str) or not self.name or any(c.isspace() for c in self.name)
        ):
            raise ConfigError(
                f"node name must be a non-empty string without spaces, got {self.name!r}")
        # Nodes key every per-node table on the request path: hash once.
        object.__setattr__(self, "_hash", hash((self.host, self.port, self.weight, self.name)))

    def __hash__(self) -> int:
        return self._hash  # type: ignore[attr-defined, no-any-return]

    def __reduce__(self) -> tuple[type[Node], tuple[str, int, int, str | None]]:
        # Rebuild (and rehash) on unpickling: str hashes differ between processes.
        return (Node, (self.host, self.port, self.weight, self.name))

    @property
    def is_unix(self) -> bool:
        """Whether this is a unix-domain socket (its host is the socket's path)."""
        return self.host.startswith("/")

    @property
    def address(self) -> tuple[str, int] | str:
        """``(host, port)``, or a unix socket's path, as pymemcache and sockets take it."""
        return self.host if self.is_unix else (self.host, self.port)

    @property
    def label(self) -> str:
        """A stable human label: the name if given, else ``host:port`` or ``unix:<path>``."""
        if self.name is not None:
            return self.name
        if self.is_unix:
            return f"unix:{self.host}"
        host = f"[{self.host}]" if _is_ipv6(self.host) else self.host
        return f"{host}:{self.port}"

    @property
    def ketama_name(self) -> str:
        """The string libmemcached and twemproxy hash to place this node's points.

        An explicit name wins; otherwise the bare host on the default port
        and ``host:port`` on any other port.
        """
        if self.name is not None:
            return self.name
        if self.port == DEFAULT_PORT or self.is_unix:
            return self.host
        return f"{self.host}:{self.port}"

    def __str__(self) -> str:
        return self.label


NodeSpec = Union[Node, str, "tuple[str, int]", "tuple[str, int, int]"]


def _is_ipv6(host: str) -> bool:
    return ":" in host and all(c in "0123456789abcdefABCDEF:." for c in host)


def parse_node(spec: NodeSpec) -> Node:
    """Turn a server spec into a :class:`Node`.

    Accepted forms: a ``Node``; a unix socket as ``"unix:/path"`` or
    ``"/path"`` (as pymemcache and Django write it); ``"host"``, ``"host:port"``,
    ``"host:port:weight"``, ``"[v6addr]:port[:weight]"``, optionally followed
    by a space and a name (``"10.0.0.1:11211:2 cache-a"``, as twemproxy
    writes it); a ``(host, port)`` or ``(host, port, weight)`` tuple, as
    pymemcache's ``HashClient`` takes them.

    >>> parse_node("127.0.0.1:11212:3")
    Node(host='127.0.0.1', port=11212, weight=3, name=None)
    """
    if isinstance(spec, Node):
        return spec
    if isinstance(spec, tuple):
        if len(spec) not in (2, 3):
            raise ConfigError(f"server tuple must be (host, port[, weight]), got {spec!r}")
        return Node(*spec)
    if not isinstance(spec, str):
        raise ConfigError(f"server spec must be a str, tuple or Node, got {type(spec).__name__}")
    text = spec.strip()
    if text.startswith("unix:"):
        text = text[5:]
        if not text.startswith("/"):
            raise ConfigError(f"a unix socket path must be absolute, got {spec!r}")
    if text.startswith("/"):
        return Node(text)
    name: str | None = None
    if " " in text:
        text, _, name = text.partition(" ")
        name = name.strip()
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep:
            raise ConfigError(f"unclosed '[' in server spec {spec!r}")
        if rest and not rest.startswith(":"):
            raise ConfigError(f"expected ':' after ']' in server spec {spec!r}")
        parts = rest.split(":")[1:]
    else:
        host, *parts = text.split(":")
    if len(parts) > 2:
        raise ConfigError(f"server spec must be host[:port[:weight]], got {spec!r}")
    try:
        port = int(parts[0]) if parts else DEFAULT_PORT
        weight = int(parts[1]) if len(parts) > 1 else 1
    except ValueError:
        raise ConfigError(f"port and weight must be integers in server spec {spec!r}") from None
    return Node(host, port, weight, name)


def server_list(specs: Iterable[NodeSpec] | NodeSpec) -> list[NodeSpec]:
    """A client's ``servers`` argument as a list of specs.

    A list (or any iterable) of specs; one comma-separated string; or one
    ``(host, port)`` tuple or :class:`Node`, as pymemcache's single-server
    ``Client(("127.0.0.1", 11211))`` takes it.
    """
    if isinstance(specs, str):
        return [s for s in specs.split(",") if s.strip()]
    if isinstance(specs, Node) or (
            isinstance(specs, tuple) and len(specs) in (2, 3) and isinstance(specs[0], str)
            and all(isinstance(x, int) for x in specs[1:])):
        return [specs]
    return list(specs)  # type: ignore[arg-type]


def parse_nodes(specs: Iterable[NodeSpec] | NodeSpec) -> list[Node]:
    """Parse several specs (see :func:`server_list`); reject duplicates."""
    nodes = [parse_node(s) for s in server_list(specs)]
    seen: set[str] = set()
    for node in nodes:
        ident = node.label
        if ident in seen:
            raise ConfigError(f"duplicate server {ident!r}")
        seen.add(ident)
    return nodes
