"""lm-eval on the tiny model: limit, per-sample logs, atomic results."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO

from koaml.evaluate import evaluate
from koaml.io import write_yaml
from koaml.recipe import load_benchmark


@pytest.fixture
def bench_config(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)

    def make(name="demo_arith_mc", **overrides):
        path = tmp_path / f"{name}.yaml"
        write_yaml(path, load_benchmark(f"config/benchmarks/{name}.yaml", overrides))
        return str(path)

    return make


def test_limit_and_per_sample_logs(tmp_path, tiny_model, bench_config):
    results = evaluate(bench_config("demo_arith_gen", limit=5), str(tiny_model), str(tmp_path / "out"), threads=1)
    assert results["n-samples"]["demo_arith_gen"]["effective"] == 5
    samples = [json.loads(line) for line in (tmp_path / "out/samples_demo_arith_gen.jsonl").read_text().splitlines()]
    assert len(samples) == 5 and all("exact_match" in s and "resps" in s for s in samples)
    saved = json.loads((tmp_path / "out/results.json").read_text())
    assert saved["results"]["demo_arith_gen"]["exact_match,first-number"] == sum(s["exact_match"] for s in samples) / 5
    assert "samples" not in saved
    protocol = json.loads((tmp_path / "out/protocol.json").read_text())["demo_arith_gen"]
    assert protocol["generation_kwargs"] == {"until": ["\n", "</s>"], "do_sample": False, "max_gen_toks": 8}
    assert protocol["num_fewshot"] == 0 and protocol["set_by_benchmark"] == []  # the task's own settings ran
    assert (protocol["metrics"], protocol["filters"], protocol["apply_chat_template"]) == (
        ["exact_match"], ["first-number"], False)  # fmt: skip


@pytest.mark.slow
def test_killed_evaluation_leaves_no_result(tmp_path, tiny_model, bench_config):
    cmd = [
        sys.executable,
        "-m",
        "koaml.cli",
        "evaluate",
        "--config",
        bench_config(),
        "--model",
        str(tiny_model),
        "--out",
        str(tmp_path / "out"),
    ]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True, cwd=REPO
    )
    deadline = time.time() + 300
    for line in proc.stderr:  # kill it while lm-eval runs the model, before any result is written
        assert time.time() < deadline
        if "Running loglikelihood requests" in line:
            break
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_local_tasks_skip_indexing_lm_evals_own_tasks(bench_config, monkeypatch):
    import lm_eval.tasks

    from koaml.configfiles import load_yaml
    from koaml.evaluate import task_manager

    built = []
    real = lm_eval.tasks.TaskManager

    class Spy(real):
        def __init__(self, *args, **kwargs):
            built.append(kwargs.get("include_defaults", True))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(lm_eval.tasks, "TaskManager", Spy)
    local = load_yaml(bench_config())
    assert "demo_arith_mc" in task_manager(local).all_subtasks and built == [False]
    built.clear()
    mixed = dict(local, tasks=[*local["tasks"], {**local["tasks"][0], "task": "arc_easy"}])
    manager = task_manager(mixed)
    assert built == [False, True], "a task outside include_path needs lm-eval's own index"
    assert {"demo_arith_mc", "arc_easy"} <= set(manager.all_subtasks)


@pytest.mark.parametrize(
    ("gpus", "backend", "expected"),
    [
        (0, "hf", {"device": "cpu"}),
        (1, "vllm", {}),
        (2, "hf", {"parallelize": True}),
        (4, "vllm", {"tensor_parallel_size": 4}),
    ],
)
def test_a_model_too_big_for_one_gpu_is_spread_over_the_jobs_gpus(gpus, backend, expected, monkeypatch):
    import torch

    from koaml.evaluate import multi_gpu_kwargs

    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert multi_gpu_kwargs(backend) == expected


def test_one_off_evaluation_of_a_benchmark_file_as_written(tiny_model, workflow_dir, monkeypatch, capsys):
    """The guide's `evaluate.py --model X --tasks Y --limit 10`: a shipped benchmark by name, defaults filled
    in (a file as written once raised KeyError: 'allow_code_execution'), results under results/eval/<model>/,
    and each task's scores printed (as lm-eval prints its table); evaluate-model prints them too."""
    from koaml.cli import main

    monkeypatch.chdir(workflow_dir)
    run = workflow_dir / "results/runs/mine/trained"
    run.parent.mkdir(parents=True)
    run.symlink_to(tiny_model)
    assert main(["evaluate", "--config", "demo_arith_mc", "--model", "run:mine", "--limit", "4"]) == 0
    results = json.loads((workflow_dir / "results/eval/run-mine/demo_arith_mc/results.json").read_text())
    assert (
        results["n-samples"]["demo_arith_mc"]["effective"] == 4 and results["model_path"] == "results/runs/mine/trained"
    )
    score = results["results"]["demo_arith_mc"]["acc,none"]
    printed = capsys.readouterr().out
    assert "run:mine on demo_arith_mc (results/eval/run-mine/demo_arith_mc):" in printed
    assert "| task | metric | value | 95% CI | n | protocol |" in printed
    assert re.search(
        rf"\| demo_arith_mc \| acc \| {score:.4f} \| \[[0-9.]+, [0-9.]+\] \| 4 \| 0-shot, log-likelihood \|", printed
    )
    assert (
        main(
            [
                "evaluate",
                "--config",
                "config/benchmarks/demo_arith_gen.yaml",
                "--model",
                str(tiny_model),
                "--limit",
                "2",
                "--out",
                "here",
            ]
        )
        == 0
    )
    assert (workflow_dir / "here/samples_demo_arith_gen.jsonl").read_text().count("\n") == 2
    assert "| demo_arith_gen | exact_match (first-number) |" in capsys.readouterr().out
    write_yaml("resolved.yaml", load_benchmark("config/benchmarks/demo_arith_gen.yaml", {"limit": 2}))
    assert main(["evaluate-model", "--model", str(tiny_model), "--suite", "resolved.yaml", "here"]) == 0
    printed = capsys.readouterr().out  # up to date: kept, and its scores printed
    assert f"{tiny_model} on resolved (here):" in printed and "(kept: up to date)" in printed
    assert "| demo_arith_gen | exact_match (first-number) |" in printed
    assert main(["evaluate", "--config", "demo_arith", "--model", str(tiny_model)]) == 2
    assert main(["evaluate", "--config", "demo_arith_mc", "--model", "run:other"]) == 2
