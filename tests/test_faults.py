"""Faults: a second workflow on the same folder, a failed rerun, a failed job among many, partial results."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import copy_results, dry_run, planned_jobs, snakemake

pytestmark = pytest.mark.slow

EVAL_TARGET = "results/eval/tiny/demo_arith_mc"
LIMIT = ["--config", "benchmark_overrides={limit: 20}"]


def test_a_second_workflow_is_refused_and_a_failed_rerun_keeps_the_earlier_results(workflow_dir):
    """While one workflow evaluates, a second one on the same folder is refused and the first finishes unharmed;
    then a rerun that fails (a data file only the job reads is broken) restores the earlier results."""
    bin_dir = Path(sys.executable).parent
    first = subprocess.Popen([str(bin_dir / "snakemake"), "--cores", "1", EVAL_TARGET, *LIMIT], cwd=workflow_dir,
                             env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    locks = workflow_dir / ".snakemake/locks"
    deadline = time.time() + 120
    while not (locks.is_dir() and any(locks.iterdir())):
        assert first.poll() is None and time.time() < deadline, "the first workflow never locked the folder"
        time.sleep(0.2)
    second = snakemake(workflow_dir, EVAL_TARGET, *LIMIT, check=False)
    assert second.returncode != 0
    assert "Directory cannot be locked" in second.stdout and "--unlock" in second.stdout
    assert first.wait(timeout=600) == 0, first.stdout.read()
    result = workflow_dir / EVAL_TARGET / "results.json"
    before = json.loads(result.read_text())  # the first one finished unharmed

    task = workflow_dir / "resources/demo/tasks/demo_arith_mc.yaml"  # an input of the evaluation: it reruns
    (workflow_dir / "resources/demo/data/broken.jsonl").write_text("{not json\n")  # only the job reads it
    task.write_text(task.read_text().replace("data/arith_test.jsonl", "data/broken.jsonl"))
    failed = snakemake(workflow_dir, EVAL_TARGET, *LIMIT, check=False)
    assert failed.returncode != 0 and "Error in rule evaluate" in failed.stdout
    assert "Restored previous version" in failed.stdout
    assert json.loads(result.read_text()) == before


def test_after_one_job_fails_a_rerun_redoes_only_that_job(workflow_dir):
    """tiny-full's prepare_data fails on what only the job can find (prompts that fill the model's context, which
    needs the tokenizer the workflow builds); the other runs' jobs finish. Once the data is fixed, only the failed
    job runs again."""
    targets = [f"results/data/{run}" for run in ("tiny-lora", "tiny-qlora", "tiny-full")]
    data = workflow_dir / "full_train.jsonl"
    overlong = {"prompt": "Question: " + "very long " * 40, "completion": " x"}
    data.write_text("".join(json.dumps(overlong) + "\n" for _ in range(3)))
    config = workflow_dir / "config/config.yaml"
    config.write_text(config.read_text().replace(
        "tiny-full:  {base: tiny, recipe: config/recipes/demo_full.yaml}",
        "tiny-full:  {base: tiny, recipe: config/recipes/demo_full.yaml, "
        "overrides: {data: {train_dataset: {dataset_name: full_train.jsonl}}}}",
    ))  # fmt: skip
    failed = snakemake(workflow_dir, "--keep-going", *targets, check=False)
    assert failed.returncode != 0 and "Error in rule prepare_data" in failed.stdout
    assert "every row was truncated away" in (workflow_dir / "logs/prepare_data/tiny-full.log").read_text()
    assert not (workflow_dir / "results/data/tiny-full").exists()
    done = {
        run: (workflow_dir / f"results/data/{run}/stats.json").stat().st_mtime for run in ("tiny-lora", "tiny-qlora")
    }

    data.write_text((workflow_dir / "resources/demo/data/arith_train.jsonl").read_text())
    assert planned_jobs(dry_run(workflow_dir, *targets).stdout) == [("prepare_data", "run=tiny-full")]
    snakemake(workflow_dir, *targets)
    assert {run: (workflow_dir / f"results/data/{run}/stats.json").stat().st_mtime for run in done} == done


def test_failed_jobs_leave_a_partial_summary_and_report_then_the_final_one(demo_workflow, tmp_path):
    """With --keep-going, what has finished is summarized in results/partial/, clearly partial, with the
    failed run's rows pending and the failure's reason; the final table appears only once everything ran.
    On a copy of the finished demo: its full fine-tuning run and base evaluation are reused, a new run fails."""
    import pandas as pd
    import yaml

    workdir = copy_results(demo_workflow, tmp_path / "demo")
    short = {"training": {"max_steps": 2, "save_steps": 2}}
    experiment = {
        "experiment": "partial",
        "base_models": {"tiny": {"build": "resources/demo/tiny_model.yaml"}},
        "runs": {
            "tiny-full": {"base": "tiny", "recipe": "config/recipes/demo_full.yaml"},
            "bad": {
                "base": "tiny",
                "recipe": "config/recipes/demo_full.yaml",
                "overrides": {"model": {"model_max_length": 8}, **short},
            },
        },
        "benchmarks": ["config/benchmarks/demo_arith_mc.yaml"],
    }
    (workdir / "exp.yaml").write_text(yaml.safe_dump(experiment))
    proc = snakemake(workdir, "--configfile", "exp.yaml", "--keep-going", check=False)
    assert proc.returncode != 0 and "results/partial/summary.md" in proc.stdout
    assert "rule train:" not in proc.stdout, "the finished run is reused"
    table = pd.read_csv(workdir / "results/partial/summary.csv")
    good, bad = table[table.run == "tiny-full"].iloc[0], table[table.run == "bad"].iloc[0]
    assert good.status == "ok" and pd.notna(good.p_value) and not table.complete.any()
    assert bad.status == "pending" and bad.reason.startswith("bad prepare failed: ") and "truncated away" in bad.reason
    assert "PARTIAL RESULTS: 1 of 2 rows are not finished" in (workdir / "results/partial/summary.md").read_text()
    assert "PARTIAL RESULTS" in (workdir / "results/partial/report.html").read_text()
    # the demo's summary, from its earlier complete run, is kept: a partial one never replaces a final one
    assert set(pd.read_csv(workdir / "results/compare/summary.csv").run) == {"tiny-lora", "tiny-qlora", "tiny-full"}

    experiment["runs"]["bad"]["overrides"] = short
    (workdir / "exp.yaml").write_text(yaml.safe_dump(experiment))
    snakemake(workdir, "--configfile", "exp.yaml")
    final = pd.read_csv(workdir / "results/compare/summary.csv")
    assert set(final.run) == {"tiny-full", "bad"}
    assert (final.status == "ok").all() and final.complete.all() and not (workdir / "results/partial").exists()
    assert "PARTIAL" not in (workdir / "results/report/index.html").read_text()
