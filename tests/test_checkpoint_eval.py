"""Benchmark curves over training (runs.<name>.checkpoint_eval) on the demo's tiny model: a LoRA run of 30 steps
evaluated at steps 10 and 20 (kept, merged, evaluated, the merged folders deleted after), its last step and its
base as step 0; the run's model is the step with the best validation score (select_checkpoint), and its unmerged
adapter is that step's (evaluate_adapters). The same experiment holds issue 40's real-run losses, cheaply: a run
of one epoch asked for a step it never reaches (its model kept, that step skipped), and a GRPO search on the same
validation benchmark (which failed at its last step)."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ONE_THREAD_JOBS, dry_run, planned_jobs, snakemake, venv_env
from workflow_copy import copy_workflow

pytestmark = pytest.mark.slow

CURVES = {
    "experiment": "curves",
    "base_models": {"tiny": {"build": "resources/demo/tiny_model.yaml"}},
    "runs": {
        "lora": {
            "base": "tiny",
            "recipe": "config/recipes/demo_lora.yaml",
            "overrides": {"training": {"max_steps": 30, "save_steps": 100, "logging_steps": 5, "eval_steps": 10}},
            "checkpoint_eval": {"every": 10},
            "select_checkpoint": {"benchmark": "config/benchmarks/demo_arith_mc_val.yaml", "metric": "acc"},
        },
        "epochs": {  # full fine-tuning, one epoch of 60 rows: 2 steps
            "base": "tiny",
            "recipe": "config/recipes/demo_full.yaml",
            "overrides": {"data": {"max_samples": 64}, "training": {"num_train_epochs": 1, "packing": False}},
            "checkpoint_eval": {"steps": [100000]},
        },
        "grpo": {
            "base": "tiny",
            "recipe": "config/recipes/demo_grpo_lora.yaml",
            "overrides": {
                "training": {"max_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4, "logging_steps": 1}
            },
            "search": {
                "space": {"training.learning_rate": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2}},
                "objective": {"benchmark": "config/benchmarks/demo_arith_mc_val.yaml", "metric": "acc"},
                "n_trials": 1,  # one trial fails as two did: at the search's last step
            },
        },
    },
    "benchmarks": ["config/benchmarks/demo_arith_mc.yaml"],
    "benchmark_overrides": {"limit": 60},
    "evaluate_adapters": True,
}


@pytest.fixture(scope="module")
def curves_workflow(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("curves"))
    (workdir / "curves.yaml").write_text(yaml.safe_dump(CURVES, sort_keys=False))
    snakemake(workdir, *ONE_THREAD_JOBS, "--configfile", "curves.yaml")
    return workdir


def test_three_steps_and_the_base_make_the_curve(curves_workflow):
    table = pd.read_csv(curves_workflow / "results/compare/curves.csv")
    table = table[table.run == "lora"]
    reported = table[table.benchmark == "demo_arith_mc"]
    assert list(reported.step) == [0, 10, 20, 30]
    assert list(reported.point) == ["base", "checkpoint", "checkpoint", "final"]
    assert (table.status == "ok").all() and (table.ci_low <= table.score).all() and (table.score <= table.ci_high).all()
    last = json.loads((curves_workflow / "results/checkpoint_eval/lora/final/demo_arith_mc/results.json").read_text())
    assert reported.score.iloc[-1] == pytest.approx(last["results"]["demo_arith_mc"]["acc,none"])
    assert len(set(table.score)) > 1  # the model changes along training


def test_the_best_validation_step_is_the_runs_model(curves_workflow):
    table = pd.read_csv(curves_workflow / "results/compare/curves.csv")
    table = table[table.run == "lora"]
    validation = table[table.benchmark == "demo_arith_mc_val"]  # no step 0: the base is not evaluated on it
    assert list(validation.step) == [10, 20, 30]
    best = validation.step[validation.score == validation.score.max()].min()
    selection = json.loads((curves_workflow / "results/runs/lora/selected/selection.json").read_text())
    assert selection["step"] == best and set(table.step[table.selected]) == {best}
    assert f"step {best} has the highest demo_arith_mc_val/acc of the 3 steps" in selection["why"]
    # every benchmark of the run is the chosen step's: the same model gives the same score
    chosen = table[(table.benchmark == "demo_arith_mc") & (table.step == best)].score.iloc[0]
    run = json.loads((curves_workflow / "results/eval/lora/demo_arith_mc/results.json").read_text())
    assert run["results"]["demo_arith_mc"]["acc,none"] == pytest.approx(chosen)
    log = (curves_workflow / "logs/evaluate/lora/demo_arith_mc.log").read_text()
    assert "evaluating results/runs/lora/selected on" in log
    assert f"chosen by select_checkpoint: step {best}" in (curves_workflow / "results/report/index.html").read_text()


def test_a_lora_step_is_kept_small_and_evaluated_merged(curves_workflow):
    kept = curves_workflow / "results/runs/lora/trained/steps"
    assert sorted(p.name for p in kept.iterdir()) == ["10", "20"]
    for step in kept.iterdir():
        assert (step / "adapter_model.safetensors").is_file() and not (step / "optimizer.pt").exists()
    log = (curves_workflow / "logs/evaluate/lora/step10/demo_arith_mc.log").read_text()
    assert "evaluating results/runs/lora/steps/10/merged on" in log
    assert not (curves_workflow / "results/runs/lora/steps").exists() or not any(
        (curves_workflow / "results/runs/lora/steps").rglob("merged")
    )  # the merged steps are deleted once evaluated (the kept adapters stay)


def test_a_finished_curve_plans_nothing_and_shows_in_the_report_and_status(curves_workflow):
    assert planned_jobs(dry_run(curves_workflow, "--configfile", "curves.yaml").stdout) == []
    plots = {p.name for p in (curves_workflow / "results/report/plots").iterdir()}
    assert "curve_lora_demo_arith_mc_demo_arith_mc_acc.png" in plots
    status = subprocess.run(
        [str(Path(sys.executable).parent / "koaml"), "status", "--configfile", "curves.yaml"],
        cwd=curves_workflow, env=venv_env(), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "step 10 demo_arith_mc" in status and "step final demo_arith_mc_val" in status and "select" in status
    assert "pending" not in status


def test_an_evaluated_adapter_is_the_selected_steps(curves_workflow):
    selection = json.loads((curves_workflow / "results/runs/lora/selected/selection.json").read_text())
    log = (curves_workflow / "logs/evaluate/lora_adapter/demo_arith_mc.log").read_text()
    assert f"with adapter {selection['adapter']} on" in log  # not the last step's, unless it was chosen
    samples = [
        [json.loads(line)["acc"] for line in (curves_workflow / f"results/eval/{m}/demo_arith_mc/samples_demo_arith_mc.jsonl").read_text().splitlines()]
        for m in ("lora", "lora_adapter")
    ]  # fmt: skip
    assert sum(a == b for a, b in zip(*samples, strict=True)) >= 0.99 * len(samples[0])  # the same model, unmerged


def test_a_step_past_the_end_of_an_epoch_run_keeps_the_model_and_skips_the_step(curves_workflow):
    trained = curves_workflow / "results/runs/epochs/trained"
    assert json.loads((trained / "train_summary.json").read_text())["global_step"] == 2
    assert (trained / "model.safetensors").is_file()
    assert json.loads((trained / "steps/100000/not_reached.json").read_text()) == {"step": 100000, "last_step": 2}
    assert "training ended at step 2, before step 100000" in (curves_workflow / "logs/train/epochs.log").read_text()
    table = pd.read_csv(curves_workflow / "results/compare/curves.csv")
    epochs = table[table.run == "epochs"]
    assert list(zip(epochs.step, epochs.status, strict=True)) == [(0, "ok"), (2, "ok"), (100000, "not reached")]
    summary = pd.read_csv(curves_workflow / "results/compare/summary.csv")
    assert (summary[summary.run == "epochs"].status == "ok").all()


def test_a_grpo_search_finishes_and_its_best_adapter_is_evaluated(curves_workflow):
    from koaml.recipe import load_recipe

    trials = pd.read_csv(curves_workflow / "results/search/grpo/trials.csv")
    assert list(trials.trial) == ["grpo_t1"] and (trials.state == "COMPLETE").all()
    best = load_recipe(curves_workflow / "results/search/grpo/best.yaml")  # usable as a recipe, vLLM keys and all
    assert best.trainer_type == "grpo" and not best.training.use_vllm
    best_trial = (curves_workflow / "results/search/grpo/best_model.txt").read_text().strip().split("/")[2]
    log = (curves_workflow / "logs/evaluate/grpo_adapter/demo_arith_mc.log").read_text()
    assert f"with adapter results/runs/{best_trial}/trained on" in log
    summary = pd.read_csv(curves_workflow / "results/compare/summary.csv")
    assert {"grpo", "grpo_adapter"} <= set(summary.run)
