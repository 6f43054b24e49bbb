"""Benchmark curves over training (runs.<name>.checkpoint_eval) on the demo's tiny model: a LoRA run of 30 steps
evaluated at steps 10 and 20 (kept, merged, evaluated, the merged folders deleted after), its last step and its
base as step 0; the run's model is the step with the best validation score (select_checkpoint)."""

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
        }
    },
    "benchmarks": ["config/benchmarks/demo_arith_mc.yaml"],
    "benchmark_overrides": {"limit": 60},
}


@pytest.fixture(scope="module")
def curves_workflow(tmp_path_factory) -> Path:
    workdir = copy_workflow(tmp_path_factory.mktemp("curves"))
    (workdir / "curves.yaml").write_text(yaml.safe_dump(CURVES, sort_keys=False))
    snakemake(workdir, *ONE_THREAD_JOBS, "--configfile", "curves.yaml")
    return workdir


def test_three_steps_and_the_base_make_the_curve(curves_workflow):
    table = pd.read_csv(curves_workflow / "results/compare/curves.csv")
    reported = table[table.benchmark == "demo_arith_mc"]
    assert list(reported.step) == [0, 10, 20, 30]
    assert list(reported.point) == ["base", "checkpoint", "checkpoint", "final"]
    assert (table.status == "ok").all() and (table.ci_low <= table.score).all() and (table.score <= table.ci_high).all()
    last = json.loads((curves_workflow / "results/checkpoint_eval/lora/final/demo_arith_mc/results.json").read_text())
    assert reported.score.iloc[-1] == pytest.approx(last["results"]["demo_arith_mc"]["acc,none"])
    assert len(set(table.score)) > 1  # the model changes along training


def test_the_best_validation_step_is_the_runs_model(curves_workflow):
    table = pd.read_csv(curves_workflow / "results/compare/curves.csv")
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
