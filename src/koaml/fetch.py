"""Pre-cache every hub model and dataset an experiment needs (run where there is network).

Compute nodes on KOA have no internet: run ``snakemake fetch`` on the login node once, then the
jobs read the Hugging Face cache (HF_HOME, on scratch) with HF_HUB_OFFLINE=1. Offline, the workflow
stops when it is parsed if something is not in the cache (:func:`check_cached`).
"""

from __future__ import annotations

import glob
import logging
import os
import re
from pathlib import Path

from koaml.configfiles import ConfigError
from koaml.experiment import BaseModel, Experiment
from koaml.io import write_json
from koaml.recipe import is_local_dataset
from koaml.sections import DatasetSpec

log = logging.getLogger(__name__)

# Files a model needs for training and evaluation; skips duplicate weight formats (.bin, .pth, GGUF).
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.tiktoken"]


def hub_models(exp: Experiment) -> list[BaseModel]:
    """The base models loaded from the hub."""
    return [b for b in exp.base_models.values() if b.from_hub]


def hub_datasets(exp: Experiment) -> list[tuple[str, str, DatasetSpec]]:
    """``(recipe file, data key, dataset spec)`` of each hub dataset the runs use."""
    return [
        (run.recipe_path, key, spec)
        for run in exp.runs.values()
        for key, spec in run.recipe.datasets.items()
        if not is_local_dataset(spec.dataset_name)
    ]


def requirements(exp: Experiment) -> dict:
    """The hub models, hub datasets and lm-eval tasks an experiment uses."""
    models = {b.model_name for b in hub_models(exp)}
    datasets = {(s.dataset_name, s.subset, s.split) for _, _, s in hub_datasets(exp)}
    benchmarks = {
        name: {"tasks": b.config.task_names, "include_path": b.config.get("include_path")}
        for name, b in (exp.benchmarks | exp.validation_benchmarks).items()  # searches' objectives too
    }
    return {
        "models": sorted(models),
        "datasets": [list(d) for d in sorted(datasets, key=str)],
        "benchmarks": benchmarks,
    }


def check_cached(exp: Experiment, source: str) -> None:
    """Offline (HF_HUB_OFFLINE; HF_DATASETS_OFFLINE for datasets), every hub model and dataset must be in
    the cache, or the jobs would fail one by one on it: raise one ConfigError listing those that are not,
    with the command that fetches them. Only looks at folders (the Snakefile is parsed on every run)."""
    models, datasets = hub_models(exp), hub_datasets(exp)
    if not models and not datasets:
        return
    from huggingface_hub import constants

    missing = []
    if constants.HF_HUB_OFFLINE:
        missing += [
            f"{b.where}.model_name: {b.model_name}: model not in the Hugging Face cache ({constants.HF_HUB_CACHE})"
            for b in models
            if not _model_cached(b.model_name)
        ]
    if _datasets_offline():
        cache = _datasets_cache()
        missing += [
            f"{recipe}: data.{key}.dataset_name: {spec.dataset_name}: dataset not in the Hugging Face cache ({cache})"
            for recipe, key, spec in datasets
            if not _dataset_cached(cache, spec.dataset_name, spec.subset)
        ]
    if missing:
        configfiles = " ".join(p for p in source.split(", ") if Path(p).is_file()) or "<experiment file>"
        lines = "\n".join(f"  {line}" for line in dict.fromkeys(missing))
        raise ConfigError(
            f"offline (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE), and not in the Hugging Face cache:\n{lines}\n"
            "fetch them where there is internet (the login node): "
            f"env -u HF_HUB_OFFLINE -u HF_DATASETS_OFFLINE snakemake fetch --cores 1 --configfile {configfiles}"
        )


def _model_cached(repo_id: str) -> bool:
    """config.json of the main revision is in the hub cache: what huggingface_hub's try_to_load_from_cache
    looks for (not called: importing it takes ~0.2 s, on every parse)."""
    from huggingface_hub import constants

    repo = Path(constants.HF_HUB_CACHE) / f"models--{repo_id.replace('/', '--')}"
    ref = repo / "refs" / "main"
    return ref.is_file() and (repo / "snapshots" / ref.read_text().strip() / "config.json").is_file()


def _datasets_offline() -> bool:
    """HF_DATASETS_OFFLINE when set, else HF_HUB_OFFLINE: as the datasets library decides it."""
    from huggingface_hub import constants

    value = os.environ.get("HF_DATASETS_OFFLINE")
    return constants.HF_HUB_OFFLINE if value is None else value.upper() in constants.ENV_VARS_TRUE_VALUES


def _datasets_cache() -> Path:
    """The datasets library's cache (HF_DATASETS_CACHE, default <HF_HOME>/datasets)."""
    from huggingface_hub import constants

    return Path(os.environ.get("HF_DATASETS_CACHE") or Path(constants.HF_HOME) / "datasets").expanduser()


def _dataset_cached(cache: Path, name: str, subset: str | None) -> bool:
    """A prepared copy of hub dataset ``name`` is in the datasets cache, which is what datasets 5 reads offline
    (a snapshot in the hub cache alone is not enough): ``<org>___<name in snake case>/<subset>/<version>/<hash>``,
    as datasets' CachedDatasetModuleFactory and naming.camelcase_to_snakecase lay it out."""
    *org, base = name.split("/")
    snake = re.sub(r"([a-z\d])([A-Z])", r"\1_\2", re.sub(r"([A-Z]+)([A-Z][a-z])", r"\1_\2", base)).lower()
    config = glob.escape(subset) if subset else "*"
    return any((cache / "___".join([*org, snake])).glob(f"{config}/*/*/dataset_info.json"))


def fetch(needs: dict, manifest: str | Path) -> None:
    """Download what ``needs`` lists into the Hugging Face cache and write a manifest of it."""
    import datasets
    from huggingface_hub import snapshot_download
    from lm_eval.tasks import TaskManager, get_task_dict

    cached = {"models": {}, "datasets": [], "tasks": []}
    for model in needs["models"]:
        log.info("fetching model %s", model)
        cached["models"][model] = snapshot_download(model, allow_patterns=MODEL_FILES)
    for name, subset, split in needs["datasets"]:
        log.info("fetching dataset %s (%s, %s)", name, subset, split)
        datasets.load_dataset(name, subset, split=split)
        cached["datasets"].append([name, subset, split])
    for bench in needs["benchmarks"].values():
        log.info("fetching the data of lm-eval tasks %s", ", ".join(bench["tasks"]))
        get_task_dict(bench["tasks"], TaskManager(include_path=bench["include_path"]))
        cached["tasks"].extend(bench["tasks"])
    write_json(manifest, cached)
