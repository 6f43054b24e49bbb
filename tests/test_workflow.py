"""The DAG, planned without running anything (snakemake --dry-run)."""

from collections import Counter

import pytest
from conftest import ONE_THREAD_JOBS, cache_hub_dataset, cache_hub_model, dry_run, planned_jobs, snakemake


def test_demo_dag_evaluates_the_base_once(workflow_dir):
    proc = dry_run(workflow_dir)
    assert "koa-ml: warning" not in proc.stdout
    jobs = planned_jobs(proc.stdout)
    counts = Counter(rule for rule, _ in jobs)
    assert counts == {
        "build_base_model": 1,
        "run_config": 3,
        "benchmark_config": 2,
        "prepare_data": 3,
        "train": 3,
        "merge": 2,  # LoRA and QLoRA; full fine-tuning has nothing to merge
        "evaluate": 8,  # (1 base + 3 runs) x 2 benchmarks
        "compare": 1,
        "leaderboard": 1,
        "report": 1,
        "all": 1,
    }
    assert ("evaluate", "model=tiny, bench=demo_arith_mc") in jobs


def test_replicates_train_each_seed_and_evaluate_the_base_once(workflow_dir):
    proc = dry_run(workflow_dir, "--config", "replicates=2")
    jobs = planned_jobs(proc.stdout)
    counts = Counter(rule for rule, _ in jobs)
    assert counts["train"] == 6 and counts["evaluate"] == 14  # (1 base + 6 runs) x 2 benchmarks
    assert ("train", "run=tiny-lora_rep2") in jobs and ("evaluate", "model=tiny, bench=demo_arith_mc") in jobs


def test_ignored_keys_are_warned_about_once_in_the_dry_run(workflow_dir):
    recipe = workflow_dir / "config/recipes/demo_lora.yaml"
    recipe.write_text(recipe.read_text().replace("training:\n", "training:\n  output_dir: ./output/tiny-lora\n", 1))
    proc = dry_run(
        workflow_dir,
        "--config",
        "runs={tiny-lora: {base: tiny, recipe: config/recipes/demo_lora.yaml}, "
        "r4: {base: tiny, recipe: config/recipes/demo_lora.yaml, overrides: {peft: {lora_r: 4}}}}",
    )
    warning = (
        "koa-ml: warning: config/recipes/demo_lora.yaml: training.output_dir: ignored; "
        "trained models go to results/runs/<run>/trained and checkpoints to results/checkpoints/<run>/"
    )
    assert proc.stdout.count(warning) == 1 and proc.stdout.count("koa-ml: warning") == 1, proc.stdout[:3000]
    assert ("train", "run=r4") in planned_jobs(proc.stdout)


def test_config_typo_stops_before_any_job(workflow_dir):
    recipe = workflow_dir / "config/recipes/demo_lora.yaml"
    recipe.write_text(recipe.read_text().replace("learning_rate:", "lerning_rate:"))
    proc = snakemake(workflow_dir, check=False)
    assert proc.returncode != 0
    assert (
        "config/recipes/demo_lora.yaml: training.lerning_rate: unknown key; did you mean 'learning_rate'?"
        in proc.stdout
    )
    assert not (workflow_dir / "results").exists()


def test_wrong_type_in_experiment_is_reported(workflow_dir):
    config = workflow_dir / "config/config.yaml"
    config.write_text(
        config.read_text().replace("experiment: arith-demo", "experiment: arith-demo\nevaluate_base: sometimes")
    )
    proc = dry_run(workflow_dir, check=False)
    assert proc.returncode != 0
    assert "config/config.yaml: evaluate_base: 'sometimes' is not of type 'boolean'" in proc.stdout


