"""Benchmark task names are checked against lm-eval's own index before any job starts."""

import pytest
from conftest import REPO

from koaml.configfiles import ConfigError
from koaml.recipe import load_benchmark
from koaml.tasks import benchmark_index, check_benchmark, task_index, task_metrics

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
    assert bench["generation"].get("temperature", 0.0) == 0.0  # greedy, as written or as the tasks' own


@pytest.mark.parametrize("path", sorted((REPO / "config/benchmarks").glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_benchmark_resolves_to_known_tasks_and_keeps_their_protocol(path, caplog):
    """Each shipped benchmark runs its tasks with lm-eval's own settings; where it changes one (a warning names
    it), a comment in the file says why (a line with 'protocol:' naming the key)."""
    bench = load_benchmark(path)
    if path.stem in CODE_BENCHMARKS:
        with pytest.raises(ConfigError, match="executes code written by the model; set allow_code_execution: true"):
            check_benchmark(str(path), bench)
        bench = bench.replace(allow_code_execution=True)
    check_benchmark(str(path), bench)
    explained = " ".join(
        line for line in path.read_text().splitlines() if line.lstrip().startswith("#") and "protocol:" in line
    )
    for record in caplog.records:
        key = record.getMessage().split("generation.", 1)[1].split(":", 1)[0]
        assert "replaces the task's own setting" in record.getMessage() and key in explained, record.getMessage()


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


def custom_task(tmp_path, **settings):
    """A local lm-eval task folder with one generative task (``settings`` merged into its YAML)."""
    import yaml

    folder = tmp_path / "tasks"
    folder.mkdir(exist_ok=True)
    task = {"task": "mytask", "dataset_path": "json", "output_type": "generate_until", "test_split": "test",
            "doc_to_text": "{{q}}", "doc_to_target": "{{a}}", "metric_list": [{"metric": "exact_match"}], **settings}  # fmt: skip
    (folder / "mytask.yaml").write_text(yaml.safe_dump(task))
    return folder


def custom_bench(folder, generation=None, **task):
    bench = load_benchmark("config/benchmarks/demo_arith_gen.yaml")
    generation = {**{k: v for k, v in bench["generation"].items()}, **(generation or {})}
    return bench.replace(include_path=str(folder), generation=generation, tasks=[{"task": "mytask", **task}])


def test_tasks_own_generation_length_is_kept_and_checked_against_the_context(tmp_path):
    """The issue's case: a task with max_gen_toks 8 on a 64-token model runs as written; lm-eval's default 256
    (a task that sets none) or a written 512 cannot fit, and the dry run says so, naming the source."""
    short = custom_task(tmp_path, generation_kwargs={"until": ["\n"], "max_gen_toks": 8})
    check_benchmark("b.yaml", custom_bench(short))
    unset = custom_task(tmp_path, generation_kwargs={"until": ["\n"]})
    with pytest.raises(ConfigError, match=r"b.yaml: tasks.0.task: 'mytask' generates up to 256 tokens \(lm-eval's "
                       r"default; the task sets none\), which leaves no room for the prompt in model.model_max_length \(64\)"):  # fmt: skip
        check_benchmark("b.yaml", custom_bench(unset))
    with pytest.raises(ConfigError, match=r"b.yaml: generation.max_new_tokens: 512, which leaves no room"):
        check_benchmark("b.yaml", custom_bench(short, {"max_new_tokens": 512}))


def test_sampling_task_forced_to_greedy_and_fewshot_without_examples(tmp_path):
    sampled = custom_task(tmp_path, generation_kwargs={"until": ["\n"], "max_gen_toks": 8, "do_sample": True,
                                                       "temperature": 0.2}, repeats=8)  # fmt: skip
    check_benchmark("b.yaml", custom_bench(sampled))  # the task's own sampling
    with pytest.raises(ConfigError, match=r"generation.temperature: 0 makes 'mytask' greedy, but the task samples "
                       r"\(do_sample: True, temperature: 0.2, repeats: 8\)"):  # fmt: skip
        check_benchmark("b.yaml", custom_bench(sampled, {"temperature": 0.0}))
    with pytest.raises(ConfigError, match=r"tasks.0.num_fewshot: 3 few-shot examples, but 'mytask' has no split"):
        check_benchmark("b.yaml", custom_bench(sampled, num_fewshot=3))


def test_written_generation_keys_are_warned_about(tmp_path, caplog):
    short = custom_task(tmp_path, generation_kwargs={"until": ["\n"], "max_gen_toks": 8})
    check_benchmark("b.yaml", custom_bench(short, {"max_new_tokens": 16}))
    assert "b.yaml: generation.max_new_tokens: 16 replaces the task's own setting of mytask (8)" in caplog.text


def test_includes_are_merged_like_lm_eval():
    from koaml.tasks import task_protocols

    (protocol,) = task_protocols("humaneval_64", task_index())  # includes humaneval.yaml
    assert protocol["generation_kwargs"]["max_gen_toks"] == 1024 and protocol["repeats"] == 64
    assert protocol["generation_kwargs"]["do_sample"] is True and not protocol["fewshot_source"]
    leaves = task_protocols("mmlu", task_index())
    assert len(leaves) == 57 and all(p["output_type"] == "multiple_choice" for p in leaves)


def test_a_tasks_metrics_and_filters_are_lm_evals():
    """What a search or select_checkpoint may choose by: the task config's metric_list (else its output type's
    default metrics) with higher_is_better, and its filter_list (else none); unknown for groups."""
    index = benchmark_index("demo", load_benchmark("config/benchmarks/demo_arith_gen.yaml"))
    assert task_metrics("demo_arith_gen", index) == ({"exact_match": True}, ["first-number"])
    assert task_metrics("gsm8k", index) == ({"exact_match": True}, ["strict-match", "flexible-extract"])
    assert task_metrics("hellaswag", index) == ({"acc": True, "acc_norm": True}, ["none"])  # multiple_choice defaults
    assert task_metrics("wikitext", index)[0] == {
        "word_perplexity": False,
        "byte_perplexity": False,
        "bits_per_byte": False,
    }
    assert task_metrics("mmlu", index) is None  # a group: its metrics are known when it runs
