"""The package layout, read from the source with ``ast`` (nothing is imported): no import cycles, the
extractors use only the feature-file side of flowgmm_cli, the library does not depend on the command
line, and no module touches pyplot or matplotlib's global backend.

Imports are collected everywhere in a module, inside functions too (a deferred import is still a
dependency); only ``if TYPE_CHECKING:`` blocks, which never run, are left out of the cycle check.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("flowgmm_cli", "extractors")

#: flowgmm_cli modules that make up the command line (and the demo, which embeds images); every
#: other module is library code.
COMMAND_LINE = {"cli", "cli_common", "cli_analysis", "cli_benchmark", "cli_options", "demo", "demo_images", "__main__"}
#: What the extractors may use of flowgmm_cli.
EXTRACTOR_API = {"flowgmm_cli.errors", "flowgmm_cli.features"}


@dataclass(frozen=True)
class Import:
    """One imported name: ``target`` is the dotted module (``a.b``) or module plus name (``a.b.c``)."""

    target: str
    line: int
    type_checking: bool


def module_files() -> dict[str, Path]:
    """Dotted module name → file, for every module of the two packages (a package is its ``__init__``)."""
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).glob("*.py")):
            found[package if path.stem == "__init__" else f"{package}.{path.stem}"] = path
    return found


MODULES = module_files()


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports_of(module: str, source: str) -> list[Import]:
    """Every import in ``source`` (module ``module``), at any depth, relative ones resolved."""
    package = module if MODULES.get(module, Path()).stem == "__init__" else module.rpartition(".")[0]
    found: list[Import] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.extend(Import(f"{base}.{alias.name}", node.lineno, guarded) for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(ast.parse(source), False)
    return found


def resolve(target: str) -> str | None:
    """The module of ours that ``target`` names (the longest known prefix), or ``None`` for other packages."""
    parts = target.split(".")
    for end in range(len(parts), 0, -1):
        name = ".".join(parts[:end])
        if name in MODULES:
            return name
    return None


def import_graph(include_type_checking: bool = False) -> dict[str, set[str]]:
    """Module → the modules of ours it imports."""
    graph = {}
    for module, path in MODULES.items():
        targets = {resolve(i.target) for i in imports_of(module, path.read_text()) if include_type_checking or not i.type_checking}
        graph[module] = {t for t in targets if t is not None and t != module}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph.get(node, ())):
            if successor not in index:
                connect(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
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

    for node in sorted(graph):
        if node not in index:
            connect(node)
    return sorted(found)


def all_imports() -> dict[str, list[Import]]:
    return {module: imports_of(module, path.read_text()) for module, path in MODULES.items()}


# ------------------------------------------------------------------------------ the tools above
def test_the_cycle_finder_finds_cycles_and_only_cycles():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"c"}, "e": {"e"}}) == [["a", "b"], ["c", "d"]]
    assert cycles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []


def test_imports_are_found_in_functions_and_relative_imports_resolved():
    source = (
        "from . import sibling, __version__\n"
        "import typer.models\n"
        "def f():\n"
        "    from .deep.er import name\n"
        "if TYPE_CHECKING:\n"
        "    from .typed import T\n"
    )
    found = {(i.target, i.type_checking) for i in imports_of("flowgmm_cli.some", source)}
    assert found == {
        ("flowgmm_cli.sibling", False), ("flowgmm_cli.__version__", False), ("typer.models", False), ("flowgmm_cli.deep.er.name", False), ("flowgmm_cli.typed.T", True),
    }  # fmt: skip


def test_the_graph_sees_the_packages_known_deferred_imports():
    """Guards against a parser that finds nothing (and so no cycle): edges that only exist inside functions."""
    graph = import_graph()
    assert len(MODULES) > 30 and "flowgmm_cli.cli" in MODULES and "extractors.tabular" in MODULES
    assert "extractors" in graph["flowgmm_cli.cli"]  # `from extractors import ...` inside embed()
    assert "flowgmm_cli.estimator" in graph["flowgmm_cli"]  # the package's lazy __getattr__
    assert "flowgmm_cli.calibration" in graph["flowgmm_cli.cli_analysis"]  # `from . import calibration` inside calibrate()
    assert "flowgmm_cli.estimator" in import_graph(include_type_checking=True)["flowgmm_cli.cli_common"]


# --------------------------------------------------------------------------------------- rules
@pytest.mark.parametrize("include_type_checking", [False, True])
def test_no_import_cycle_between_modules(include_type_checking):
    """Functions' imports count; so, in the second case, do imports made only for type checkers."""
    assert cycles(import_graph(include_type_checking)) == []


def test_extractors_use_only_the_errors_and_feature_files_of_flowgmm_cli():
    wrong = []
    for module, found in all_imports().items():
        if not module.startswith("extractors"):
            continue
        for item in found:
            if item.target == "flowgmm_cli" or item.target.startswith("flowgmm_cli."):
                if resolve(item.target) not in EXTRACTOR_API:
                    wrong.append(f"{module}:{item.line} imports {item.target}")
    assert not wrong, "\n".join(wrong)


def test_the_library_does_not_import_the_command_line_or_the_extractors():
    library = [m for m in MODULES if m.startswith("flowgmm_cli") and m.rpartition(".")[2] not in COMMAND_LINE]
    assert "flowgmm_cli.estimator" in library and "flowgmm_cli" in library and "flowgmm_cli.cli" not in library
    imports = all_imports()
    wrong = [
        f"{module}:{item.line} imports {item.target}"
        for module in library
        for item in imports[module]
        if item.target.split(".")[0] in ("typer", "click", "extractors")
    ]
    assert not wrong, "\n".join(wrong)


def _pyplot_and_use(module: str, source: str) -> list[str]:
    """Imports of matplotlib.pyplot and calls of matplotlib.use, however they are spelled."""
    found = [f"{module}:{i.line} imports {i.target}" for i in imports_of(module, source)
             if i.target == "matplotlib.pyplot" or i.target.startswith("matplotlib.pyplot.") or i.target == "matplotlib.use"]  # fmt: skip
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "use":
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id in ("matplotlib", "mpl"):
                found.append(f"{module}:{node.lineno} calls {owner.id}.use")
    return found


def test_the_pyplot_check_recognises_every_spelling():
    for source in ("import matplotlib.pyplot as plt", "from matplotlib import pyplot", "from matplotlib.pyplot import figure",
                   "def f():\n    import matplotlib\n    matplotlib.use('Agg')", "import matplotlib as mpl\nmpl.use('Agg')",
                   "from matplotlib import use"):  # fmt: skip
        assert _pyplot_and_use("m", source), source
    assert _pyplot_and_use("m", "from matplotlib.figure import Figure\nimport matplotlib\nmatplotlib.colormaps['tab10']") == []


def test_nothing_imports_pyplot_or_sets_the_backend():
    wrong = [line for module, path in MODULES.items() for line in _pyplot_and_use(module, path.read_text())]
    assert not wrong, "\n".join(wrong)
