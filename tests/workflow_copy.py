"""A scratch copy of the workflow, for tests and benchmarks that run or edit it (no side effects on import)."""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "resources", "profiles")


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (not its results) into ``dest`` so it can be run and edited freely."""
    dest.mkdir(parents=True, exist_ok=True)
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest
