"""An adaptive search run by the workflow end to end on the demo's tiny model: 4 trials in 2 rounds of 2, the
workflow killed (SIGKILL, as a lost login session) while round 2 trains, then unlocked and rerun. Nothing is lost
or run twice; the best trial beats the worst and is compared with the base; the report shows the search."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml
from conftest import ONE_THREAD_JOBS, copy_results, dry_run, planned_jobs, snakemake, venv_env
from workflow_copy import copy_workflow

pytestmark = pytest.mark.slow

SEARCH = {
    "experiment": "search-demo",
    "base_models": {"tiny": {"build": "resources/demo/tiny_model.yaml"}},
    "runs": {
        "lr": {
            "base": "tiny",
            "recipe": "config/recipes/demo_lora.yaml",
            # long enough after its first checkpoint for the kill to land while a round-2 trial trains
            "overrides": {"training": {"max_steps": 60, "save_steps": 6, "logging_steps": 6, "eval_steps": 30}},
            "search": {
                "space": {
                    "training.learning_rate": {"type": "loguniform", "low": 1.0e-4, "high": 3.0e-2},
                    "peft.lora_r": {"type": "categorical", "choices": [4, 16]},
                },
                "objective": "eval_loss",
                "n_trials": 4,
                "parallel": 2,
                "seed": 7,
            },
        }
    },
    "benchmarks": ["config/benchmarks/demo_arith_mc.yaml"],
    "benchmark_overrides": {"limit": 50},
}
TRIALS = [f"lr_t{k}" for k in range(1, 5)]


def checkpoint_of_round_two(workdir: Path) -> Path | None:
    """A checkpoint of a round-2 trial that is still training, once there is one."""
    if not (workdir / "results/search/lr/round2.yaml").is_file():
        return None
    for trial in ("lr_t3", "lr_t4"):
        found = list((workdir / f"results/checkpoints/{trial}").rglob("checkpoint-*/trainer_state.json"))
        if found and not (workdir / f"results/runs/{trial}/trained").exists():
            return found[0]
    return None


@pytest.fixture(scope="module")
def search_workflow(tmp_path_factory):
    """The search, killed mid-round 2 and rerun: (folder, round-1 summaries' mtimes at the kill, the trial killed)."""
    workdir = copy_workflow(tmp_path_factory.mktemp("search"))
    (workdir / "search.yaml").write_text(yaml.safe_dump(SEARCH, sort_keys=False))
    args = [
        str(Path(sys.executable).parent / "snakemake"),
        "--cores",
        "2",
        *ONE_THREAD_JOBS,
        "--configfile",
        "search.yaml",
    ]
    log = workdir / "killed.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            args, cwd=workdir, env=venv_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = time.time() + 600
            while (checkpoint := checkpoint_of_round_two(workdir)) is None:
                assert proc.poll() is None, f"the workflow ended before round 2 trained:\n{log.read_text()[-4000:]}"
                assert time.time() < deadline, log.read_text()[-4000:]
                time.sleep(0.1)
            round_one = {
                t: (workdir / f"results/runs/{t}/trained/train_summary.json").stat().st_mtime_ns for t in TRIALS[:2]
            }
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    killed = checkpoint.relative_to(workdir / "results/checkpoints").parts[0]
    snakemake(workdir, "--configfile", "search.yaml", "--unlock")
    snakemake(workdir, *ONE_THREAD_JOBS, "--rerun-incomplete", "--configfile", "search.yaml")
    return workdir, round_one, killed


def test_every_trial_ran_once_and_the_killed_one_resumed(search_workflow):
    import optuna

    workdir, round_one, killed = search_workflow
    trials = pd.read_csv(workdir / "results/search/lr/trials.csv")
    assert list(trials.trial) == TRIALS and (trials.state == "COMPLETE").all()
    assert list(trials["round"]) == [1, 1, 2, 2]
    storage = optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(workdir / "results/search/lr/journal.log"))
    )
    (study,) = storage.get_all_studies()
    told = optuna.load_study(study_name=study.study_name, storage=storage).trials
    assert sorted(t.user_attrs["name"] for t in told) == TRIALS  # asked once each, none lost, none duplicated
    for trial, mtime in round_one.items():  # finished trials were kept, not trained again
        assert (workdir / f"results/runs/{trial}/trained/train_summary.json").stat().st_mtime_ns == mtime
    summary = json.loads((workdir / f"results/runs/{killed}/trained/train_summary.json").read_text())
    assert summary["resumed_from"] and summary["global_step"] == 60  # resumed from its checkpoint
    for _, row in trials.iterrows():  # each trial trained with the parameters the study gave it
        recipe = yaml.safe_load((workdir / f"results/runs/{row.trial}/config.yaml").read_text())
        assert recipe["training"]["learning_rate"] == pytest.approx(row["training.learning_rate"])
        assert recipe["peft"]["lora_r"] == row["peft.lora_r"]


