"""The fetch step: what an experiment needs from the hub, and caching it (offline on the demo)."""

import json

import pytest
from conftest import REPO, cache_hub_dataset, cache_hub_model, dry_run, planned_jobs, snakemake

from koaml.config import load_experiment
from koaml.configfiles import ConfigError, load_yaml
from koaml.fetch import requirements

ABLATION = (
    "config/examples/lora_rank_ablation.yaml"  # meta-llama/Llama-3.1-8B-Instruct, trained on yahma/alpaca-cleaned
)
MODEL_LINE = (
    f"{ABLATION}: base_models.llama8b.model_name: meta-llama/Llama-3.1-8B-Instruct: model not in the Hugging Face cache"
)
DATASET_LINE = "config/recipes/llama_8b_lora.yaml: data.train_dataset.dataset_name: yahma/alpaca-cleaned: dataset not in the Hugging Face cache"
FETCH = f"env -u HF_HUB_OFFLINE -u HF_DATASETS_OFFLINE snakemake fetch --cores 1 --configfile {ABLATION}"


def test_requirements_list_hub_models_datasets_and_tasks(monkeypatch, online):
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


@pytest.mark.slow
def test_fetch_rule_caches_task_data_offline(workflow_dir):
    snakemake(workflow_dir, "fetch")
    manifest = json.loads((workflow_dir / "results/fetch/manifest.json").read_text())
    assert manifest == {"models": {}, "datasets": [], "tasks": ["demo_arith_mc", "demo_arith_gen"]}
    assert not (workflow_dir / "results/eval").exists()
    log = (workflow_dir / "logs/fetch.log").read_text()
    assert "koaml.fetch: fetching the data of lm-eval tasks demo_arith_mc\n" in log and "tasks demo_arith_gen" in log


def test_offline_every_hub_id_must_be_cached_before_any_job(hf_cache, monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError) as error:
        load_experiment(load_yaml(ABLATION), ABLATION)
    message = str(error.value)
    assert f"  {MODEL_LINE} ({hf_cache / 'hub'})" in message
    assert f"  {DATASET_LINE} ({hf_cache / 'datasets'})" in message  # listed once, though four runs share the recipe
    assert len(message.splitlines()) == 4 and message.endswith(FETCH)

    cache_hub_model(hf_cache / "hub", "meta-llama/Llama-3.1-8B-Instruct", {"config.json": b"{}"})
    with pytest.raises(ConfigError, match="yahma/alpaca-cleaned") as error:
        load_experiment(load_yaml(ABLATION), ABLATION)
    assert "meta-llama" not in str(error.value)
    cache_hub_dataset(hf_cache / "datasets", "yahma___alpaca-cleaned")
    assert load_experiment(load_yaml(ABLATION), ABLATION).runs


def test_the_cache_is_read_as_the_libraries_read_it(hf_cache):
    from huggingface_hub import try_to_load_from_cache

    from koaml.fetch import _dataset_cached, _model_cached

    cache_hub_model(hf_cache / "hub", "org/Model-1B", {"config.json": b"{}"})
    assert _model_cached("org/Model-1B") and isinstance(try_to_load_from_cache("org/Model-1B", "config.json"), str)
    assert not _model_cached("org/Model-7B") and try_to_load_from_cache("org/Model-7B", "config.json") is None
    cache_hub_dataset(hf_cache / "datasets", "Open-Orca___slim_orca")  # datasets' camelcase_to_snakecase("SlimOrca")
    assert _dataset_cached(hf_cache / "datasets", "Open-Orca/SlimOrca", None)
    assert _dataset_cached(hf_cache / "datasets", "Open-Orca/SlimOrca", "default")
    assert not _dataset_cached(hf_cache / "datasets", "Open-Orca/SlimOrca", "other-subset")


def test_online_nothing_is_checked(hf_cache, online, monkeypatch):
    monkeypatch.chdir(REPO)
    assert load_experiment(load_yaml(ABLATION), ABLATION).runs


def test_hf_datasets_offline_governs_datasets(hf_cache, monkeypatch):
    monkeypatch.chdir(REPO)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "0")
    with pytest.raises(ConfigError) as error:
        load_experiment(load_yaml(ABLATION), ABLATION)
    assert MODEL_LINE in str(error.value) and "yahma" not in str(error.value)


def test_offline_dry_run_stops_and_fetch_is_still_planned(workflow_dir, hf_cache, monkeypatch):
    proc = dry_run(workflow_dir, "--configfile", ABLATION, check=False)
    assert proc.returncode != 0 and planned_jobs(proc.stdout) == []
    assert MODEL_LINE.replace(ABLATION, str(workflow_dir / ABLATION)) in proc.stdout and DATASET_LINE in proc.stdout
    assert FETCH.replace(ABLATION, str(workflow_dir / ABLATION)) in proc.stdout
    # the command it names, as run on the login node
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("HF_DATASETS_OFFLINE")
    assert planned_jobs(dry_run(workflow_dir, "fetch", "--configfile", ABLATION).stdout) == [("fetch", "")]
