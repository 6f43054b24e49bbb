"""End to end: the offline demo experiment trains, evaluates and compares for real; reruns are minimal."""

import json

import pandas as pd
import pytest
from conftest import CANARIES, planned_jobs, secret_leaks, snakemake

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def finished_demo(tmp_path_factory):
    """The demo experiment run once to completion in a scratch copy of the workflow, with secrets set."""
    import os

    from conftest import copy_workflow

    workdir = copy_workflow(tmp_path_factory.mktemp("demo"))
    saved = {name: os.environ.get(name) for name in CANARIES}
    os.environ.update(CANARIES)
    try:
        snakemake(workdir)
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    return workdir


def test_no_secret_leaks_into_outputs_logs_or_metadata(finished_demo):
    assert not secret_leaks(finished_demo), secret_leaks(finished_demo)


def test_summary_shows_fine_tuning_helped(finished_demo):
    table = pd.read_csv(finished_demo / "results/compare/summary.csv")
    assert set(table.run) == {"tiny-lora", "tiny-qlora", "tiny-full"}
    assert set(table.benchmark) == {"demo_arith_mc", "demo_arith_gen"}
    assert len(table) == 6 and (table.n == 200).all()
    full_mc = table[(table.run == "tiny-full") & (table.task == "demo_arith_mc")].iloc[0]
    assert full_mc.base_score < 0.4, "the untrained base should be near chance (25%)"
    assert full_mc.delta >= 0.20, f"full fine-tuning gained only {full_mc.delta:.3f}"
    assert (table.delta == table.score - table.base_score).all()
    assert full_mc.significant and full_mc.test == "mcnemar" and full_mc.ci_low > 0 and (table.status == "ok").all()
    assert "| tiny-full | tiny | demo_arith_mc |" in (finished_demo / "results/compare/summary.md").read_text()


def test_html_report_and_snakemake_report(finished_demo):
    page = (finished_demo / "results/report/index.html").read_text()
    assert "tiny-full" in page and page.count("data:image/png;base64,") == 3  # 2 benchmarks + losses
    assert 'src="http' not in page
    snakemake(finished_demo, "--report", "snakemake-report.html")
    assert (finished_demo / "snakemake-report.html").stat().st_size > 10_000


def test_every_job_wrote_its_log(finished_demo):
    """Each rule with a log writes it (the aggregation steps too, not only the shell commands)."""
    logs = finished_demo / "logs"
    assert "wrote results/compare/summary.csv" in (logs / "compare.log").read_text()
    assert "wrote results/report/index.html" in (logs / "report.log").read_text()
    for rule in ("build_base_model", "prepare_data", "train", "merge", "evaluate"):
        assert any(f.stat().st_size > 0 for f in (logs / rule).rglob("*.log")), rule


def test_scores_come_from_per_sample_logs(finished_demo):
    for model in ("tiny", "tiny-lora", "tiny-qlora", "tiny-full"):
        folder = finished_demo / "results/eval" / model / "demo_arith_mc"
        samples = [json.loads(line) for line in (folder / "samples_demo_arith_mc.jsonl").read_text().splitlines()]
        results = json.loads((folder / "results.json").read_text())
        assert len(samples) == 200
        mean = sum(s["acc"] for s in samples) / len(samples)
        assert results["results"]["demo_arith_mc"]["acc,none"] == pytest.approx(mean)


def test_runs_really_trained(finished_demo):
    for run, method in (("tiny-lora", "lora"), ("tiny-qlora", "qlora"), ("tiny-full", "full")):
        trained = finished_demo / "results/runs" / run / "trained"
        summary = json.loads((trained / "train_summary.json").read_text())
        assert summary["method"] == method and summary["global_step"] > 0
        losses = [e["loss"] for e in json.loads((trained / "log_history.json").read_text()) if "loss" in e]
        assert losses[-1] < losses[0] / 2
        assert (trained / ("adapter_config.json" if method != "full" else "config.json")).exists()
    qlora_cfg = json.loads((finished_demo / "results/runs/tiny-qlora/trained/adapter_config.json").read_text())
    assert qlora_cfg["peft_type"] == "LORA"
    assert not (finished_demo / "results/checkpoints/tiny-full").exists() or not any(
        (finished_demo / "results/checkpoints/tiny-full").iterdir()
    )
    stats = json.loads((finished_demo / "results/data/tiny-full/stats.json").read_text())
    assert stats["rows"] + stats["eval_rows"] == 3000 and stats["truncated_rows"] == 0