def test_the_best_trial_beats_the_worst_and_is_compared_with_the_base(search_workflow):
    from koaml.recipe import load_recipe

    workdir, _, _ = search_workflow
    trials = pd.read_csv(workdir / "results/search/lr/trials.csv")
    best = trials.loc[trials.objective.idxmin()]
    assert best.objective < trials.objective.max()
    for _, row in trials.iterrows():  # the objective is each trial's own final eval loss
        summary = json.loads((workdir / f"results/runs/{row.trial}/trained/train_summary.json").read_text())
        assert row.objective == pytest.approx(summary["final_eval_loss"])
    best_recipe = load_recipe(workdir / "results/search/lr/best.yaml")
    assert best_recipe.as_dict() == load_recipe(workdir / f"results/runs/{best.trial}/config.yaml").as_dict()
    assert (workdir / "results/search/lr/best_model.txt").read_text().strip() == f"results/runs/{best.trial}/merged"
    table = pd.read_csv(workdir / "results/compare/summary.csv")
    assert list(table.run) == ["lr"] and list(table.base_model) == ["tiny"] and (table.status == "ok").all()
    seconds = sum(
        json.loads((workdir / f"results/runs/{t}/trained/train_summary.json").read_text())["wall_time_s"]
        for t in TRIALS
    )
    assert table.train_hours.iloc[0] == pytest.approx(seconds / 3600, rel=1e-3)  # the search's cost: every trial
    log = (workdir / "logs/evaluate/lr/demo_arith_mc.log").read_text()
    assert f"results/runs/{best.trial}/merged" in log


def test_the_report_and_status_show_the_search(search_workflow):
    workdir, _, _ = search_workflow
    report = (workdir / "results/report/index.html").read_text()
    assert "<h2>Search</h2>" in report and "The best trial of runs.lr.search" in report
    plots = {p.name for p in (workdir / "results/report/plots").iterdir()}
    assert {"search_lr_history.png", "search_lr_importances.png"} <= plots
    status = subprocess.run(
        [str(Path(sys.executable).parent / "koaml"), "status", "--configfile", "search.yaml"],
        cwd=workdir, env=venv_env(), capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert all(f"{t}  " in status for t in TRIALS) and "search" in status
    assert "pending" not in status and "failed" not in status


def test_a_finished_search_plans_nothing_and_an_edited_space_starts_a_new_study(search_workflow, tmp_path):
    workdir, _, _ = search_workflow
    assert planned_jobs(dry_run(workdir, "--configfile", "search.yaml").stdout) == []
    edited = copy_results(workdir, tmp_path / "edited")
    config = yaml.safe_load((edited / "search.yaml").read_text())
    config["runs"]["lr"]["search"]["space"]["peft.lora_r"]["choices"] = [8, 16]
    (edited / "search.yaml").write_text(yaml.safe_dump(config))
    out = dry_run(edited, "--configfile", "search.yaml").stdout
    assert "runs.lr.search changed since study lr-" in out and "a new study" in out
    rules = [rule for rule, _ in planned_jobs(out)]
    assert rules.count("search_ask") == 2 and rules.count("train") == 4
