"""What `resist` loads, and that the package has no import circle (issue 16).

Two guards:

* Heavy libraries stay out of the command line's start: ``import
  resistance.cli``, ``resist --help``, ``resist node --help`` and a real
  ``resist node`` up to its banner load none of bdkpython, httpx, SQLAlchemy or
  FastAPI (the registry's and the grants' libraries), each checked in a fresh
  interpreter.
* No two modules of the package import each other, directly or around a loop.
  The graph has an edge for every ``import`` in a module: at module level,
  under ``if TYPE_CHECKING:`` and inside functions alike.  A circle that only
  type checking or a deferred import closes is still one design: the two
  modules cannot be understood, tested or moved apart (the circles issue 16
  names were of those kinds).  The cure is a module below both (as
  ``client/host.py`` and ``node/run.py`` are), not a deferred import.
"""

from __future__ import annotations

import ast
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import resistance

PACKAGE_DIR = Path(resistance.__file__).resolve().parent

HEAVY = ("bdkpython", "httpx", "sqlalchemy", "fastapi")
"""The grants' Bitcoin library and the registry's HTTP and database stack."""

NODE_START_DEFERRED = (*HEAVY, "segno", "prometheus_client", "cryptography.x509")
"""Also kept out of a plain node's start: the QR code (only --qr), Prometheus
(only --metrics) and X.509 (only a TLS listener) each cost it 15-20 ms."""

# Circles that another change removes; each entry must say which.  The test
# fails on any other circle, and on an entry that no longer occurs (delete it).
KNOWN_CIRCLES: dict[frozenset[str], str] = {
    # None today. An entry names a circle being cut and the issue that cuts it.
}


# --- what starting `resist` loads ------------------------------------------------------


def _loaded_after(code: str) -> set[str]:
    """Module names in ``sys.modules`` after running ``code`` in a fresh interpreter."""
    script = code + "\nimport sys\nprint('\\n'.join(sys.modules))\n"
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    assert done.returncode == 0, done.stderr
    return set(done.stdout.split())


def _heavy_in(modules: Iterable[str], heavy: Iterable[str]) -> list[str]:
    names = set(modules)
    return sorted(
        name for name in names for top in heavy if name == top or name.startswith(top + ".")
    )


CLI_STARTS = {
    "import resistance.cli": "import resistance.cli",
    "resist --help": textwrap.dedent(
        """
        import contextlib, io
        from resistance.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            main(["--help"], standalone_mode=False)
        """
    ),
    "resist node --help": textwrap.dedent(
        """
        import contextlib, io
        from resistance.cli import main
        with contextlib.redirect_stdout(io.StringIO()):
            main(["node", "--help"], standalone_mode=False)
        """
    ),
}


@pytest.mark.parametrize("code", CLI_STARTS.values(), ids=list(CLI_STARTS))
def test_the_command_line_starts_without_heavy_libraries(code: str) -> None:
    assert _heavy_in(_loaded_after(code), HEAVY) == []