def test_second_run_does_nothing(finished_demo):
    proc = snakemake(finished_demo)
    assert "Nothing to be done" in proc.stdout


def test_editing_a_recipe_reruns_only_that_run(finished_demo):
    recipe = finished_demo / "config/recipes/demo_lora.yaml"
    original = recipe.read_text()
    recipe.write_text(original.replace("lora_dropout: 0.0", "lora_dropout: 0.1"))
    try:
        jobs = planned_jobs(snakemake(finished_demo, "-n").stdout)
    finally:
        recipe.write_text(original)
    assert jobs == sorted(
        [
            ("all", ""),
            ("compare", ""),
            ("report", ""),
            ("evaluate", "model=tiny-lora, bench=demo_arith_gen"),
            ("evaluate", "model=tiny-lora, bench=demo_arith_mc"),
            ("merge", "run=tiny-lora"),
            ("prepare_data", "run=tiny-lora"),
            ("run_config", "run=tiny-lora"),
            ("train", "run=tiny-lora"),
        ]
    )


def test_editing_a_benchmark_reruns_only_its_evaluations(finished_demo):
    bench = finished_demo / "config/benchmarks/demo_arith_gen.yaml"
    original = bench.read_text()
    bench.write_text(original.replace("per_device_batch_size: 32", "per_device_batch_size: 16"))
    try:
        jobs = planned_jobs(snakemake(finished_demo, "-n").stdout)
    finally:
        bench.write_text(original)
    assert jobs == sorted(
        [("all", ""), ("compare", ""), ("report", ""), ("benchmark_config", "bench=demo_arith_gen")]
        + [("evaluate", f"model={m}, bench=demo_arith_gen") for m in ("tiny", "tiny-lora", "tiny-qlora", "tiny-full")]
    )


def test_unmerged_adapter_evaluates_like_the_merged_model(finished_demo):
    jobs = planned_jobs(snakemake(finished_demo, "-n", "--config", "evaluate_adapters=true").stdout)
    assert sorted(r for r, _ in jobs) == ["all", "compare"] + ["evaluate"] * 4 + ["report"]
    snakemake(finished_demo, "--config", "evaluate_adapters=true")
    for bench, metric in (("demo_arith_mc", "acc"), ("demo_arith_gen", "exact_match")):
        merged = finished_demo / "results/eval/tiny-lora" / bench / f"samples_{bench}.jsonl"
        unmerged = finished_demo / "results/eval/tiny-lora_adapter" / bench / f"samples_{bench}.jsonl"
        scores = [[json.loads(line)[metric] for line in path.read_text().splitlines()] for path in (merged, unmerged)]
        agreement = sum(a == b for a, b in zip(*scores, strict=True)) / len(scores[0])
        assert agreement >= 0.99, f"{bench}: unmerged adapter agrees with the merged model on {agreement:.0%} of items"
    table = pd.read_csv(finished_demo / "results/compare/summary.csv")
    assert {"tiny-lora_adapter", "tiny-qlora_adapter"} <= set(table.run)


def test_killed_workflow_resumes_training_from_its_checkpoint(tmp_path):
    """Kill the whole workflow mid-training; the next run resumes the run from its checkpoint."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from conftest import copy_workflow

    workdir = copy_workflow(tmp_path)
    config = workdir / "config/config.yaml"
    config.write_text(
        config.read_text().split("  tiny-lora:")[0]
        + "  tiny-full:  {base: tiny, recipe: config/recipes/demo_full.yaml}\n"
        "benchmarks: [config/benchmarks/demo_arith_mc.yaml]\n"
    )
    overrides = "recipe_overrides={training: {max_steps: 300, save_steps: 40}}"
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    target = "results/runs/tiny-full/trained"
    cmd = [str(Path(sys.executable).parent / "snakemake"), "--cores", "2", target, "--config", overrides]
    proc = subprocess.Popen(
        cmd, cwd=workdir, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 600
    while not list((workdir / "results/checkpoints/tiny-full").glob("*/checkpoint-80/trainer_state.json")):
        assert proc.poll() is None and time.time() < deadline, "training ended before the checkpoint"
        time.sleep(0.5)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (workdir / "results/runs/tiny-full/trained").exists()
    snakemake(workdir, "--unlock")  # the killed controller left its lock, as after a power loss
    snakemake(workdir, target, "--rerun-incomplete", "--config", overrides)
    summary = json.loads((workdir / "results/runs/tiny-full/trained/train_summary.json").read_text())
    assert summary["global_step"] == 300 and int(summary["resumed_from"].rsplit("-", 1)[1]) >= 80
