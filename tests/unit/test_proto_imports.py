"""proto/ stays sans-IO: no module under src/resistance/proto imports I/O machinery.

The check reads the source rather than importing it, so it also sees imports
hidden in functions, under ``if TYPE_CHECKING`` or behind ``__import__``.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PROTO = Path(__file__).resolve().parents[2] / "src" / "resistance" / "proto"
FORBIDDEN = frozenset({"asyncio", "socket", "selectors", "ssl", "threading"})
SOURCES = sorted(PROTO.rglob("*.py"))


def forbidden_imports(source: str, filename: str = "<source>") -> list[str]:
    """Every forbidden module that ``source`` imports, with its line number."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            # ``from . import x`` has no module; relative imports stay inside the package.
            names = [node.module] if node.module and not node.level else []
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and getattr(node.func, "id", getattr(node.func, "attr", None))
            in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            names = [node.args[0].value]
        else:
            continue
        found += [
            f"{name} (line {node.lineno})" for name in names if name.partition(".")[0] in FORBIDDEN
        ]
    return found


def test_proto_has_sources() -> None:
    assert PROTO.is_dir()
    assert PROTO / "socks5.py" in SOURCES


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(PROTO)))
def test_proto_module_is_sans_io(path: Path) -> None:
    assert forbidden_imports(path.read_text(encoding="utf-8"), str(path)) == []


@pytest.mark.parametrize(
    "source",
    [
        "import asyncio",
        "import os, socket",
        "import selectors as sel",
        "import asyncio.streams",
        "from ssl import SSLContext",
        "from threading import Lock",
        "from asyncio.events import AbstractEventLoop",
        "def f():\n    import socket",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import asyncio",
        "__import__('socket')",
        "import importlib\nimportlib.import_module('asyncio')",
    ],
)
def test_check_catches_forbidden_imports(source: str) -> None:
    assert forbidden_imports(source) != []


@pytest.mark.parametrize(
    "source",
    [
        "import ipaddress, struct",
        "from dataclasses import dataclass",
        "import socketserver_lookalike",
        "from . import socket",
        "from resistance.errors import ProtocolError",
    ],
)
def test_check_allows_pure_imports(source: str) -> None:
    assert forbidden_imports(source) == []