def test_sweep_and_multi_stage_in_the_dag(workflow_dir):
    config = workflow_dir / "config/config.yaml"
    config.write_text(
        config.read_text().replace(
            "  tiny-full:  {base: tiny, recipe: config/recipes/demo_full.yaml}",
            "  tiny-full:  {base: tiny, recipe: config/recipes/demo_full.yaml}\n"
            "  stage2:     {base: 'run:tiny-full', recipe: config/recipes/demo_lora.yaml}\n"
            "  rank:       {base: tiny, recipe: config/recipes/demo_lora.yaml, sweep: {peft.lora_r: [4, 8]}}",
        )
    )
    jobs = planned_jobs(dry_run(workflow_dir).stdout)
    trained = {w for rule, w in jobs if rule == "train"}
    assert trained == {
        f"run={r}" for r in ("tiny-lora", "tiny-qlora", "tiny-full", "stage2", "rank_lora_r4", "rank_lora_r8")
    }
    proc = dry_run(workflow_dir, "--printshellcmds")
    assert "--model results/runs/tiny-full/trained --data results/data/stage2" in proc.stdout


def test_command_line_overrides(workflow_dir):
    proc = dry_run(
        workflow_dir, "--config", "recipe_overrides={training: {max_steps: 10}}", "benchmark_overrides={limit: 5}"
    )
    assert "Job stats" in proc.stdout
    bad = dry_run(workflow_dir, "--config", "recipe_overrides={training: {max_stepz: 10}}", check=False)
    assert bad.returncode != 0 and "training.max_stepz: unknown key; did you mean 'max_steps'?" in bad.stdout


def test_unknown_task_stops_before_any_job(workflow_dir):
    bench = workflow_dir / "config/benchmarks/demo_arith_gen.yaml"
    bench.write_text(bench.read_text().replace("task: demo_arith_gen", "task: demo_arith_gem"))
    proc = snakemake(workflow_dir, check=False)
    assert proc.returncode != 0
    assert "tasks.0.task: unknown lm-eval task 'demo_arith_gem'; did you mean 'demo_arith_gen'" in proc.stdout
    assert not (workflow_dir / "results").exists()


def test_code_executing_benchmark_needs_opt_in(workflow_dir):
    config = workflow_dir / "config/config.yaml"
    config.write_text(
        config.read_text().replace("  - config/benchmarks/demo_arith_gen.yaml", "  - config/benchmarks/humaneval.yaml")
    )
    model = workflow_dir / "resources/demo/tiny_model.yaml"  # room for humaneval's 4,096 positions
    model.write_text(model.read_text().replace("max_position_embeddings: 256", "max_position_embeddings: 4096"))
    proc = dry_run(workflow_dir, check=False)
    assert proc.returncode != 0 and "'humaneval' executes code written by the model" in proc.stdout
    bench = workflow_dir / "config/benchmarks/humaneval.yaml"
    bench.write_text(bench.read_text().replace("allow_code_execution: false", "allow_code_execution: true"))
    assert dry_run(workflow_dir).returncode == 0


def test_an_experiment_file_replaces_the_demo(workflow_dir, hf_cache):
    """--configfile names the whole experiment: the demo's runs are not merged into it."""
    cache_hub_model(
        hf_cache / "hub", "meta-llama/Llama-3.1-8B-Instruct", {"config.json": b"{}"}
    )  # as `snakemake fetch` leaves them
    cache_hub_dataset(hf_cache / "datasets", "yahma___alpaca-cleaned")
    jobs = planned_jobs(dry_run(workflow_dir, "--configfile", "config/examples/lora_rank_ablation.yaml").stdout)
    runs = {wildcards for rule, wildcards in jobs if rule == "train"}
    assert runs == {f"run=rank_lora_r{r}" for r in (4, 8, 16, 32)}


def test_evaluation_only_experiment_plans_no_training(workflow_dir):
    jobs = planned_jobs(dry_run(workflow_dir, "--configfile", "config/examples/evaluate_only.yaml").stdout)
    counts = Counter(rule for rule, _ in jobs)
    assert counts == {
        "convert_gguf": 1,
        "build_base_model": 1,
        "benchmark_config": 1,
        "evaluate": 2,
        "compare": 1,
        "leaderboard": 1,
        "report": 1,
        "all": 1,
    }