def test_the_check_sees_a_heavy_library() -> None:
    """The subprocess check above would see one if it were loaded."""
    loaded = _loaded_after("import resistance.cli\nimport httpx")
    assert "httpx" in _heavy_in(loaded, HEAVY)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_a_node_starts_serving_without_heavy_libraries(tmp_path: Path) -> None:
    """A real `resist node`, up to accepting a connection: ``-X importtime`` names
    every module it imported on the way (it serves until stopped, so its
    sys.modules cannot be printed at exit)."""
    imports = tmp_path / "imports.txt"
    port = _free_port()
    argv = [sys.executable, "-X", "importtime", "-m", "resistance", "node"]
    argv += ["--listen", f"127.0.0.1:{port}", "--state-dir", str(tmp_path / "state")]
    with imports.open("w") as stderr:
        node = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=stderr
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert node.poll() is None, imports.read_text()[-2000:]
            try:
                socket.create_connection(("127.0.0.1", port), timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "the node did not listen within 30 s"
                time.sleep(0.02)
    finally:
        node.send_signal(signal.SIGTERM)
        try:
            node.wait(15)
        except subprocess.TimeoutExpired:
            node.kill()
            node.wait(5)
    imported = [
        line.rpartition("|")[2].strip()
        for line in imports.read_text().splitlines()
        if line.startswith("import time:") and "|" in line
    ]
    assert "resistance.node.service" in imported  # the log is the node's import log
    assert _heavy_in(imported, NODE_START_DEFERRED) == []


# --- import circles ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Import:
    source: str
    target: str
    where: str
    """``path:line (kind)``, kind one of module, TYPE_CHECKING, function."""


def _module_files(package_dir: Path) -> dict[str, tuple[Path, bool]]:
    """Module name → (file, is a package's __init__)."""
    found: dict[str, tuple[Path, bool]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        found[".".join(parts)] = (path, is_package)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports_in(tree: ast.Module) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
    """Every import statement with its kind: module, TYPE_CHECKING or function."""

    def visit(node: ast.AST, kind: str) -> Iterator[tuple[ast.Import | ast.ImportFrom, str]]:
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, kind
            return
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            kind = "function"
        elif isinstance(node, ast.If) and _is_type_checking(node.test) and kind == "module":
            for statement in node.body:
                yield from visit(statement, "TYPE_CHECKING")
            for statement in node.orelse:
                yield from visit(statement, kind)
            return
        for child in ast.iter_child_nodes(node):
            yield from visit(child, kind)

    yield from visit(tree, "module")


def import_graph(package_dir: Path) -> list[Import]:
    """Every import of one of the package's modules by another, with where it is."""
    modules = _module_files(package_dir)
    edges: list[Import] = []
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        for statement, kind in _imports_in(tree):
            if isinstance(statement, ast.Import):
                wanted = [alias.name for alias in statement.names]
            else:
                if statement.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[: len(base) - (statement.level - 1)]
                    module = ".".join([*base, *([statement.module] if statement.module else [])])
                else:
                    module = statement.module or ""
                # `from package import module` imports the package and that module;
                # `from module import name` the module (the longest known name wins).
                # Parent packages that Python runs on the way are not edges.
                wanted = [f"{module}.{alias.name}" for alias in statement.names] + [module]
            where = f"{path.relative_to(package_dir.parent)}:{statement.lineno} ({kind})"
            targets = set()
            for target in wanted:
                while target and target not in modules:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    targets.add(target)
            edges += [Import(name, target, where) for target in sorted(targets)]
    return edges


def strongly_connected(nodes: Iterable[str], edges: Iterable[Import]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (iterative)."""
    successors: dict[str, list[str]] = {node: [] for node in nodes}
    for edge in edges:
        successors.setdefault(edge.source, []).append(edge.target)
        successors.setdefault(edge.target, [])
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in successors:
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(successors[root]))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(successors[child])))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def _describe(component: list[str], edges: list[Import]) -> str:
    inside = set(component)
    lines = [" <-> ".join(component)]
    lines += [
        f"    {e.source} -> {e.target} at {e.where}"
        for e in edges
        if e.source in inside and e.target in inside
    ]
    return "\n".join(lines)


def _circles(package_dir: Path) -> tuple[list[list[str]], list[Import]]:
    edges = import_graph(package_dir)
    return strongly_connected(_module_files(package_dir), edges), edges


def test_the_package_has_no_import_circle() -> None:
    circles, edges = _circles(PACKAGE_DIR)
    unknown = [c for c in circles if not any(set(c) <= known for known in KNOWN_CIRCLES)]
    assert not unknown, "import circles in the package (cut each with a module below both):\n" + (
        "\n".join(_describe(c, edges) for c in unknown)
    )


def test_every_known_circle_still_exists() -> None:
    """An allow-list entry for a circle that is gone would hide the next one there."""
    circles, _ = _circles(PACKAGE_DIR)
    stale = [
        f"{sorted(known)} ({why})"
        for known, why in KNOWN_CIRCLES.items()
        if not any(set(c) <= known for c in circles)
    ]
    assert not stale, f"no longer circles: delete from KNOWN_CIRCLES: {stale}"


def _package(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / "pkg" / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "pkg"


def test_the_graph_sees_every_kind_of_import(tmp_path: Path) -> None:
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "a.py": "from pkg import b\n",
            "b.py": """
                from typing import TYPE_CHECKING
                if TYPE_CHECKING:
                    from pkg.c import C
            """,
            "c.py": """
                def late():
                    from . import a
            """,
            "sub/__init__.py": "",
            "sub/d.py": "from ..e import thing\nimport pkg.sub\n",
            "e.py": "import os\nthing = 1\n",
        },
    )
    edges = {(e.source, e.target, e.where.rpartition("(")[2]) for e in import_graph(package)}
    assert edges == {
        ("pkg.a", "pkg.b", "module)"),
        ("pkg.a", "pkg", "module)"),
        ("pkg.b", "pkg.c", "TYPE_CHECKING)"),
        ("pkg.c", "pkg.a", "function)"),
        ("pkg.c", "pkg", "function)"),
        ("pkg.sub.d", "pkg.e", "module)"),
        ("pkg.sub.d", "pkg.sub", "module)"),
    }
    circles, _ = _circles(package)
    assert circles == [["pkg.a", "pkg.b", "pkg.c"]]


def test_no_circle_without_a_loop(tmp_path: Path) -> None:
    package = _package(
        tmp_path,
        {
            "__init__.py": "",
            "low.py": "import json\n",
            "mid.py": "from pkg.low import x\n",
            "top.py": "from pkg import low, mid\n",
            "self.py": "import pkg.self\n",
        },
    )
    circles, edges = _circles(package)
    assert circles == []
    assert {(e.source, e.target) for e in edges} == {
        ("pkg.mid", "pkg.low"),
        ("pkg.top", "pkg"),
        ("pkg.top", "pkg.low"),
        ("pkg.top", "pkg.mid"),
    }


def test_tarjan_finds_separate_and_nested_loops() -> None:
    def edges(*pairs: str) -> list[Import]:
        return [Import(p[0], p[1], "") for p in pairs]

    found = strongly_connected("abcdefg", edges("ab", "ba", "bc", "cd", "de", "ec", "fg"))
    assert sorted(found) == [["a", "b"], ["c", "d", "e"]]
    assert strongly_connected("abc", edges("ab", "bc", "ac")) == []
