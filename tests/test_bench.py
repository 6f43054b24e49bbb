"""Each bench script runs in smoke mode (tiny sizes, one repeat) and writes JSON with its expected fields.

Only the shape of the results is checked: speed is measured by the scripts themselves, never asserted here.
"""

import json
import os
import subprocess
import sys

import pytest
from conftest import REPO


def bench(script: str, tmp_path, *args: str, name: str | None = None) -> dict:
    """Run bench/<script>.py in smoke mode; its result ``<name>.json`` (default: the script's name)."""
    name = name or script
    env = dict(os.environ, KOAML_BENCH_OUT=str(tmp_path), KOAML_BENCH_SMOKE="1")
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / f"{script}.py"), "--smoke", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((tmp_path / f"{name}.json").read_text())
    assert result["summary"] and result["summary"] in proc.stdout, "a bench script prints its figure, the README's"
    assert result["smoke"] is True and result["machine"]["cpus"] >= 1 and "shared" in result["machine"]["note"]
    return result


def test_gpu_throughput_skips_cleanly_without_a_gpu(tmp_path):
    import torch

    result = bench("gpu_throughput", tmp_path)
    if torch.cuda.is_available():
        assert {"tokens_per_s", "mfu", "model_tflops"} <= set(result["packed"]) and result["device"]
    else:
        assert "no CUDA GPU" in result["skipped"]


@pytest.mark.slow
def test_plan_dag(tmp_path):
    result = bench("plan_dag", tmp_path)
    assert result["jobs"]["koaml"] > result["runs"] and result["ratio"] > 0
    assert len(result["all_s"]["koaml"]) == len(result["all_s"]["bare"]) == result["repeats"]


@pytest.mark.slow
def test_plan_dag_sweep(tmp_path):
    result = bench("plan_dag", tmp_path, "--sweep", name="plan_dag_sweep")
    assert result["runs"] == 8 and result["jobs"]["koaml"] > 8 * 4 and result["ratio"] > 0


@pytest.mark.slow
def test_noop_rerun(tmp_path, demo_workflow, monkeypatch):
    monkeypatch.setenv("KOAML_BENCH_FINISHED", str(demo_workflow))
    result = bench("noop_rerun", tmp_path)
    assert result["koaml_s"] > 0 and result["bare_s"] > 0 and result["target_s"] == 3.0
    assert isinstance(result["target_met"], bool) and result["output_files"] > 0


@pytest.mark.slow
def test_packing_throughput(tmp_path):
    result = bench("packing_throughput", tmp_path)
    for variant in ("packed", "unpacked"):
        run = result[variant]
        assert run["tokens_per_s"] > 0 and run["steps"] == result["optimizer_steps"]
        assert all(run[k] > 0 for k in ("first_loss", "final_loss", "mean_loss"))
    assert result["packed"]["tokens_per_step"] > result["unpacked"]["tokens_per_step"], "packing fills the batches"
    assert result["speedup"] > 0 and result["packing_forced"] and result["data"]["rows"] > 0


