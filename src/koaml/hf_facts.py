"""Facts about the installed Hugging Face libraries that configs are checked against when the workflow is
parsed, read from the libraries' source files without importing them (importing transformers takes
seconds and pulls in torch)."""

from __future__ import annotations

import ast
import importlib.util
from functools import cache
from pathlib import Path


@cache
def optimizer_names() -> tuple[str, ...] | None:
    """The ``optim`` values the installed transformers accepts (its ``OptimizerNames`` enum); None without
    transformers or when its source no longer has the enum where expected (then nothing is checked)."""
    spec = importlib.util.find_spec("transformers")
    if spec is None or spec.origin is None:
        return None
    source = Path(spec.origin).parent / "training_args.py"
    try:
        tree = ast.parse(source.read_text(encoding="utf-8"))
    except (OSError, SyntaxError):
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == "OptimizerNames":
            return tuple(
                stmt.value.value
                for stmt in node.body
                if isinstance(stmt, ast.Assign)
                and isinstance(stmt.value, ast.Constant)
                and isinstance(stmt.value.value, str)
            )
    return None
