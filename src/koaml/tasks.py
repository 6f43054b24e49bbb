"""Checks of benchmark tasks against lm-eval's own task index, before any job is submitted.

Building lm-eval's index takes seconds, and the Snakefile is parsed on every run, so the index
(name -> type and YAML file) is cached per lm-eval version, and per custom task folder and its
files' modification times. A cache hit imports nothing from lm-eval. No network is needed.
"""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import json
import logging
import os
from functools import cache
from pathlib import Path

import yaml

from koaml.configfiles import ConfigError
from koaml.io import write_json

log = logging.getLogger(__name__)


def cache_dir() -> Path:
    root = (
        os.environ.get("KOAML_CACHE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "koaml"
    )
    return Path(root)


def _build_index(include_path: str | None) -> dict[str, dict]:
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=include_path, include_defaults=include_path is None)
    return {
        name: {
            "kind": entry.kind.name.lower(),
            "yaml_path": str(entry.yaml_path or ""),
            "unsafe_code": bool((entry.cfg or {}).get("unsafe_code")),
        }
        for name, entry in manager.task_index.items()
    }


def task_index(include_path: str | None = None) -> dict[str, dict]:
    """lm-eval's task index: the built-in tasks, or (with ``include_path``) the tasks of a custom folder."""
    version = importlib.metadata.version("lm_eval")
    if include_path is None:
        key = f"lm_eval-{version}"
    else:
        folder = Path(include_path).resolve()
        stamp = sorted((str(p), p.stat().st_mtime_ns) for p in folder.rglob("*.yaml"))
        key = f"custom-{hashlib.sha256(json.dumps([version, str(folder), stamp]).encode()).hexdigest()[:16]}"
    return _index(cache_dir() / f"{key}.json", include_path)


@cache
def _index(path: Path, include_path: str | None) -> dict[str, dict]:
    """The index cached in ``path`` (read once per process: every benchmark of an experiment asks)."""
    if path.is_file():
        return json.loads(path.read_text())
    index = _build_index(include_path)
    write_json(path, index)
    return index


class _TaskLoader(yaml.SafeLoader):
    """Reads lm-eval task YAML, whose ``!function`` tags name Python code: kept as strings, never run."""


_TaskLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def missing_data_files(entry: dict) -> list[str]:
    """The local data files a custom task reads (``dataset_kwargs.data_files``) that do not exist."""
    if entry["kind"] != "task" or not entry["yaml_path"]:
        return []
    try:
        task = yaml.load(Path(entry["yaml_path"]).read_text(encoding="utf-8"), Loader=_TaskLoader) or {}
    except (OSError, yaml.YAMLError):
        return []  # lm-eval reports what it cannot read
    files = (task.get("dataset_kwargs") or {}).get("data_files") or []
    if isinstance(files, dict):
        files = list(files.values())
    names = [
        f
        for item in ([files] if isinstance(files, str) else files)
        for f in ([item] if isinstance(item, str) else item)
    ]
    return [f for f in names if "://" not in f and not any(ch in f for ch in "*?[") and not Path(f).exists()]


def executes_code(entry: dict) -> bool:
    """True when a task runs model-written code (``unsafe_code: true``); for a group or tag, when
    any task in its folder does."""
    if entry["unsafe_code"] or entry["kind"] == "task" or not entry["yaml_path"]:
        return entry["unsafe_code"]
    folder = Path(entry["yaml_path"]).parent
    return any("unsafe_code: true" in p.read_text(errors="ignore") for p in folder.rglob("*yaml*"))


def suggest(name: str, known: list[str], n: int = 3) -> list[str]:
    """Close task names, from ``name``'s own family first (the names that start with its first ``_`` part:
    ``medqa`` -> ``medqa_4options``, ``mmlu_computer_science`` -> ``mmlu_college_computer_science``, not ``kmmlu``)."""
    family = name.split("_", 1)[0]
    relatives = [k for k in known if k == family or k.startswith(family + "_")]
    if relatives:
        ranked = sorted(relatives, key=lambda k: -difflib.SequenceMatcher(None, name, k).ratio())
        return ranked[:n]
    return difflib.get_close_matches(name, known, n=n)


def check_benchmark(path: str, config: dict) -> None:
    """Raise ConfigError for unknown task names and for code-executing tasks without opt-in."""
    try:
        index = dict(task_index())
        if config.get("include_path"):
            if not Path(config["include_path"]).is_dir():
                raise ConfigError(f"{path}: include_path: {config['include_path']}: folder not found")
            index.update(task_index(config["include_path"]))
    except importlib.metadata.PackageNotFoundError:
        log.warning("lm-eval is not installed here: task names in %s are not checked", path)
        return
    for i, task in enumerate(config["tasks"]):
        name = task["task"]
        if name not in index:
            hint = suggest(name, list(index))
            suggestion = f"; did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
            raise ConfigError(f"{path}: tasks.{i}.task: unknown lm-eval task '{name}'{suggestion}")
        if config.get("include_path") and (missing := missing_data_files(index[name])):
            raise ConfigError(
                f"{path}: tasks.{i}.task: '{name}' reads {', '.join(missing)}: file not found "
                f"(dataset_kwargs.data_files in {index[name]['yaml_path']}; relative paths start at the workflow folder)"
            )
        if executes_code(index[name]) and not config.get("allow_code_execution"):
            raise ConfigError(
                f"{path}: tasks.{i}.task: '{name}' executes code written by the model; "
                "set allow_code_execution: true in this benchmark file to run it (ideally in a sandbox)"
            )