@pytest.mark.slow
def test_eval_overhead(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("KOAML_TINY_MODEL", str(tiny_model))
    result = bench("eval_overhead", tmp_path)
    assert result["koaml_s"] > 0 and result["lm_eval_s"] > 0 and result["ratio"] > 0
    assert result["same_accuracy"], "koaml evaluate and raw lm_eval must score the model alike"
    assert result["task_index_saving_s"] > 0


@pytest.mark.slow
def test_search_vs_grid(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("KOAML_TINY_MODEL", str(tiny_model))
    result = bench("search_vs_grid", tmp_path)
    assert result["budget"] == 2 and len(result["best_so_far"]["tpe_seed0"]) == 2 and len(result["tpe_best"]) == 1
    assert result["best_so_far"]["grid"][-1] == result["grid_best"] <= result["best_so_far"]["grid"][0]


@pytest.mark.slow
def test_eval_grouping(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("KOAML_TINY_MODEL", str(tiny_model))
    result = bench("eval_grouping", tmp_path)
    assert result["separate_s"] > 0 and result["grouped_s"] > 0 and result["grouped_over_separate"] > 0
    assert result["same_scores"], "one model load for every suite must score as one job per suite does"


@pytest.mark.slow
def test_train_memory(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("KOAML_TINY_MODEL", str(tiny_model))
    result = bench("train_memory", tmp_path)
    assert set(result["methods"]) == {"lora"}  # --smoke trains one method; a full run all three
    for method in result["methods"].values():
        assert method["peak_rss_mb"] > result["baseline_rss_mb"] > 0 and method["training_rss_mb"] > 0
        assert method["steps"] == result["optimizer_steps"]
        assert method["estimate"] is None or method["estimate"]["total_mb"] > 0


@pytest.mark.slow
def test_train_overhead(tmp_path, tiny_model, monkeypatch):
    monkeypatch.setenv("KOAML_TINY_MODEL", str(tiny_model))
    result = bench("train_overhead", tmp_path)
    assert set(result["cases"]) == {"tiny_sft_lora"}  # --smoke: one case, once
    case = result["cases"]["tiny_sft_lora"]
    assert case["same_loss"], "koaml train and the bare TRL script must train alike: " + str(case["final_loss"])
    for side in ("koaml", "bare"):
        assert case[side]["train_runtime_s"] > 0 and case[side]["wall_s"] > case[side]["train_runtime_s"]
    assert case["train_runtime_ratio"] > 0 and isinstance(result["target_met"], bool)
    monkeypatch.syspath_prepend(str(REPO / "docs"))
    from make_figures import train_overhead_table  # the table docs/benchmarks.md shows

    assert f"| tiny_sft_lora | {case['koaml']['train_runtime_s']:.1f} s |" in train_overhead_table(result)


@pytest.mark.slow
def test_status_speed(tmp_path):
    result = bench("status_speed", tmp_path)
    assert result["fresh"] > 0 and result["half_done"] > 0 and result["target_s"] == 2.0
    assert len(result["all_s"]["fresh"]) == result["repeats"]


@pytest.mark.slow
def test_packing_real_model(tmp_path, smollm2, monkeypatch):
    monkeypatch.setenv("KOAML_SMOLLM2", str(smollm2))
    result = bench("packing_real_model", tmp_path)
    assert set(result["by_max_length"]) == {"64", "128"}
    for row in result["by_max_length"].values():
        assert row["packed_tokens_per_s"] > 0 and row["unpacked_tokens_per_s"] > 0 and row["predicted_speedup"] > 0
        assert row["auto"] in ("packed", "unpacked") and "auto" in row["auto_reason"]
    assert isinstance(result["auto_never_slower"], bool)


@pytest.mark.slow
def test_real_model_training(tmp_path, smollm2, monkeypatch):
    monkeypatch.setenv("KOAML_SMOLLM2", str(smollm2))
    result = bench("real_model_training", tmp_path)
    # --smoke trains full fine-tuning only (LoRA and QLoRA: tests/test_real_model.py)
    assert set(result["methods"]) == {"full"}
    for method in result["methods"].values():
        assert method["tokens_per_s"] > 0 and method["training_rss_mb"] > result["baseline_rss_mb"] > 0
        assert method["estimate"]["total_mb"] > 0 and all(
            r["steps"] == result["optimizer_steps"] for r in method["runs"]
        )


@pytest.mark.slow
def test_suite_time_times_the_fast_tier_and_lists_the_slowest_tests(tmp_path):
    result = bench("suite_time", tmp_path, name="suite_time_fast")
    assert result["passed"] and result["kind"] == "fast" and result["budget_s"] == 180
    assert "passed" in result["pytest_summary"] and 0 < result["pytest_s"] < result["seconds"]
    assert result["slowest"] and all(row["test"].startswith("tests/test_stats.py::") for row in result["slowest"])


@pytest.mark.slow
def test_gpu_check_dry_runs_every_step_of_the_gpu_path_on_the_cpu(tmp_path, tiny_model):
    env = dict(os.environ, KOAML_BENCH_OUT=str(tmp_path), KOAML_TINY_MODEL=str(tiny_model), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(REPO / "bench/gpu_check.sh"), "--dry"], env=env, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((tmp_path / "gpu_check.json").read_text())
    assert result["dry"] and result["failed_steps"] == [] and result["environment"]["device"] == "cpu"
    assert {r["run"] for r in result["training"]} == {
        f"{method}-64-{packing}" for method in ("lora", "qlora", "full") for packing in ("packed", "unpacked")
    }
    for run in result["training"]:
        assert run["steps"] == result["steps_per_run"] and run["tokens_per_s"] > 0 and run["estimate_mb"] > 0
    assert all(0 <= result["lm_eval"][model]["acc"] <= 1 for model in ("base", "lora"))
    assert result["attention_weight"]["device"] == "cpu" and result["attention_weight"]["samples"] > 0


def test_gpu_carry_takes_what_the_device_lacks():
    sys.path.insert(0, str(REPO / "bench"))
    from gpu_carry import DEVICE_PACKAGES, closure

    carried = closure()
    assert {"trl", "lm-eval", "bitsandbytes", "datasets"} <= set(carried) and "torch" in DEVICE_PACKAGES
    assert not set(carried) & DEVICE_PACKAGES


def test_the_bench_table_shows_each_measured_scripts_summary(tmp_path, monkeypatch):
    """docs/make_figures.py fills docs/benchmarks.md's bench table from bench/results/*.json: a measured run's summary
    replaces its row's result; a smoke run, or a script without a result, leaves the row as it is."""
    monkeypatch.syspath_prepend(str(REPO / "docs"))
    from make_figures import bench_table, section

    table = section((REPO / "docs/benchmarks.md").read_text(), "bench")
    (tmp_path / "status_speed.json").write_text(json.dumps({"summary": "0.50 s with nothing done", "smoke": False}))
    (tmp_path / "plan_dag.json").write_text(json.dumps({"summary": "smoke figures", "smoke": True}))
    regenerated, updated = bench_table(table, tmp_path)
    assert updated == ["status_speed"]
    changed = [(a, b) for a, b in zip(table.splitlines(), regenerated.splitlines(), strict=True) if a != b]
    assert len(changed) == 1 and changed[0][1].startswith("| `bench/status_speed.py` | `koaml status` on the 40 runs")
    assert changed[0][1].endswith("| 0.50 s with nothing done |")
