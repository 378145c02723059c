"""Layers depend one way: hashring <- engine <- faces (client, aio) <- tools <- cli,
and protocol (the wire format) <- the faces' transports.

Every module is parsed (not imported) and its imports are collected,
including relative imports, ``from memring import client`` and
``importlib.import_module("...")`` calls with a literal name.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import memring

PACKAGE_DIR = Path(memring.__file__).resolve().parent

# (layer, modules that layer must never import)
RULES: list[tuple[str, tuple[str, ...]]] = [
    (
        "memring.hashring",
        (
            "memring.engine",
            "memring.protocol",
            "memring.client",
            "memring.aio",
            "memring.cli",
            "memring.tools",
            "pymemcache",
        ),
    ),
    # The wire format: bytes in, values out; no I/O and no client logic.
    ("memring.protocol", ("memring.engine", "memring.client", "memring.aio", "memring.cli",
                          "memring.tools", "pymemcache", "socket", "asyncio")),
    # The engine knows nodes and calls, never sockets, threads' I/O or an event loop.
    ("memring.engine", ("memring.client", "memring.aio", "memring.protocol", "memring.cli",
                        "memring.tools", "socket", "select", "selectors", "asyncio")),
    ("memring.client", ("memring.aio", "memring.cli", "memring.tools")),
    ("memring.aio", ("memring.client", "memring.cli", "memring.tools")),
    ("memring.sessions", ("memring.cli", "memring.tools")),
    ("memring.contrib", ("memring.cli", "memring.tools")),
    ("memring.errors", ("memring.hashring", "memring.engine", "memring.client", "memring.aio")),
    # Fork safety is standard library only: every layer may use it.
    ("memring._fork", ("memring.hashring", "memring.engine", "memring.protocol",
                       "memring.client", "memring.aio", "memring.sessions", "memring.contrib",
                       "memring.cli", "memring.tools", "pymemcache")),
]


def module_name(path: Path) -> str:
    """Dotted module name of a file under the package directory."""
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_modules(source: str, module: str, *, is_package: bool = False) -> set[str]:
    """Every module ``source`` (the text of ``module``) imports, as absolute dotted names."""
    tree = ast.parse(source)
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                if node.level > 1:
                    base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base)
                target = f"{prefix}.{node.module}" if node.module else prefix
            else:
                target = node.module or ""
            found.add(target)
            # "from memring import client" imports the submodule memring.client.
            found.update(f"{target}.{alias.name}" for alias in node.names if alias.name != "*")
        elif (
            isinstance(node, ast.Call)
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
            and (
                (
                    isinstance(node.func, ast.Name)
                    and node.func.id in {"__import__", "import_module"}
                )
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")
            )
        ):
            found.add(node.args[0].value)
    return found


def is_within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def layer_files(layer: str) -> list[Path]:
    """The source files of a package or module ``layer`` (empty if it does not exist yet)."""
    rel = Path(*layer.split(".")[1:])
    directory = PACKAGE_DIR / rel
    if directory.is_dir():
        return sorted(directory.rglob("*.py"))
    single = directory.with_suffix(".py")
    return [single] if single.is_file() else []


def source_violations(
    source: str, module: str, forbidden: tuple[str, ...], *, is_package: bool = False
) -> list[str]:
    imports = imported_modules(source, module, is_package=is_package)
    return [
        f"{module} imports {name}"
        for name in sorted(imports)
        if any(is_within(name, banned) for banned in forbidden)
    ]


def violations(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    out: list[str] = []
    for path in files:
        out += source_violations(
            path.read_text(encoding="utf-8"),
            module_name(path),
            forbidden,
            is_package=path.name == "__init__.py",
        )
    return out


@pytest.mark.parametrize(("layer", "forbidden"), RULES, ids=[layer for layer, _ in RULES])
def test_lower_layers_never_import_higher_ones(layer: str, forbidden: tuple[str, ...]) -> None:
    files = layer_files(layer)
    if not files:
        pytest.skip(f"{layer} does not exist yet")
    assert violations(files, forbidden) == []


def test_hashring_layer_exists() -> None:
    # Guards the rule above against silently checking nothing.
    assert len(layer_files("memring.hashring")) >= 4


def test_nothing_imports_cli() -> None:
    files = [
        p
        for p in sorted(PACKAGE_DIR.rglob("*.py"))
        if not is_within(module_name(p), "memring.cli") and module_name(p) != "memring.__main__"
    ]
    assert files
    assert violations(files, ("memring.cli",)) == []


# -- the import collector itself -------------------------------------------------


def test_collector_sees_every_import_form() -> None:
    source = "\n".join(
        [
            "import pymemcache.client.base",
            "import os, memring.tools.local as srv",
            "from memring import client",
            "from memring.backup.store import BackupClient",
            "from . import ring",
            "from .. import cli",
            "from ..client.health import Health",
            "import importlib",
            "def f():",
            "    importlib.import_module('memring.backup')",
            "    __import__('pymemcache')",
        ]
    )
    found = imported_modules(source, "memring.hashring.node")
    for expected in [
        "pymemcache.client.base",
        "os",
        "memring.tools.local",
        "memring.client",
        "memring.backup.store",
        "memring.hashring.ring",
        "memring.cli",
        "memring.client.health",
        "memring.backup",
        "pymemcache",
    ]:
        assert expected in found, expected


def test_collector_resolves_relative_imports_in_a_package_init() -> None:
    found = imported_modules("from .ring import HashRing", "memring.hashring", is_package=True)
    assert "memring.hashring.ring" in found


def test_rule_check_flags_a_violation() -> None:
    forbidden = dict(RULES)["memring.hashring"]
    assert source_violations("from ..client import HashClient", "memring.hashring.x", forbidden)
    assert source_violations("import pymemcache.client.hash", "memring.hashring.x", forbidden)
    assert not source_violations("import memring.clientele", "memring.hashring.x", forbidden)
    assert not source_violations("from . import node", "memring.hashring.x", forbidden)
