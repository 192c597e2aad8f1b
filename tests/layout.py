"""The package layout as a page: ``python -m tests.layout > docs/layout.md``.

Each subpackage and module of ``src/postdate`` with the first sentence of its docstring,
so the page cannot drift from the tree (tests/unit/test_layout.py compares them). Also
the module import graph, for the no-import-circle check.
"""

from __future__ import annotations

import ast
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "postdate"
HEADER = """# Layout

Generated from the tree by `python -m tests.layout > docs/layout.md` (a unit test fails
when this page and the tree differ). The public surface is `postdate` itself (every name
in `postdate.__all__`), `postdate.outbox` and `postdate.schedule`; modules whose names
start with `_` are internal.
"""


def module_name(path: Path) -> str:
    """The dotted name of a module file under ``src``."""
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def summary(path: Path) -> str:
    """The first sentence of the module's docstring, on one line."""
    doc = ast.get_docstring(ast.parse(path.read_text())) or ""
    text = " ".join(doc.split())
    end = text.find(". ")
    return text if end < 0 else text[: end + 1]


def render() -> str:
    """The layout page."""
    lines = [HEADER]
    for package in sorted(p for p in PACKAGE.rglob("__init__.py") if "__pycache__" not in p.parts):
        lines.append(f"## `{module_name(package)}`\n\n{summary(package)}\n")
        for module in sorted(package.parent.glob("*.py")):
            if module.name == "__init__.py":
                continue
            lines.append(f"- `{module.name}`: {summary(module)}")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def import_graph() -> dict[str, set[str]]:
    """Which postdate modules each postdate module imports when it is imported (imports
    inside functions and under ``if TYPE_CHECKING:`` left out)."""
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in paths.items():
        graph[name] = set()
        for node in _top_level(ast.parse(path.read_text()).body):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                # `from package import submodule` needs the submodule, not the package's
                # __init__ (which Python has begun importing already)
                targets = [
                    f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in paths else node.module
                    for a in node.names
                ]
            elif isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in paths}
            graph[name] |= {p for t in targets for p in _entered(name, t) if p in paths}
    return {name: targets - {name} for name, targets in graph.items()}


def _entered(importer: str, target: str) -> list[str]:
    """The packages whose ``__init__`` runs first when ``importer`` imports ``target``:
    its ancestors that do not contain ``importer`` (those have begun already)."""
    parts = target.split(".")
    ancestors = [".".join(parts[:n]) for n in range(1, len(parts))]
    return [a for a in ancestors if not importer.startswith(a + ".") and importer != a]


def _top_level(body: list[ast.stmt]) -> list[ast.stmt]:
    nodes: list[ast.stmt] = []
    for node in body:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            continue
        if isinstance(node, ast.If | ast.Try):
            nodes += _top_level(node.body)
            continue
        nodes.append(node)
    return nodes


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Import circles in ``graph`` (each as the path that closes it)."""
    found: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                found.append([*path[path.index(target) :], target])
            elif target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    return found


if __name__ == "__main__":
    print(render(), end="")
