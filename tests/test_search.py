"""Adaptive search (runs.<name>.search): its config, and asking and telling the study (koaml.search).

The end-to-end search (trials trained, killed, resumed, compared, reported) is tests/test_search_workflow.py; here
the real Optuna study is told objectives written as the training jobs write them, so that the sampler's logic
(rounds, determinism, idempotence, the best trial, the Pareto front) is checked in a second."""

import json
import math
import os
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest
import yaml

from koaml.config import load_experiment
from koaml.configfiles import ConfigError, load_yaml
from koaml.recipe import load_recipe
from koaml.search import Search, ask_round, journal_file, open_study, sizing_point, summarize, trial_recipe

LR = {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2}
RANK = {"type": "categorical", "choices": [4, 16]}
VALIDATION = "config/benchmarks/demo_arith_mc_val.yaml"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def experiment(search: dict | None = None, **run) -> dict:
    spec = {
        "space": {"training.learning_rate": LR, "peft.lora_r": RANK},
        "objective": "eval_loss",
        "n_trials": 5,
        "parallel": 2,
    }
    spec.update(search or {})
    return {
        "experiment": "search",
        "base_models": {"tiny": {"build": "resources/demo/tiny_model.yaml"}},
        "runs": {"lr": {"base": "tiny", "recipe": "config/recipes/demo_lora.yaml", "search": spec, **run}},
        "benchmarks": ["config/benchmarks/demo_arith_mc.yaml"],
    }


def test_a_search_is_trials_in_rounds_and_its_best_is_compared_with_the_base():
    exp = load_experiment(experiment({"objective": {"benchmark": VALIDATION, "metric": "acc"}}))
    search = exp.searches["lr"]
    assert list(exp.runs) == search.trials == [f"lr_t{k}" for k in range(1, 6)]
    assert [search.round_trials(r) for r in range(1, search.rounds + 1)] == [
        ["lr_t1", "lr_t2"],
        ["lr_t3", "lr_t4"],
        ["lr_t5"],
    ]
    assert exp.evaluated_models == ["tiny", "lr"] and exp.comparisons == [("tiny", "lr")]  # trials: validation only
    assert list(exp.validation_benchmarks) == ["demo_arith_mc_val"] and list(exp.benchmarks) == ["demo_arith_mc"]
    assert search.objective.task == "demo_arith_mc_val" and search.objective.direction == "maximize"
    # before their parameters are asked, trials are sized at the space's largest point
    trial = exp.runs["lr_t1"].recipe
    assert (trial.training.learning_rate, trial.peft.lora_r) == (1.0e-2, 16)
    assert sizing_point({"x.y": {"type": "categorical", "choices": ["a", "b"]}}) == {"x.y": "a"}


def test_the_validation_benchmark_is_fetched_for_offline_nodes_too():
    from koaml.fetch import requirements

    exp = load_experiment(experiment({"objective": {"benchmark": VALIDATION, "metric": "acc"}}))
    assert set(requirements(exp)["benchmarks"]) == {"demo_arith_mc", "demo_arith_mc_val"}


def test_the_study_is_identified_by_what_decides_its_trials():
    base = load_experiment(experiment()).searches["lr"]
    more_trials = load_experiment(experiment({"n_trials": 9})).searches["lr"]
    other_seed = load_experiment(experiment({"seed": 1})).searches["lr"]
    other_recipe = load_experiment(experiment(overrides={"training": {"max_steps": 3}})).searches["lr"]
    assert base.study_name == more_trials.study_name  # raising n_trials continues the search
    assert len({base.study_name, other_seed.study_name, other_recipe.study_name}) == 3
    assert Search.from_dict(yaml.safe_load(yaml.safe_dump(base.as_dict()))) == base


def test_an_objective_on_a_reported_benchmark_warns_of_selection_bias(caplog):
    load_experiment(experiment({"objective": {"benchmark": "config/benchmarks/demo_arith_mc.yaml", "metric": "acc"}}))
    assert any("selection bias" in r.getMessage() for r in caplog.records if r.name == "koaml")


