"""Pre-cache every hub model and dataset an experiment needs (run where there is network).

Compute nodes on KOA have no internet: run ``snakemake fetch`` on the login node once, then the
jobs read the Hugging Face cache (HF_HOME, on scratch) with HF_HUB_OFFLINE=1.
"""

from __future__ import annotations

import logging
from pathlib import Path

from koaml.config import Experiment
from koaml.data import is_local
from koaml.io import write_json

log = logging.getLogger(__name__)

# Files a model needs for training and evaluation; skips duplicate weight formats (.bin, .pth, GGUF).
MODEL_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.py", "*.tiktoken"]


def requirements(exp: Experiment) -> dict:
    """The hub models, hub datasets and lm-eval tasks an experiment uses."""
    models = {b.model_name for b in exp.base_models.values() if b.model_name and not Path(b.model_name).exists()}
    datasets = set()
    for run in exp.runs.values():
        data = run.recipe["data"]
        for spec in (data["train_dataset"], data.get("eval_dataset")):
            if spec and not is_local(spec["dataset_name"]):
                datasets.add((spec["dataset_name"], spec.get("subset"), spec.get("split", "train")))
    benchmarks = {
        name: {"tasks": [t["task"] for t in b.config["tasks"]], "include_path": b.config.get("include_path")}
        for name, b in exp.benchmarks.items()
    }
    return {
        "models": sorted(models),
        "datasets": [list(d) for d in sorted(datasets, key=str)],
        "benchmarks": benchmarks,
    }


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
