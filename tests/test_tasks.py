"""Benchmark task names are checked against lm-eval's own index before any job starts."""

import pytest
from conftest import REPO

from koaml.configfiles import ConfigError
from koaml.recipe import load_benchmark
from koaml.tasks import check_benchmark, task_index

GUIDE_TASKS = {
    "mmlu": ("mmlu", 5),
    "arc_easy": ("arc_easy", 25),
    "arc_challenge": ("arc_challenge", 25),
    "hellaswag": ("hellaswag", 10),
    "winogrande": ("winogrande", 5),
    "gsm8k": ("gsm8k", 5),
    "math": ("minerva_math", 4),
    "truthfulqa": ("truthfulqa_mc2", 0),
    "bbh": ("bbh_cot_fewshot", 3),
    "gpqa": ("gpqa_main_zeroshot", 0),
    "humaneval": ("humaneval", 0),
    "mbpp": ("mbpp", 3),
    "medqa": ("medqa_4options", 0),
    "pubmedqa": ("pubmedqa", 0),
}
CODE_BENCHMARKS = {"humaneval", "mbpp"}


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    monkeypatch.chdir(REPO)


@pytest.mark.parametrize("name", sorted(GUIDE_TASKS))
def test_guide_benchmarks_use_standard_tasks_and_shots(name):
    bench = load_benchmark(f"config/benchmarks/{name}.yaml")
    assert (bench["tasks"][0]["task"], bench["tasks"][0]["num_fewshot"]) == GUIDE_TASKS[name]
    assert bench["generation"]["temperature"] == 0.0


@pytest.mark.parametrize("path", sorted((REPO / "config/benchmarks").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_benchmark_resolves_to_known_tasks(path):
    bench = load_benchmark(path)
    if path.stem in CODE_BENCHMARKS:
        with pytest.raises(ConfigError, match="executes code written by the model; set allow_code_execution: true"):
            check_benchmark(str(path), bench)
        bench = bench.replace(allow_code_execution=True)
    check_benchmark(str(path), bench)


def test_unknown_task_gets_did_you_mean():
    bench = load_benchmark("config/benchmarks/gsm8k.yaml")
    bench["tasks"][0]["task"] = "gsm8kk"
    with pytest.raises(
        ConfigError, match=r"gsm8k.yaml: tasks.0.task: unknown lm-eval task 'gsm8kk'; did you mean 'gsm8k'"
    ):
        check_benchmark("config/benchmarks/gsm8k.yaml", bench)


def test_custom_tasks_are_found_in_include_path():
    bench = load_benchmark("config/benchmarks/demo_arith_mc.yaml")
    check_benchmark("demo", bench)
    bench = bench.replace(include_path="resources/demo/nope")
    with pytest.raises(ConfigError, match="include_path: resources/demo/nope: folder not found"):
        check_benchmark("demo", bench)


def test_index_is_cached_and_refreshed_when_custom_tasks_change(tmp_path):
    folder = tmp_path / "tasks"
    folder.mkdir()
    (folder / "a.yaml").write_text((REPO / "resources/demo/tasks/demo_arith_mc.yaml").read_text())
    assert "demo_arith_mc" in task_index(str(folder))
    (folder / "a.yaml").write_text(
        (REPO / "resources/demo/tasks/demo_arith_mc.yaml")
        .read_text()
        .replace("task: demo_arith_mc", "task: renamed_task")
    )
    assert "renamed_task" in task_index(str(folder))


def test_did_you_mean_stays_in_the_task_family():
    from koaml.tasks import suggest, task_index

    known = list(task_index())
    assert suggest("medqa", known)[0] == "medqa_4options"
    hints = suggest("mmlu_computer_science", known)
    assert "mmlu_college_computer_science" in hints and not any(h.startswith(("kmmlu", "cmmlu")) for h in hints)
    assert suggest("gsm8", known)[0] == "gsm8k"
