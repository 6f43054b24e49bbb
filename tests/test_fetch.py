"""The fetch step: what an experiment needs from the hub, and caching it (offline on the demo)."""

import json

from conftest import REPO, snakemake
from koaml.config import load_experiment, load_yaml
from koaml.fetch import requirements


def test_requirements_list_hub_models_datasets_and_tasks(monkeypatch):
    monkeypatch.chdir(REPO)
    exp = load_experiment(load_yaml("config/examples/lora_rank_ablation.yaml"))
    needs = requirements(exp)
    assert needs["models"] == ["meta-llama/Llama-3.1-8B-Instruct"]
    assert needs["datasets"] == [["yahma/alpaca-cleaned", None, "train"]]
    assert needs["benchmarks"] == {"mmlu": {"tasks": ["mmlu"], "include_path": None}}


def test_demo_needs_nothing_from_the_hub(monkeypatch):
    monkeypatch.chdir(REPO)
    needs = requirements(load_experiment(load_yaml("config/config.yaml")))
    assert needs["models"] == [] and needs["datasets"] == []


def test_fetch_rule_caches_task_data_offline(workflow_dir):
    snakemake(workflow_dir, "fetch")
    manifest = json.loads((workflow_dir / "results/fetch/manifest.json").read_text())
    assert manifest == {"models": {}, "datasets": [], "tasks": ["demo_arith_mc", "demo_arith_gen"]}
    assert not (workflow_dir / "results/eval").exists()
