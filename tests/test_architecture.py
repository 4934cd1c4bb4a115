"""The shape of the package, measured from its source (issue #25): no import circles, no library module that
imports the CLI, no file over 300 lines, no function over 60. `python tests/test_architecture.py` prints the
figures (modules, import edges, circles, long files and functions, CLI importers) without running pytest.

What counts as an import (the graph is the one Python can actually walk at run time):
- every `import` / `from ... import` statement, at module level or inside a function, method or class, relative
  ones resolved against the importing module's package;
- `importlib.import_module("qlora_kit...")` / `import_module(...)` / `__import__(...)` with a literal string;
  with an f-string such as f"qlora_kit.cli.{name}", an edge to every module the pattern can match (or, if none
  matches, to the longest existing module its fixed prefix names);
- NOT imports under `if TYPE_CHECKING:` (they never run), and NOT names looked up from a table at run time
  (qlora_kit/__init__.py's lazy `_EXPORTS`, the recipe schema's "module:ATTR" registry strings, user plugins):
  a string that is not an argument of an import call is data, not an import.
- `from qlora_kit.a import b` is an edge to qlora_kit.a.b when that is a module or package of ours, else to
  qlora_kit.a (its __init__). The implicit import of parent packages' __init__ files is not added: every module
  would otherwise depend on qlora_kit/__init__.py, which is cheap and lazy on purpose.
- A module importing itself (an __init__ that imports its own names) is not an edge.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "qlora_kit"
MAX_FILE_LINES = 300
MAX_FUNCTION_LINES = 60
CLI = f"{PACKAGE}.cli"
# Allowed to import the CLI: `python -m qlora_kit`, the console entry (as `qlora-kit` is `qlora_kit.cli:main`).
CLI_IMPORTERS_ALLOWED = {f"{PACKAGE}.__main__"}
IMPORT_CALLS = {"import_module", "__import__"}


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, e.g. qlora_kit.benchmark.sweep
    target: str  # imported module
    where: str  # path:line
    text: str  # the import as written

    def __str__(self) -> str:
        return f"{self.where}: {self.text}  ({self.source} -> {self.target})"


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of the package (a package is named by its __init__.py)."""
    out = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _known_prefix(name: str, modules: set[str]) -> str | None:
    """The longest dotted prefix of `name` that is one of our modules (None for names outside the package)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


class _Imports(ast.NodeVisitor):
    """Collects (target module, node) for every import in one module that runs at some point."""

    def __init__(self, module: str, is_package: bool, modules: set[str]):
        self.module, self.modules, self.found = module, modules, []
        self.package = module if is_package else module.rpartition(".")[0]

    def visit_If(self, node: ast.If) -> None:
        if _is_type_checking(node.test):  # never runs: only its else branch is visited
            for child in node.orelse:
                self.visit(child)
        else:
            self.generic_visit(node)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self._add(_known_prefix(alias.name, self.modules), node)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = node.module or ""
        if node.level:
            anchor = self.package.split(".")[: len(self.package.split(".")) - (node.level - 1)]
            base = ".".join(anchor + ([base] if base else []))
        for alias in node.names:
            candidate = f"{base}.{alias.name}"
            self._add(candidate if candidate in self.modules else _known_prefix(base, self.modules), node)

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name in IMPORT_CALLS and node.args:
            for target in self._call_targets(node.args[0]):
                self._add(target, node)
        self.generic_visit(node)

    def _call_targets(self, arg: ast.expr) -> list[str | None]:
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            return [_known_prefix(arg.value, self.modules)]
        if not isinstance(arg, ast.JoinedStr):
            return []
        pattern = "".join(re.escape(v.value) if isinstance(v, ast.Constant) else r"[\w.]+" for v in arg.values)
        matches = sorted(m for m in self.modules if re.fullmatch(pattern, m))
        if matches:
            return matches
        fixed = arg.values[0].value if arg.values and isinstance(arg.values[0], ast.Constant) else ""
        return [_known_prefix(fixed.rstrip("."), self.modules)]

    def _add(self, target: str | None, node: ast.AST) -> None:
        if target is not None and target != self.module:
            self.found.append((target, node))


def import_edges(files: dict[str, Path] | None = None, root: Path = ROOT) -> list[Edge]:
    files = module_files(root) if files is None else files
    modules = set(files)
    edges = []
    for module, path in files.items():
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        collector = _Imports(module, path.name == "__init__.py", modules)
        collector.visit(ast.parse(source, filename=str(path)))
        rel = path.relative_to(root)
        for target, node in collector.found:
            edges.append(Edge(module, target, f"{rel}:{node.lineno}", lines[node.lineno - 1].strip()))
    return list(dict.fromkeys(edges))  # one edge per statement and target (`from m import a, b` names m once)


def strongly_connected(nodes: set[str], edges: list[Edge]) -> list[list[str]]:
    """Tarjan's algorithm (iterative); returns the components of more than one module, i.e. the import circles."""
    graph: dict[str, list[str]] = {n: [] for n in nodes}
    for e in edges:
        graph[e.source].append(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack, on_stack, circles = [], set(), []
    for root in sorted(nodes):
        if root in index:
            continue
        work = [(root, iter(sorted(set(graph[root]))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    component = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        component.append(member)
                        if member == node:
                            break
                    if len(component) > 1:
                        circles.append(sorted(component))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(sorted(set(graph[child])))))
            elif child in on_stack:
                low[node] = min(low[node], index[child])
    return sorted(circles)


def import_circles(edges: list[Edge] | None = None) -> list[tuple[list[str], list[Edge]]]:
    """Each circle's modules, with the import lines that tie them together."""
    edges = import_edges() if edges is None else edges
    out = []
    for members in strongly_connected({e.source for e in edges} | {e.target for e in edges}, edges):
        inside = set(members)
        out.append((members, [e for e in edges if e.source in inside and e.target in inside]))
    return out


def cli_importers(edges: list[Edge] | None = None) -> list[Edge]:
    edges = import_edges() if edges is None else edges
    return [e for e in edges if (e.target == CLI or e.target.startswith(CLI + "."))
            and not (e.source == CLI or e.source.startswith(CLI + ".")) and e.source not in CLI_IMPORTERS_ALLOWED]


def long_files(root: Path = ROOT) -> list[tuple[str, int]]:
    out = []
    for path in module_files(root).values():
        count = len(path.read_text(encoding="utf-8").splitlines())
        if count > MAX_FILE_LINES:
            out.append((str(path.relative_to(root)), count))
    return sorted(out, key=lambda item: -item[1])


def long_functions(root: Path = ROOT) -> list[tuple[str, str, int]]:
    """(path:line, qualified name, lines) of every function or method, nested ones included, over the limit."""
    out = []
    for path in module_files(root).values():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, qualname in _functions(tree, ""):
            length = node.end_lineno - node.lineno + 1
            if length > MAX_FUNCTION_LINES:
                out.append((f"{path.relative_to(root)}:{node.lineno}", qualname, length))
    return sorted(out, key=lambda item: -item[2])


def _functions(node: ast.AST, prefix: str):
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            name = f"{prefix}{child.name}"
            if not isinstance(child, ast.ClassDef):
                yield child, name
            yield from _functions(child, name + ".")
        else:
            yield from _functions(child, prefix)


def shortest_loop(members: list[str], ties: list[Edge]) -> list[str]:
    """One concrete loop inside a circle, shortest first (breadth-first from the first member back to it)."""
    start, paths = members[0], {members[0]: [members[0]]}
    queue = [start]
    while queue:
        node = queue.pop(0)
        for e in ties:
            if e.source != node:
                continue
            if e.target == start:
                return paths[node] + [start]
            if e.target not in paths:
                paths[e.target] = paths[node] + [e.target]
                queue.append(e.target)
    return members


def _describe_circles(circles) -> str:
    parts = []
    for number, (members, ties) in enumerate(circles, 1):
        parts.append(f"circle {number} ({len(members)} modules: {', '.join(members)})\n"
                     f"  e.g. {' -> '.join(shortest_loop(members, ties))}\n" + "\n".join(f"    {e}" for e in ties))
    return "\n".join(parts)


def test_no_import_circles():
    circles = import_circles()
    assert not circles, (f"{len(circles)} import circle(s); move the shared piece so that only one direction "
                         f"remains:\n{_describe_circles(circles)}")


def test_no_library_module_imports_the_cli():
    offenders = cli_importers()
    assert not offenders, ("the CLI is an adapter over the library: these modules outside qlora_kit/cli/ import "
                           "it (move what they need below the CLI):\n" + "\n".join(f"  {e}" for e in offenders))


def test_no_file_over_300_lines():
    offenders = long_files()
    assert not offenders, f"files over {MAX_FILE_LINES} lines:\n" + "\n".join(
        f"  {path}: {count} lines" for path, count in offenders)


def test_no_function_over_60_lines():
    offenders = long_functions()
    assert not offenders, f"functions over {MAX_FUNCTION_LINES} lines:\n" + "\n".join(
        f"  {where} {name}: {count} lines" for where, name, count in offenders)


def test_the_measure_sees_every_kind_of_import(tmp_path):
    """The checks above are only as good as the graph: a function-level import, a relative one, an f-string
    import_module, __import__ and a name import all make edges; TYPE_CHECKING imports and self-imports do not."""
    for name, text in {
        "__init__.py": "from qlora_kit import a\n",
        "__main__.py": "from qlora_kit.cli import main\n",
        "a.py": "def f():\n    from .b import x\n",
        "b.py": "import importlib\ndef g(n):\n    importlib.import_module(f'qlora_kit.cli.{n}')\n",
        "cli/__init__.py": "from qlora_kit.cli import main\nmain = 1\n",
        "cli/one.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import qlora_kit.a\n",
        "cli/two.py": "__import__('qlora_kit.b', fromlist=['g'])\n",
    }.items():
        (tmp_path / PACKAGE / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / PACKAGE / name).write_text(text)
    files = module_files(tmp_path)
    edges = import_edges(files, tmp_path)
    assert {(e.source, e.target) for e in edges} == {
        ("qlora_kit", "qlora_kit.a"), ("qlora_kit.a", "qlora_kit.b"), ("qlora_kit.b", "qlora_kit.cli.one"),
        ("qlora_kit.b", "qlora_kit.cli.two"), ("qlora_kit.cli.two", "qlora_kit.b"),
        ("qlora_kit.__main__", "qlora_kit.cli")}
    assert {e.source for e in cli_importers(edges)} == {"qlora_kit.b"}  # __main__ is the console entry
    assert strongly_connected(set(files), edges) == [["qlora_kit.b", "qlora_kit.cli.two"]]
    assert [e.where for e in edges if e.source == "qlora_kit.a"] == ["qlora_kit/a.py:2"]


def main(root: Path = ROOT) -> None:
    """The figures, for this checkout or for the tree at `root` (e.g. an unpacked `git archive HEAD`)."""
    files = module_files(root)
    edges = import_edges(files, root)
    pairs = {(e.source, e.target) for e in edges}
    circles = import_circles(edges)
    print(f"modules: {len(files)}")
    print(f"import edges: {len(pairs)} module pairs ({len(edges)} import statements/calls)")
    print(f"import circles: {len(circles)}")
    if circles:
        print(_describe_circles(circles))
    files_over = long_files(root)
    print(f"files over {MAX_FILE_LINES} lines: {len(files_over)}")
    for path, count in files_over:
        print(f"  {path}: {count}")
    functions_over = long_functions(root)
    print(f"functions over {MAX_FUNCTION_LINES} lines: {len(functions_over)}")
    for where, name, count in functions_over:
        print(f"  {where} {name}: {count}")
    importers = cli_importers(edges)
    print(f"modules outside cli/ importing cli: {len({e.source for e in importers})} ({len(importers)} imports)")
    for e in importers:
        print(f"  {e}")


if __name__ == "__main__":
    import sys

    main(Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT)
