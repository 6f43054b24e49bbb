"""Shared fixtures: a scratch copy of the workflow, and the tiny demo model built once per session."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
WORKFLOW_FILES = ("Snakefile", "workflow", "config", "resources")

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ["KOAML_CACHE_DIR"] = tempfile.mkdtemp(prefix="koaml-cache-")  # keep the user's cache clean


def copy_workflow(dest: Path) -> Path:
    """Copy the workflow (not its results) into ``dest`` so a test can run and edit it freely."""
    for name in WORKFLOW_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(src, dest / name)
    return dest


@pytest.fixture
def workflow_dir(tmp_path: Path) -> Path:
    return copy_workflow(tmp_path)


def snakemake(workdir: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the venv's snakemake in ``workdir``; returns the finished process (stdout and stderr merged)."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", *args],
        cwd=workdir,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-6000:]}")
    return proc


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """The demo's tiny base model, built once (takes a few seconds)."""
    from koaml.config import load_yaml
    from koaml.tinymodel import build_tiny_model

    out = tmp_path_factory.mktemp("tiny") / "model"
    cwd = os.getcwd()
    os.chdir(REPO)  # the spec names bundled files relative to the repository
    try:
        build_tiny_model(load_yaml("resources/demo/tiny_model.yaml"), out)
    finally:
        os.chdir(cwd)
    return out


def planned_jobs(dry_run_output: str) -> list[tuple[str, str]]:
    """(rule, wildcards) of every job a ``snakemake -n`` run would execute."""
    jobs, rule = [], None
    for line in dry_run_output.splitlines():
        stripped = line.strip()
        if stripped.startswith(("rule ", "localrule ")) and stripped.endswith(":"):
            if rule is not None:
                jobs.append((rule, ""))
            rule = stripped.split()[1].rstrip(":")
        elif stripped.startswith("wildcards:") and rule is not None:
            jobs.append((rule, stripped.removeprefix("wildcards:").strip()))
            rule = None
    if rule is not None:
        jobs.append((rule, ""))
    return sorted(jobs)