def test_the_direction_follows_the_metrics_higher_is_better(tmp_path):
    """Without ``direction``, a metric lm-eval marks lower-is-better is minimized; a task reporting a metric under
    several filters needs ``filter``."""
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    task = yaml.safe_load(Path("resources/demo/tasks/demo_arith_mc_val.yaml").read_text())
    task.update(task="brier_val", metric_list=[{"metric": "brier_score"}])
    (tasks / "brier.yaml").write_text(yaml.safe_dump(task))
    task.update(task="filtered_val", filter_list=[{"name": n, "filter": [{"function": "take_first"}]} for n in "ab"])
    (tasks / "filtered.yaml").write_text(yaml.safe_dump(task))
    bench = yaml.safe_load(Path(VALIDATION).read_text())
    for name in ("brier_val", "filtered_val"):
        bench.update(include_path=str(tasks), tasks=[{"task": name}])
        (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(bench))
    objective = {"benchmark": str(tmp_path / "brier_val.yaml"), "metric": "brier_score"}
    assert load_experiment(experiment({"objective": objective})).searches["lr"].objective.direction == "minimize"
    objective = {"benchmark": str(tmp_path / "filtered_val.yaml"), "metric": "brier_score"}
    with pytest.raises(ConfigError, match=r"objective.filter: .* reports 'brier_score' under several filters \(a, b\)"):
        load_experiment(experiment({"objective": objective}))
    assert (
        load_experiment(experiment({"objective": {**objective, "filter": "b"}})).searches["lr"].objective.filter == "b"
    )


# --- the study, told what training jobs write ----------------------------------------------------------------


def loss(params: dict) -> float:
    """A made-up objective with its minimum at learning rate 1e-3, rank 16 a little better."""
    return (math.log10(params["training.learning_rate"]) + 3) ** 2 + (0.0 if params["peft.lora_r"] == 16 else 0.3)


def run_search(search: Search, hours: dict | None = None) -> dict[str, dict]:
    """Every round asked, each trial "trained": its resolved config and the summary a training job writes."""
    asked = {}
    for r in range(1, search.rounds + 1):
        earlier = [t for k in range(1, r) for t in search.round_trials(k)]
        round_yaml = ask_round(search, r, search.round_trials(r), earlier, journal_file(search.name))
        for trial, params in round_yaml["trials"].items():
            asked[trial] = params
            folder = f"results/runs/{trial}"
            (Path(folder) / "trained").mkdir(parents=True)
            (Path(folder) / "config.yaml").write_text(yaml.safe_dump(trial_recipe(search, round_yaml, trial)))
            summary = {"final_eval_loss": loss(params), "gpu_hours": (hours or {}).get(trial, 1.0), "wall_time_s": 60}
            (Path(folder) / "trained/train_summary.json").write_text(json.dumps(summary))
    return asked


@pytest.fixture
def search(tmp_path):
    from conftest import REPO

    exp = load_experiment(experiment({"n_trials": 8, "seed": 3}))
    os.chdir(tmp_path)
    (tmp_path / "config").symlink_to(REPO / "config")
    (tmp_path / "resources").symlink_to(REPO / "resources")
    return exp.searches["lr"]


def test_the_same_seed_and_objectives_ask_the_same_trials(search, tmp_path, monkeypatch):
    first = run_search(search)
    for name in ("again", "other-seed"):
        (tmp_path / name).mkdir()
        for link in ("config", "resources"):
            (tmp_path / name / link).symlink_to(tmp_path / link)
    monkeypatch.chdir(tmp_path / "again")
    assert run_search(search) == first
    monkeypatch.chdir(tmp_path / "other-seed")
    assert run_search(replace(search, seed=4)) != first
    assert len({round(p["training.learning_rate"], 12) for p in first.values()}) == 8  # a round's trials differ


def test_asking_again_returns_the_trials_asked_and_duplicates_nothing(search):
    first = ask_round(search, 1, search.round_trials(1), [], journal_file("lr"))
    again = ask_round(search, 1, search.round_trials(1), [], journal_file("lr"))
    assert again == first
    study = open_study(search, journal_file("lr"))
    assert [t.user_attrs["name"] for t in study.trials] == ["lr_t1", "lr_t2"]
    # an ask killed between asking and naming its trial leaves an unnamed trial: failed, not sampled around
    study.ask()
    run_search_rounds_after_first(search)
    states = {
        t.user_attrs.get("name", "(unnamed)"): t.state.name for t in open_study(search, journal_file("lr")).trials
    }
    assert states.pop("(unnamed)") == "FAIL" and set(states) == set(search.trials[:4])