@pytest.mark.slow
def test_evaluation_only_experiment_compares_models_side_by_side(workflow_dir):
    """Three models x two benchmarks evaluated, nothing trained: the leaderboard matrix, `compare: all-pairs` under
    the table's correction, and a report with the heat map."""
    import pandas as pd
    import yaml

    models = {"small": {"build": "resources/demo/tiny_model.yaml"}, "wide": {"build": "wide.yaml"}}
    models["deep"] = {"build": "deep.yaml"}
    (workflow_dir / "exp.yaml").write_text(
        yaml.safe_dump(
            {
                "experiment": "eval-only",
                "base_models": models,
                "compare": "all-pairs",
                "evaluation": {"group_by_model": True},  # one job per model for both benchmarks
                "benchmarks": ["config/benchmarks/demo_arith_mc.yaml", "config/benchmarks/demo_arith_gen.yaml"],
            }
        )
    )
    spec = yaml.safe_load((workflow_dir / "resources/demo/tiny_model.yaml").read_text())
    for name, change in (("wide", {"hidden_size": 64}), ("deep", {"num_hidden_layers": 3})):
        (workflow_dir / f"{name}.yaml").write_text(
            yaml.safe_dump({**spec, "seed": spec["seed"] + len(name), "architecture": spec["architecture"] | change})
        )
    snakemake(workflow_dir, *ONE_THREAD_JOBS, "--configfile", "exp.yaml", "--config", "benchmark_overrides={limit: 40}")
    table = pd.read_csv(workflow_dir / "results/compare/summary.csv")
    pairs = [("deep", "small"), ("deep", "wide"), ("small", "wide")]  # safe_dump sorted the base models
    assert list(dict.fromkeys(zip(table.base_model, table.run, strict=True))) == pairs
    assert (table.status == "ok").all() and (table.n == 40).all() and table.p_value.notna().all()
    assert table.p_adjusted.notna().sum() == len(table)  # one correction over every pair's rows
    scores = pd.read_csv(workflow_dir / "results/compare/scores.csv")
    assert len(scores) == 3 * 2 and set(scores.model) == set(models) and (scores.status == "ok").all()
    board = (workflow_dir / "results/compare/leaderboard.md").read_text()
    assert board.count("\n| small | ") == 1 + 2 and "| model | mean rank |" in board  # the matrix row, a row per score
    assert not (workflow_dir / "results/runs").exists()
    page = (workflow_dir / "results/report/index.html").read_text()
    assert "wide" in page and "deep" in page and 'alt="leaderboard"' in page


@pytest.mark.slow
def test_one_model_and_one_benchmark(workflow_dir):
    """The shape a new user starts with (the guide's "evaluate a model on X"): one model, no runs, one benchmark.
    It ends green: the model's scores with their interval and protocol, an empty comparison that says why, a report."""
    import pandas as pd
    import yaml

    (workflow_dir / "one.yaml").write_text(
        yaml.safe_dump(
            {
                "experiment": "one-model",
                "base_models": {"tiny": {"build": "resources/demo/tiny_model.yaml"}},
                "benchmarks": ["config/benchmarks/demo_arith_gen.yaml"],
            }
        )
    )
    snakemake(workflow_dir, "--configfile", "one.yaml", "--config", "benchmark_overrides={limit: 20}")
    scores = pd.read_csv(workflow_dir / "results/compare/scores.csv")
    assert scores.model.tolist() == ["tiny"] and (scores.n == 20).all() and scores.ci_high.notna().all()
    assert scores.protocol.str.contains("max_gen_toks=8").all()  # the custom task's own generation length
    assert pd.read_csv(workflow_dir / "results/compare/summary.csv").empty
    page = (workflow_dir / "results/report/index.html").read_text()
    assert "Nothing to compare" in page and "<h2>Scores</h2>" in page and 'alt="leaderboard"' in page
    assert (workflow_dir / "results/report/plots").is_dir() and not (workflow_dir / "results/partial").exists()


@pytest.mark.slow
def test_jobs_run_without_the_venv_on_path(workflow_dir):
    """`.venv/bin/snakemake` without activating the venv: jobs still find the `koaml` command."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    venv_bin = str(Path(sys.executable).parent)
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep) if p != venv_bin)
    proc = subprocess.run(
        [f"{venv_bin}/snakemake", "--cores", "1", "results/base/tiny/model"],
        cwd=workflow_dir,
        env=dict(os.environ, PATH=path),
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (workflow_dir / "results/base/tiny/model/config.json").is_file()
