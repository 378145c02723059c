"""Node identity and server spec parsing."""

from __future__ import annotations

import dataclasses

import pytest

from memring import ConfigError, MemringError, Node
from memring.hashring import DEFAULT_PORT, parse_node, parse_nodes


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, MemringError)


# -- parse_node: accepted forms ------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("10.0.0.1", Node("10.0.0.1", 11211, 1, None)),
        ("cache-a.example.com", Node("cache-a.example.com", 11211, 1, None)),
        ("10.0.0.1:11212", Node("10.0.0.1", 11212, 1, None)),
        ("10.0.0.1:11212:3", Node("10.0.0.1", 11212, 3, None)),
        ("10.0.0.1:11211:2 cache-a", Node("10.0.0.1", 11211, 2, "cache-a")),
        ("10.0.0.1 cache-a", Node("10.0.0.1", 11211, 1, "cache-a")),
        ("  10.0.0.1:11212  ", Node("10.0.0.1", 11212, 1, None)),
        ("[::1]", Node("::1", 11211, 1, None)),
        ("[::1]:11212", Node("::1", 11212, 1, None)),
        ("[2001:db8::7]:11213:4", Node("2001:db8::7", 11213, 4, None)),
        ("[2001:db8::7]:11211:2 cache-v6", Node("2001:db8::7", 11211, 2, "cache-v6")),
        (("10.0.0.1", 11212), Node("10.0.0.1", 11212, 1, None)),
        (("10.0.0.1", 11212, 5), Node("10.0.0.1", 11212, 5, None)),
    ],
)
def test_parse_node_accepts(spec: object, expected: Node) -> None:
    assert parse_node(spec) == expected  # type: ignore[arg-type]


def test_parse_node_default_port() -> None:
    assert DEFAULT_PORT == 11211
    assert parse_node("localhost").port == DEFAULT_PORT


def test_parse_node_returns_a_node_unchanged() -> None:
    node = Node("10.0.0.1", 11212, 2, "x")
    assert parse_node(node) is node


# -- parse_node: rejected forms ------------------------------------------------


@pytest.mark.parametrize(
    "spec",
    [
        "",
        "   ",
        ":11211",
        "10.0.0.1:",
        "10.0.0.1:port",
        "10.0.0.1:11211:heavy",
        "10.0.0.1:11211:1:1",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:-1",
        "10.0.0.1:11211:0",
        "10.0.0.1:11211:-2",
        "10.0.0.1/24:11211",
        "bad$host",
        "::1",  # IPv6 needs brackets
        "[::1",
        "[::1]:x",
        "[]:11211",
        ("10.0.0.1",),
        ("10.0.0.1", 11211, 1, 1),
        ("10.0.0.1", "11211"),
        ("10.0.0.1", True),
        ("10.0.0.1", 11211, 1.5),
        ("", 11211),
        (11211, "10.0.0.1"),
        None,
        11211,
        b"10.0.0.1:11211",
        ["10.0.0.1", 11211],
    ],
)
def test_parse_node_rejects(spec: object) -> None:
    with pytest.raises(ConfigError):
        parse_node(spec)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        parse_node(spec)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"host": ""},
        {"host": "a b"},
        {"host": "10.0.0.1", "port": 0},
        {"host": "10.0.0.1", "port": 70000},
        {"host": "10.0.0.1", "port": True},
        {"host": "10.0.0.1", "port": 11211.0},
        {"host": "10.0.0.1", "weight": 0},
        {"host": "10.0.0.1", "weight": False},
        {"host": "10.0.0.1", "weight": 2.0},
        {"host": "10.0.0.1", "name": ""},
        {"host": "10.0.0.1", "name": "two words"},
        {"host": "10.0.0.1", "name": "tab\there"},
        {"host": "10.0.0.1", "name": 7},
    ],
)
def test_node_validates_on_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        Node(**kwargs)  # type: ignore[arg-type]


# -- parse_nodes and duplicates ------------------------------------------------


def test_parse_nodes_list_and_comma_string() -> None:
    expected = [Node("10.0.0.1"), Node("10.0.0.2", 11212), Node("10.0.0.3", 11211, 2)]
    assert parse_nodes(["10.0.0.1", ("10.0.0.2", 11212), "10.0.0.3:11211:2"]) == expected
    assert parse_nodes("10.0.0.1, 10.0.0.2:11212,10.0.0.3:11211:2,") == expected
    assert parse_nodes([]) == []


@pytest.mark.parametrize(
    "specs",
    [
        ["10.0.0.1", "10.0.0.1"],
        ["10.0.0.1", "10.0.0.1:11211"],  # same address, default port spelled out
        ["10.0.0.1:11211:1", "10.0.0.1:11211:2"],  # same address, different weight
        ["10.0.0.1:11211 a", "10.0.0.2:11211 a"],  # same name
        ["10.0.0.1", ("10.0.0.1", 11211)],
        "10.0.0.1:11212,10.0.0.1:11212",
    ],
)
def test_parse_nodes_rejects_duplicates(specs: list[str] | str) -> None:
    with pytest.raises(ConfigError, match="duplicate"):
        parse_nodes(specs)


def test_parse_nodes_same_host_other_port_is_not_a_duplicate() -> None:
    assert len(parse_nodes(["10.0.0.1:11211", "10.0.0.1:11212"])) == 2


# -- identity: label, ketama_name, value semantics --------------------------------


@pytest.mark.parametrize(
    ("spec", "label", "ketama_name"),
    [
        ("10.0.0.1", "10.0.0.1:11211", "10.0.0.1"),
        ("10.0.0.1:11211", "10.0.0.1:11211", "10.0.0.1"),
        ("10.0.0.1:11211:3", "10.0.0.1:11211", "10.0.0.1"),
        ("10.0.0.1:11212", "10.0.0.1:11212", "10.0.0.1:11212"),
        ("cache.example.com:22122", "cache.example.com:22122", "cache.example.com:22122"),
        ("10.0.0.1:11211:1 cache-a", "cache-a", "cache-a"),
        ("10.0.0.1:11212:1 cache-a", "cache-a", "cache-a"),
        ("[::1]", "[::1]:11211", "::1"),
        ("[::1]:11212", "[::1]:11212", "::1:11212"),
        ("[2001:db8::7]:11211:2 v6", "v6", "v6"),
    ],
)
def test_label_and_ketama_name(spec: str, label: str, ketama_name: str) -> None:
    node = parse_node(spec)
    assert node.label == label
    assert str(node) == label
    assert node.ketama_name == ketama_name


def test_address() -> None:
    assert parse_node("10.0.0.1:11212:3 x").address == ("10.0.0.1", 11212)
    assert parse_node("[::1]:11212").address == ("::1", 11212)


def test_node_is_a_frozen_hashable_value() -> None:
    a = parse_node("10.0.0.1:11212:2")
    b = Node("10.0.0.1", 11212, 2)
    assert a == b
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != Node("10.0.0.1", 11212, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.port = 1  # type: ignore[misc]


def test_nodes_are_ordered() -> None:
    nodes = [Node("10.0.0.2"), Node("10.0.0.1", 11212), Node("10.0.0.1")]
    assert sorted(nodes) == [Node("10.0.0.1"), Node("10.0.0.1", 11212), Node("10.0.0.2")]


def test_text_after_ipv6_bracket_must_be_a_port() -> None:
    with pytest.raises(ConfigError, match="after"):
        parse_node("[::1]x:1")