def run_search_rounds_after_first(search):
    for trial in search.round_trials(1):
        folder = Path(f"results/runs/{trial}/trained")
        folder.mkdir(parents=True)
        (folder / "train_summary.json").write_text(json.dumps({"final_eval_loss": 1.0}))
    ask_round(search, 2, search.round_trials(2), search.round_trials(1), journal_file("lr"))


def test_the_summary_names_the_best_trial_and_its_recipe(search, tmp_path):
    asked = run_search(search)
    best = summarize(search, search.trials, journal_file("lr"), "results/search/lr")
    losses = {trial: loss(params) for trial, params in asked.items()}
    assert best["trial"] == min(losses, key=losses.get) and best["objective"] == pytest.approx(min(losses.values()))
    trials = (tmp_path / "results/search/lr/trials.csv").read_text().splitlines()
    assert len(trials) == 1 + 8 and all(",COMPLETE," in row for row in trials[1:])
    recipe = load_recipe(tmp_path / "results/search/lr/best.yaml")  # ready to use as a recipe
    assert recipe.training.learning_rate == pytest.approx(asked[best["trial"]]["training.learning_rate"])
    assert (tmp_path / "results/search/lr/best_model.txt").read_text().strip() == f"results/runs/{best['trial']}/merged"
    importances = load_yaml(tmp_path / "results/search/lr/importances.json")
    assert set(importances) == {"training.learning_rate", "peft.lora_r"}
    cost = load_yaml(tmp_path / "results/search/lr/train_summary.json")
    assert cost == {"trials": 8, "wall_time_s": 8 * 60, "gpu_hours": 8.0}  # every trial's, for the summary table


def test_a_cost_objective_gives_a_pareto_front(search):
    costly = replace(search, cost="gpu_hours")
    hours = {trial: float(k) for k, trial in enumerate(costly.trials, 1)}  # later trials cost more
    run_search(costly, hours)
    best = summarize(costly, costly.trials, journal_file("lr"), "results/search/lr")
    table = pd.read_csv("results/search/lr/trials.csv")
    front = table[table.pareto]
    assert best["pareto"] and "lr_t1" in set(front.trial)  # the cheapest trial is on the front
    for _, row in front.iterrows():  # no trial beats a front trial on both objectives
        assert not ((table.objective < row.objective) & (table.cost < row.cost)).any()


@pytest.mark.slow  # trains (two steps of a poisoned tiny model, in this process)
def test_a_trial_that_diverges_is_told_failed_and_the_search_goes_on(search, tmp_path, tiny_model):
    from conftest import REPO, poisoned_copy, train_here

    recipe = load_recipe(REPO / "config/recipes/demo_lora.yaml", {"training": {"max_steps": 2, "logging_steps": 1}})
    trained = train_here(recipe, poisoned_copy(tiny_model, tmp_path / "nan"), tmp_path / "diverged", search_trial=True)
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["diverged"].startswith("loss is nan, grad_norm is nan at step 1")  # a trial's divergence is no error
    ask_round(search, 1, search.round_trials(1), [], journal_file("lr"))
    for trial, folder in (("lr_t1", trained), ("lr_t2", None)):
        Path(f"results/runs/{trial}/trained").mkdir(parents=True)
        text = (folder / "train_summary.json").read_text() if folder else json.dumps({"final_eval_loss": 1.0})
        Path(f"results/runs/{trial}/trained/train_summary.json").write_text(text)
    ask_round(search, 2, search.round_trials(2), search.round_trials(1), journal_file("lr"))
    states = {t.user_attrs["name"]: t.state.name for t in open_study(search, journal_file("lr")).trials}
    assert states == {"lr_t1": "FAIL", "lr_t2": "COMPLETE", "lr_t3": "RUNNING", "lr_t4": "RUNNING"}
