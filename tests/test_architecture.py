"""The package's structure: the import graph has no cycles, the config layer is a leaf, parsing stays cheap."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parents[1] / "src" / "koaml"


def koaml_imports(path: Path) -> set[str]:
    """The koaml modules ``path`` imports, at the top or inside functions (a lazy import is still a dependency)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("koaml."):
            found.add(node.module.removeprefix("koaml."))
        elif isinstance(node, ast.ImportFrom) and node.module == "koaml":  # from koaml import rewards
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("koaml.") for a in node.names if a.name.startswith("koaml.")}
    return found


GRAPH = {path.stem: koaml_imports(path) for path in PACKAGE.glob("*.py") if path.stem != "__init__"}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import cycle, as the path that closes it (depth-first search)."""
    found, state = [], {}

    def visit(module: str, path: list[str]) -> None:
        state[module] = "open"
        for dep in sorted(graph.get(module, ())):
            if state.get(dep) == "open":
                found.append([*path[path.index(dep) :], dep])
            elif dep not in state:
                visit(dep, [*path, dep])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    return found


def test_the_graph_sees_lazy_imports():
    assert "configfiles" in GRAPH["config"] and "gguf" in GRAPH["config"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_import_cycles():
    assert cycles(GRAPH) == []


@pytest.mark.parametrize("module", ["configfiles", "results"])
def test_leaf_modules(module):
    """Errors and YAML loading (every config check builds on them), and reading lm-eval's results JSON (the
    comparison does, without the evaluation's ML stack), import nothing from koaml."""
    assert GRAPH[module] == set()


@pytest.mark.parametrize("module", ["koaml.config", "koaml.resources", "koaml.status"])
def test_parse_time_modules_do_not_import_torch(module):
    """The Snakefile loads these on every parse, and `koaml status` on every refresh: no ML stack."""
    code = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers', 'trl', 'lm_eval') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
