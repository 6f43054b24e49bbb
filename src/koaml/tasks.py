"""Checks of benchmark tasks against lm-eval's own task index and task configs, before any job is submitted.

Building lm-eval's index takes seconds, and the Snakefile is parsed on every run, so the index
(name -> type and YAML file) is cached per lm-eval version, and per custom task folder and its
files' modification times. A cache hit imports nothing from lm-eval. No network is needed.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.metadata
import json
import logging
import os
from functools import cache
from pathlib import Path

import yaml

from koaml.configfiles import ConfigError, warn
from koaml.io import write_json

log = logging.getLogger(__name__)


INDEX_FORMAT = 2  # bumped when the cached index gains fields (2: tags' members)


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
            "members": sorted(entry.tags or []) if entry.kind.name.lower() == "tag" else [],
        }
        for name, entry in manager.task_index.items()
    }


@cache
def installed_version(package: str) -> str:
    """The installed version of ``package``, read once per process (the Snakefile asks for every benchmark)."""
    return importlib.metadata.version(package)


def task_index(include_path: str | None = None) -> dict[str, dict]:
    """lm-eval's task index: the built-in tasks, or (with ``include_path``) the tasks of a custom folder."""
    version = f"{installed_version('lm_eval')}-{INDEX_FORMAT}"
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


def _task_yaml(path: Path) -> dict:
    """A task file's YAML (``!function`` tags as None), parsed once per process and version of the file: every
    benchmark of an experiment may run the same tasks."""
    return copy.deepcopy(_parsed_task_yaml(path, path.stat().st_mtime_ns))


@cache
def _parsed_task_yaml(path: Path, _mtime_ns: int) -> dict:
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_TaskLoader) or {}


def missing_data_files(entry: dict) -> list[str]:
    """The local data files a custom task reads (``dataset_kwargs.data_files``) that do not exist."""
    if entry["kind"] != "task" or not entry["yaml_path"]:
        return []
    try:
        task = _task_yaml(Path(entry["yaml_path"]))
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


def _unreadable_yaml(folder: str) -> list[str]:
    """``file:line: problem`` for each YAML file under ``folder`` that does not parse (lm-eval skips them)."""
    found = []
    for yaml_path in sorted(Path(folder).rglob("*.yaml")):
        try:
            yaml.load(yaml_path.read_text(encoding="utf-8"), Loader=_TaskLoader)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or exc.context_mark
            found.append(f"{yaml_path}:{mark.line + 1}: {exc.problem or exc.context}")
        except (yaml.YAMLError, UnicodeDecodeError) as exc:
            found.append(f"{yaml_path}: {exc}")
    return found


def suggest(name: str, known: list[str], n: int = 3) -> list[str]:
    """Close task names, from ``name``'s own family first (the names that start with its first ``_`` part:
    ``medqa`` -> ``medqa_4options``, ``mmlu_computer_science`` -> ``mmlu_college_computer_science``, not ``kmmlu``)."""
    family = name.split("_", 1)[0]
    relatives = [k for k in known if k == family or k.startswith(family + "_")]
    if relatives:
        ranked = sorted(relatives, key=lambda k: -difflib.SequenceMatcher(None, name, k).ratio())
        return ranked[:n]
    return difflib.get_close_matches(name, known, n=n)


def benchmark_index(path: str, config: dict) -> dict[str, dict] | None:
    """lm-eval's task index as a benchmark sees it: the built-in tasks and those of its ``include_path``; None
    where lm-eval is not installed (warned)."""
    try:
        index = dict(task_index())
        if config.get("include_path"):
            if not Path(config["include_path"]).is_dir():
                raise ConfigError(f"{path}: include_path: {config['include_path']}: folder not found")
            index.update(task_index(config["include_path"]))
    except importlib.metadata.PackageNotFoundError:
        log.warning("lm-eval is not installed here: task names in %s are not checked", path)
        return None
    return index


def check_benchmark(path: str, config: dict) -> None:
    """Raise ConfigError for unknown task names and for code-executing tasks without opt-in."""
    index = benchmark_index(path, config)
    if index is None:
        return
    for i, task in enumerate(config["tasks"]):
        name = task["task"]
        if name not in index:
            broken = _unreadable_yaml(config["include_path"]) if config.get("include_path") else []
            hint = suggest(name, list(index))
            suggestion = f"; {'or ' if broken else ''}did you mean {', '.join(repr(h) for h in hint)}?" if hint else ""
            if broken:  # the likelier cause first
                suggestion = (
                    f"; lm-eval skipped task files of include_path that are not valid YAML: {'; '.join(broken)}"
                    + suggestion
                )
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
    check_protocol(path, config, index)


