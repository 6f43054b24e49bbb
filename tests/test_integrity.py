"""Finished outputs are verifiable: damage after a job finished is named, never compared, never trusted."""

import json
import os
import shutil

import pandas as pd
import pytest
import yaml
from conftest import dry_run, planned_jobs, snakemake
from test_compare import results_dir

from koaml.compare import compare
from koaml.config import load_experiment
from koaml.configfiles import ConfigError, load_yaml
from koaml.integrity import MARKER, check_finished_outputs, damage, mark_complete


def marked(tmp_path, name, **scores):
    folder = results_dir(tmp_path, name, **scores)
    mark_complete(folder)
    return folder


MC = [1, 0] * 50


def test_an_intact_folder_passes_and_each_kind_of_damage_is_named(tmp_path):
    folder = marked(tmp_path, "ok", acc=0, em=0.5, mc_items=MC)
    assert damage(folder) is None and damage(folder, thorough=True) is None
    assert json.loads((tmp_path / "ok" / MARKER).read_text())["files"].keys() == {"results.json", "samples_mc.jsonl"}

    os.remove(tmp_path / "ok/results.json")
    assert damage(folder) == "results.json is missing"

    folder = marked(tmp_path, "truncated", acc=0, em=0.5, mc_items=MC)
    samples = tmp_path / "truncated/samples_mc.jsonl"
    samples.write_text(samples.read_text()[:100])
    assert damage(folder).startswith("samples_mc.jsonl changed since it was written (100 bytes, written ")

    folder = marked(tmp_path, "edited", acc=0, em=0.5, mc_items=MC)
    results = tmp_path / "edited/results.json"
    stat = results.stat()
    results.write_text(results.read_text().replace('"acc,none": 0.5', '"acc,none": 0.9'))  # same size
    assert damage(folder) == "results.json changed since it was written (its SHA-256 differs)"  # new mtime
    os.utime(results, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # an edit that kept the time
    assert damage(folder) is None, "the cheap check trusts an unchanged size and time"
    assert damage(folder, thorough=True) == "results.json changed since it was written (its SHA-256 differs)"

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / MARKER).write_text("{not json")
    assert damage(tmp_path / "broken") == f"{MARKER} is damaged"


def test_folders_without_a_marker_have_nothing_to_check(tmp_path):
    """Written before koa-ml marked its outputs, or by lm-eval itself: compare shows what they lack as missing."""
    assert damage(results_dir(tmp_path, "legacy", acc=0.5, em=0.5)) is None
    assert damage(tmp_path / "never-ran") is None


def test_a_damaged_evaluation_is_shown_and_never_compared(tmp_path):
    base = marked(tmp_path, "base", acc=0, em=0.0, mc_items=[0] * 100)
    run = marked(tmp_path, "run", acc=0, em=0.5, mc_items=[1] * 100)
    assert (compare(run, base).status == "ok").all()

    os.remove(tmp_path / "run/results.json")  # the samples file is still there
    table = compare(run, base)
    assert (table.status == "damaged").all()
    assert (table.reason == f"{run}: results.json is missing").all()
    assert table.score.isna().all() and table.ci_low.isna().all() and table.p_value.isna().all()


def test_results_that_are_not_json_are_named(tmp_path):
    base = results_dir(tmp_path, "base", acc=0.25, em=0.0)
    run = results_dir(tmp_path, "run", acc=0.75, em=0.5)
    (tmp_path / "run/results.json").write_text('{"results": {"mc": ')
    table = compare(run, base)
    assert (table.status == "damaged").all()
    assert table.reason.iloc[0].startswith(f"{run}/results.json: not valid JSON (")


def fabricate_evaluations(workdir, models=("tiny", "tiny-lora", "tiny-qlora", "tiny-full")):
    """Finished, marked evaluation folders for the demo's models (no evaluation is run)."""
    for model in models:
        for bench in ("demo_arith_mc", "demo_arith_gen"):
            folder = workdir / "results/eval" / model / bench
            folder.parent.mkdir(parents=True, exist_ok=True)
            shutil.copytree(results_dir(workdir, f".{model}-{bench}", acc=0.5, em=0.5, mc_items=MC), folder)
            mark_complete(folder)


def test_the_workflow_stops_on_a_damaged_result_and_says_how_to_rerun_it(workflow_dir):
    fabricate_evaluations(workflow_dir)
    os.remove(workflow_dir / "results/eval/tiny-lora/demo_arith_mc/results.json")
    proc = dry_run(workflow_dir, check=False)
    assert proc.returncode != 0 and planned_jobs(proc.stdout) == []
    assert (
        "koa-ml: finished results were changed or deleted after they were written:\n"
        "  results/eval/tiny-lora/demo_arith_mc: results.json is missing\n"
        "Move them away to have them re-run (mv results/eval/tiny-lora/demo_arith_mc "
        "results/eval/tiny-lora/demo_arith_mc.damaged), or restore them from a backup." in proc.stdout
    )
    with pytest.raises(ConfigError, match=r"results/eval/tiny-lora/demo_arith_mc: results\.json is missing"):
        check_finished_outputs(load_experiment(load_yaml(workflow_dir / "config/config.yaml")), workflow_dir)


@pytest.mark.slow
def test_a_failing_compare_keeps_the_last_good_summary(workflow_dir):
    """Snakemake deletes the outputs of a failed job; the summary is update()d, so it comes back instead."""
    config = workflow_dir / "config/config.yaml"
    experiment = load_yaml(config)
    experiment["base_models"]["tiny2"] = experiment["base_models"]["tiny"]
    config.write_text(yaml.safe_dump({**experiment, "runs": {}}))  # two base models, compared side by side
    fabricate_evaluations(workflow_dir, models=("tiny", "tiny2"))
    only_compare = ("--allowed-rules", "compare", "benchmark_config", "--", "results/compare/summary.csv")
    snakemake(workflow_dir, *only_compare)
    good = (workflow_dir / "results/compare/summary.csv").read_text()
    assert "demo_arith_mc" in good

    samples = workflow_dir / "results/eval/tiny2/demo_arith_mc/samples_mc.jsonl"
    samples.write_text(samples.read_text().replace('"doc_id"', '"id"'))  # an edit compare cannot read
    os.remove(workflow_dir / "results/eval/tiny2/demo_arith_mc" / MARKER)  # ... in a folder without a marker
    proc = snakemake(workflow_dir, "--forcerun", "compare", *only_compare, check=False)
    assert proc.returncode != 0 and "Restored previous version of results/compare/summary.csv" in proc.stdout
    assert (workflow_dir / "results/compare/summary.csv").read_text() == good
    assert not pd.read_csv(workflow_dir / "results/compare/summary.csv").empty
