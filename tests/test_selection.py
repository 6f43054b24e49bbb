"""Choosing a run's checkpoint by a validation metric (select_checkpoint): the choice, and the chosen step's model
with selection.json. The workflow's own selection runs in tests/test_checkpoint_eval.py."""

import json
import math
import os

import pytest

from koaml.config import load_experiment
from koaml.experiment import FINAL_STEP, Objective
from koaml.selection import SELECTION_FILE, choose, select

ACC = Objective("acc", "maximize", "val", "val")
REPORTED = "config/benchmarks/demo_arith_mc.yaml"
VALIDATION = "config/benchmarks/demo_arith_mc_val.yaml"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def experiment(select: dict, sweep: dict | None = None) -> dict:
    run = {
        "base": "tiny",
        "recipe": "config/recipes/demo_lora.yaml",
        "overrides": {"training": {"max_steps": 30}},
        "checkpoint_eval": {"every": 10},
        "select_checkpoint": select,
    }
    return {
        "experiment": "select",
        "base_models": {"tiny": {"build": "resources/demo/tiny_model.yaml"}},
        "runs": {"lora": {**run, **({"sweep": sweep} if sweep else {})}},
        "benchmarks": [REPORTED],
    }


def test_a_run_chooses_among_its_kept_steps_and_its_last_by_a_validation_benchmark(caplog):
    exp = load_experiment(experiment({"benchmark": VALIDATION, "metric": "acc"}))
    run = exp.runs["lora"]
    assert run.selection == Objective("acc", "maximize", "demo_arith_mc_val", "demo_arith_mc_val")
    assert run.model_dir == "results/runs/lora/selected" and list(exp.validation_benchmarks) == ["demo_arith_mc_val"]
    assert exp.step_evaluations("lora") == [
        (step, bench) for step in ("10", "20", FINAL_STEP) for bench in ("demo_arith_mc", "demo_arith_mc_val")
    ]
    assert not any("selection bias" in r.getMessage() for r in caplog.records)


def test_choosing_by_a_reported_benchmark_warns_once_per_run_of_the_config(caplog):
    exp = load_experiment(experiment({"benchmark": REPORTED, "metric": "acc"}, sweep={"peft.lora_r": [4, 8]}))
    assert {run.selection.benchmark for run in exp.runs.values()} == {"demo_arith_mc"}
    warnings = [r.getMessage() for r in caplog.records if "selection bias" in r.getMessage()]
    assert len(warnings) == 1 and "runs.lora.select_checkpoint.benchmark" in warnings[0]


def test_the_best_step_wins_and_a_tie_goes_to_the_least_trained():
    assert choose(ACC, {10: 0.3, 20: 0.5, 30: 0.4}) == 20
    assert choose(ACC, {10: 0.5, 20: 0.5, 30: 0.4}) == 10
    assert choose(Objective("perplexity", "minimize", "val", "val"), {10: 3.0, 20: 2.0, 30: 2.5}) == 20


def test_a_step_without_a_finite_score_is_never_chosen():
    assert choose(ACC, {10: math.nan, 20: 0.1}) == 20
    with pytest.raises(SystemExit, match="no step has a finite val/acc"):
        choose(ACC, {10: math.nan, 20: None})


def _evaluation(folder, acc):
    folder.mkdir(parents=True)
    results = {"results": {"val": {"alias": "val", "acc,none": acc}}, "n-samples": {"val": {"effective": 20}}}
    (folder / "results.json").write_text(json.dumps(results))
    return str(folder)


def test_the_chosen_full_model_is_linked_with_a_record_of_why(tmp_path):
    candidates = []
    for step, acc in (("10", 0.4), ("20", 0.6), (FINAL_STEP, 0.5)):
        model = tmp_path / "models" / step
        model.mkdir(parents=True)
        (model / "model.safetensors").write_text(f"weights of step {step}")
        evaluation = _evaluation(tmp_path / "eval" / step, acc)
        candidates.append({"step": step, "evaluation": evaluation, "model": str(model), "adapter": None})
    summary = tmp_path / "train_summary.json"
    summary.write_text(json.dumps({"global_step": 30}))
    record = select(ACC, candidates, summary, tmp_path / "selected", reported=False)
    chosen = tmp_path / "selected"
    assert (chosen / "model.safetensors").read_text() == "weights of step 20"
    assert os.stat(chosen / "model.safetensors").st_ino == os.stat(tmp_path / "models/20/model.safetensors").st_ino
    assert json.loads((chosen / SELECTION_FILE).read_text()) == record
    assert record["step"] == 20 and record["scores"] == {"10": 0.4, "20": 0.6, "30": 0.5}
    assert "step 20 has the highest val/acc of the 3 steps evaluated" in record["why"] and not record["biased"]
    record = select(ACC, candidates, summary, tmp_path / "selected", reported=True)  # a rerun replaces it
    assert record["biased"] and "selection bias" in record["why"]


def test_a_step_training_ended_before_is_not_a_candidate(tmp_path):
    from koaml.snapshots import NOT_REACHED

    candidates = []
    for step, acc in (("10", 0.4), ("40", None), (FINAL_STEP, 0.5)):
        model = tmp_path / "models" / step
        model.mkdir(parents=True)
        if acc is None:  # epochs made 25 steps: step 40's evaluation stands for a step not reached
            (tmp_path / "eval" / step).mkdir(parents=True)
            (tmp_path / "eval" / step / NOT_REACHED).write_text(json.dumps({"step": 40, "last_step": 25}))
            evaluation = str(tmp_path / "eval" / step)
        else:
            evaluation = _evaluation(tmp_path / "eval" / step, acc)
        candidates.append({"step": step, "evaluation": evaluation, "model": str(model), "adapter": None})
    summary = tmp_path / "train_summary.json"
    summary.write_text(json.dumps({"global_step": 25}))
    record = select(ACC, candidates, summary, tmp_path / "selected", reported=False)
    assert record["step"] == 25 and record["scores"] == {"10": 0.4, "25": 0.5}
    assert "of the 2 steps evaluated (10: 0.4, 25: 0.5); training ended before step 40" in record["why"]


def test_an_evaluated_adapter_is_the_chosen_steps(tmp_path):
    from koaml.selection import chosen_adapter

    (tmp_path / "selected").mkdir()
    (tmp_path / "selected" / SELECTION_FILE).write_text(json.dumps({"step": 10, "adapter": "trained/steps/10"}))
    assert chosen_adapter(str(tmp_path / "selected")) == "trained/steps/10"
    assert chosen_adapter("trained") == "trained" and chosen_adapter(None) is None


def test_evaluate_adapters_follows_the_selected_step_and_a_searchs_best_trial():
    config = experiment({"benchmark": VALIDATION, "metric": "acc"})
    config["evaluate_adapters"] = True
    config["runs"]["lr"] = {
        "base": "tiny",
        "recipe": "config/recipes/demo_lora.yaml",
        "search": {"space": {"training.learning_rate": {"type": "loguniform", "low": 1e-4, "high": 1e-2}},
                   "objective": {"benchmark": VALIDATION, "metric": "acc"}, "n_trials": 2},
    }  # fmt: skip
    exp = load_experiment(config)
    assert exp.adapter_models == {"lora_adapter": "lora", "lr_adapter": "lr_t1"}
    assert ("tiny", "lr_adapter") in exp.comparisons and "lr_adapter" in exp.evaluated_models