# lm-eval's HF model generates up to this many tokens when a task's generation_kwargs set no max_gen_toks.
LM_EVAL_MAX_GEN_TOKS = 256


def task_config(yaml_path: str | Path, _seen: frozenset = frozenset()) -> dict:
    """A task's YAML with its ``include`` files merged in (the including file's keys win), as lm-eval reads it;
    ``!function`` tags are kept as None, never run."""
    path = Path(yaml_path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: include cycle")
    config = _task_yaml(path)
    includes = config.pop("include", None)
    if not includes:
        return config
    merged: dict = {}
    for include in includes if isinstance(includes, list) else [includes]:
        included = task_config(path.parent / include, _seen | {path})
        included.pop("task_list", None)
        merged.update(included)
    return {**merged, **config}


@cache
def metric_registry() -> dict:
    """lm-eval's built-in metric facts: the metrics of each output type when a task lists none (``defaults``) and
    whether higher is better for each registered metric; read from lm-eval once per version, then cached."""
    path = cache_dir() / f"lm_eval-{installed_version('lm_eval')}-metrics.json"
    if path.is_file():
        return json.loads(path.read_text())
    import lm_eval.api.metrics  # noqa: F401  (registers the built-in metrics)
    from lm_eval.api import registry

    facts = {
        "defaults": {kind: list(names) for kind, names in registry.DEFAULT_METRIC_REGISTRY.items()},
        "higher_is_better": {name: registry.HIGHER_IS_BETTER_REGISTRY.get(name) for name in registry.METRIC_REGISTRY},
    }
    write_json(path, facts)
    return facts


def task_metrics(name: str, index: dict[str, dict]) -> tuple[dict[str, bool | None], list[str]] | None:
    """The metrics task ``name`` reports, each with lm-eval's ``higher_is_better`` (None: not declared), and its
    filters, as lm-eval's ConfigurableTask reads the task's YAML (``metric_list``, else its output type's default
    metrics; ``filter_list``, else ``none``). None where they are known only when the task runs: groups and tags,
    Python task classes, metrics given as functions or by Hugging Face evaluate, YAML that cannot be read."""
    entry = index.get(name)
    if entry is None or entry["kind"] != "task" or not entry["yaml_path"]:
        return None
    try:
        config = task_config(entry["yaml_path"])
    except (OSError, yaml.YAMLError, ConfigError):
        return None
    if "class" in config:
        return None
    registry = metric_registry()
    listed = config.get("metric_list")
    if listed is None:
        listed = [{"metric": m} for m in registry["defaults"].get(config.get("output_type") or "generate_until", [])]
    if not all(isinstance(m, dict) and isinstance(m.get("metric"), str) and not m.get("hf_evaluate") for m in listed):
        return None
    metrics = {m["metric"]: m.get("higher_is_better", registry["higher_is_better"].get(m["metric"])) for m in listed}
    filters = [f.get("name") for f in config.get("filter_list") or [] if isinstance(f, dict)] or ["none"]
    return metrics, filters


def task_protocols(name: str, index: dict[str, dict], _depth: int = 0) -> list[dict]:
    """The protocol of each task ``name`` runs (a group's leaves, recursively): ``task``, ``output_type``,
    ``generation_kwargs``, ``num_fewshot``, ``repeats`` and ``fewshot_source`` (whether few-shot examples can be
    drawn). Empty for tags and for what cannot be read (lm-eval reports it later)."""
    entry = index.get(name)
    if entry is None or _depth > 10:
        return []
    if entry["kind"] == "tag":
        return [p for m in entry.get("members", []) for p in task_protocols(m, index, _depth + 1)]
    if not entry["yaml_path"]:
        return []
    try:
        config = task_config(entry["yaml_path"])
    except (OSError, yaml.YAMLError, ConfigError):
        return []
    if entry["kind"] == "group":
        members = config.get("task") or []
        members = members if isinstance(members, list) else [members]
        return [p for m in members if isinstance(m, str) for p in task_protocols(m, index, _depth + 1)]
    fewshot = config.get("fewshot_config") or {}
    return [
        {
            "task": name,
            "output_type": config.get("output_type"),
            "generation_kwargs": dict(config.get("generation_kwargs") or {}),
            "num_fewshot": config.get("num_fewshot"),
            "repeats": config.get("repeats") or 1,
            "fewshot_source": any(config.get(k) for k in ("fewshot_split", "training_split", "validation_split"))
            or "samples" in fewshot,
        }
    ]


def effective_generation(own: dict, generation: dict) -> dict:
    """A generative task's generation kwargs once the benchmark file's written keys are applied (lm-eval updates
    the task's own with them): the same keys as ``koaml.evaluate.gen_kwargs`` passes."""
    written = {}
    if "max_new_tokens" in generation:
        written["max_gen_toks"] = generation["max_new_tokens"]
    if "temperature" in generation:
        sampling = generation["temperature"] > 0
        written.update(do_sample=sampling, temperature=generation["temperature"] if sampling else 0.0)
    return {**own, **written}


def check_protocol(path: str, config: dict, index: dict[str, dict]) -> None:
    """Raise ConfigError for what lm-eval would reject or silently change later: a generation that does not fit
    model_max_length, a sampling task forced to greedy, few-shot examples for a task that has none; warn when
    a written generation key changes a task's own setting (the results record it)."""
    generation, max_length = config["generation"], config["model"]["model_max_length"]
    changed: dict[str, list[str]] = {}
    for i, task in enumerate(config["tasks"]):
        at = f"{path}: tasks.{i}"
        for leaf in task_protocols(task["task"], index):
            name, own = leaf["task"], leaf["generation_kwargs"]
            if task.get("num_fewshot") and not leaf["fewshot_source"]:
                raise ConfigError(
                    f"{at}.num_fewshot: {task['num_fewshot']} few-shot examples, but '{name}' has no split to draw "
                    f"them from (its own num_fewshot: {leaf['num_fewshot'] or 0}); remove num_fewshot"
                )
            if leaf["output_type"] != "generate_until":
                continue
            tokens = effective_generation(own, generation).get("max_gen_toks", LM_EVAL_MAX_GEN_TOKS)
            if tokens >= max_length:
                source = (
                    f"{path}: generation.max_new_tokens: {tokens}"
                    if "max_new_tokens" in generation
                    else f"{at}.task: '{name}' generates up to {tokens} tokens ("
                    + ("its max_gen_toks" if "max_gen_toks" in own else "lm-eval's default; the task sets none")
                    + ")"
                )
                raise ConfigError(
                    f"{source}, which leaves no room for the prompt in model.model_max_length ({max_length}); "
                    "raise model.model_max_length, or set a smaller generation.max_new_tokens"
                )
            sampling = own.get("do_sample") or leaf["repeats"] > 1
            if sampling and generation.get("temperature") == 0:
                raise ConfigError(
                    f"{path}: generation.temperature: 0 makes '{name}' greedy, but the task samples (do_sample: "
                    f"{own.get('do_sample')}, temperature: {own.get('temperature')}, repeats: {leaf['repeats']}): its "
                    "repeats would be identical; remove generation.temperature to keep the task's own sampling"
                )
            if "max_new_tokens" in generation and generation["max_new_tokens"] != own.get(
                "max_gen_toks", LM_EVAL_MAX_GEN_TOKS
            ):
                changed.setdefault("max_new_tokens", []).append(
                    f"{name} ({own.get('max_gen_toks', f'{LM_EVAL_MAX_GEN_TOKS}, the default')})"
                )
            if "temperature" in generation and bool(own.get("do_sample")) != (generation["temperature"] > 0):
                changed.setdefault("temperature", []).append(f"{name} (do_sample: {own.get('do_sample', False)})")
    for key, tasks in changed.items():
        shown = ", ".join(tasks[:3]) + (f" and {len(tasks) - 3} more" if len(tasks) > 3 else "")
        warn(
            f"{path}: generation.{key}: {generation[key]} replaces the task's own setting of {shown}: the "
            "numbers differ from the published protocol (recorded in each evaluation's protocol.json); remove "
            f"{key} to keep the tasks' own"
        )
