"""Config loading: defaults, overrides, sweeps, multi-stage runs. Bad configs are in the catalog, tests/test_bad_inputs.py."""

import pytest
import yaml

from koaml.config import load_experiment
from koaml.configfiles import ConfigError, canonical, deep_merge, load_yaml
from koaml.recipe import load_benchmark, load_recipe

DEMO_RECIPE = "config/recipes/demo_lora.yaml"


@pytest.fixture(autouse=True)
def _repo_cwd(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)


def write(tmp_path, name, data):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return str(path)


def demo_experiment(**changes):
    config = load_yaml("config/config.yaml")
    config.update(changes)
    return config


def test_demo_experiment_resolves():
    exp = load_experiment(load_yaml("config/config.yaml"))
    assert exp.evaluated_models == ["tiny", "tiny-lora", "tiny-qlora", "tiny-full"]
    assert {r.method for r in exp.runs.values()} == {"lora", "qlora", "full"}
    assert list(exp.benchmarks) == ["demo_arith_mc", "demo_arith_gen"]


def test_recipe_defaults_are_filled_from_the_schema():
    recipe = load_recipe(DEMO_RECIPE)
    assert recipe.training.max_grad_norm == 1.0
    assert recipe.training.save_total_limit == 2
    assert recipe.data.target_column == "text"


def test_full_finetuning_recipe_has_no_lora_keys():
    assert load_recipe("config/recipes/demo_full.yaml").peft.as_dict() == {"type": "none"}


def test_yaml_12_floats_are_numbers(tmp_path):
    path = write(
        tmp_path, "r.yaml", "data: {train_dataset: {dataset_name: x.jsonl}}\ntraining: {learning_rate: 3e-4}\n"
    )
    assert load_recipe(path).training.learning_rate == pytest.approx(3e-4)


def test_all_errors_are_reported_at_once(tmp_path):
    path = write(tmp_path, "r.yaml", {"data": {"train_dataset": {}}, "training": {"seed": "x", "foo": 1}})
    with pytest.raises(ConfigError) as error:
        load_recipe(path)
    message = str(error.value)
    assert "data.train_dataset: 'dataset_name' is a required property" in message
    assert "training.seed" in message and "training.foo: unknown key" in message


def test_run_overrides_are_merged():
    config = demo_experiment()
    config["runs"]["tiny-lora"]["overrides"] = {"peft": {"lora_r": 4}}
    config["runs"]["tiny-full"]["overrides"] = {"peft": {"type": "lora", "lora_r": 2}}  # a full recipe made LoRA
    runs = load_experiment(config).runs
    assert runs["tiny-lora"].recipe.peft.lora_r == 4
    assert runs["tiny-full"].method == "lora" and runs["tiny-full"].recipe.peft.lora_r == 2


def test_base_defaults_to_the_recipe_model_name(tmp_path, online):
    recipe = load_yaml(DEMO_RECIPE)
    recipe["model"]["model_name"] = "meta-llama/Llama-3.1-8B-Instruct"
    path = write(tmp_path, "r.yaml", recipe)
    exp = load_experiment(
        {
            "experiment": "x",
            "runs": {"a": {"recipe": path}, "b": {"recipe": path}},
            "benchmarks": ["config/benchmarks/demo_arith_mc.yaml"],
        }
    )
    assert exp.runs["a"].base == exp.runs["b"].base == "meta-llama-Llama-3.1-8B-Instruct"
    assert exp.base_models[exp.runs["a"].base].model_name == "meta-llama/Llama-3.1-8B-Instruct"


def test_benchmark_defaults():
    bench = load_benchmark("config/benchmarks/demo_arith_mc.yaml")
    # no generation defaults that would replace a task's own (temperature, max_new_tokens): only what is written
    assert "temperature" not in bench["generation"] and "max_new_tokens" not in bench["generation"]
    assert bench["generation"]["seed"] == 1234
    assert bench["tasks"][0] == {"backend": "lm_harness", "num_fewshot": 0, "task": "demo_arith_mc"}


def test_canonical_and_deep_merge():
    assert list(canonical({"b": 1, "a": {"d": 1, "c": 2}})) == ["a", "b"]
    assert deep_merge({"a": {"x": 1, "y": 2}}, {"a": {"y": 3}}) == {"a": {"x": 1, "y": 3}}


def test_every_shipped_recipe_and_benchmark_validates():
    from conftest import REPO

    recipes = sorted((REPO / "config/recipes").glob("*.yaml"))
    assert len(recipes) >= 14
    for path in recipes:
        recipe = load_recipe(path)
        if not path.name.startswith("demo_"):
            assert recipe.model.model_name, path
    for path in sorted((REPO / "config/benchmarks").glob("*.yaml")):
        load_benchmark(path)


def test_sweep_expands_to_a_grid_with_readable_names():
    config = demo_experiment()
    config["runs"] = {
        "rank": {
            "base": "tiny",
            "recipe": DEMO_RECIPE,
            "sweep": {"peft.lora_r": [4, 8], "training.learning_rate": [1e-4, 3e-4]},
        }
    }
    exp = load_experiment(config)
    assert list(exp.runs) == [
        "rank_lora_r4_learning_rate0.0001",
        "rank_lora_r4_learning_rate0.0003",
        "rank_lora_r8_learning_rate0.0001",
        "rank_lora_r8_learning_rate0.0003",
    ]
    run = exp.runs["rank_lora_r8_learning_rate0.0003"]
    assert run.recipe.peft.lora_r == 8 and run.recipe.training.learning_rate == 3e-4


def test_multi_stage_chain_and_root_base():
    config = demo_experiment()
    config["runs"]["stage2"] = {"base": "run:tiny-full", "recipe": DEMO_RECIPE}
    config["runs"]["stage3"] = {"base": "run:stage2", "recipe": DEMO_RECIPE}
    exp = load_experiment(config)
    assert exp.runs["stage3"].parent_run == "stage2"
    assert exp.root_base("stage3") == "tiny"


def test_command_line_overrides_arrive_as_strings_and_are_typed():
    # `snakemake --config 'recipe_overrides={training: {max_steps: 10}}'` yields string leaves
    config = demo_experiment(
        recipe_overrides={"training": {"max_steps": "10", "learning_rate": "1e-4"}}, benchmark_overrides={"limit": "5"}
    )
    exp = load_experiment(config)
    assert all(r.recipe.training.max_steps == 10 for r in exp.runs.values())
    assert exp.runs["tiny-full"].recipe.training.learning_rate == 1e-4
    assert all(b.config["limit"] == 5 for b in exp.benchmarks.values())


def test_example_experiments_validate(online):
    from conftest import REPO

    examples = sorted((REPO / "config/examples").glob("*.yaml"))
    assert examples
    for path in examples:
        exp = load_experiment(load_yaml(path), str(path))
        assert exp.comparisons, path
    ablation = load_experiment(load_yaml(REPO / "config/examples/lora_rank_ablation.yaml"))
    assert sorted(r.recipe.peft.lora_r for r in ablation.runs.values()) == [4, 8, 16, 32]


# Keys the guide's configs have but the workflow does not use: a warning each, naming what is used instead.
OUTPUT_DIR = "training.output_dir: ignored; trained models go to results/runs/<run>/trained and checkpoints to results/checkpoints/<run>/"
TARGET_COLUMN = (
    "data.target_column: ignored; the data is in prompt_completion format, which has its own columns "
    "(target_column only names the column of plain-text rows)"
)


def warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name.startswith("koaml") and r.levelname == "WARNING"]


def test_recipe_output_dir_is_ignored_with_a_warning(tmp_path, caplog):
    path = write(tmp_path, "r.yaml", deep_merge(load_yaml(DEMO_RECIPE), {"training": {"output_dir": "./output/x"}}))
    load_recipe(path)
    assert warnings(caplog) == [f"{path}: {OUTPUT_DIR}"]


def test_benchmark_model_name_is_ignored_with_a_warning(tmp_path, caplog):
    bench = deep_merge(
        load_yaml("config/benchmarks/demo_arith_mc.yaml"), {"model": {"model_name": "meta-llama/Llama-3.1-8B-Instruct"}}
    )
    path = write(tmp_path, "b.yaml", bench)
    load_benchmark(path)
    assert warnings(caplog) == [
        f"{path}: model.model_name: ignored; the experiment decides which models are evaluated (its base_models and runs)"
    ]


def test_benchmark_output_paths_are_ignored_with_one_warning(tmp_path, caplog):
    bench = load_yaml("config/benchmarks/demo_arith_mc.yaml")
    bench["tasks"] = [dict(bench["tasks"][0], output_path="./out"), dict(bench["tasks"][0], output_path="./out2")]
    path = write(tmp_path, "b.yaml", bench)
    load_benchmark(path)
    assert warnings(caplog) == [
        f"{path}: tasks.0.output_path, tasks.1.output_path: ignored; results go to results/eval/<model>/<benchmark>/"
    ]


def test_target_column_is_ignored_with_a_warning_when_the_data_is_not_plain_text(tmp_path, caplog):
    path = write(tmp_path, "r.yaml", deep_merge(load_yaml(DEMO_RECIPE), {"data": {"target_column": "body"}}))
    load_experiment(demo_experiment(runs={"a": {"base": "tiny", "recipe": path}}))
    assert warnings(caplog) == [f"{path}: {TARGET_COLUMN}"]


def test_target_column_of_plain_text_or_hub_data_is_not_warned_about(tmp_path, caplog, online):
    text = tmp_path / "text.jsonl"
    text.write_text('{"body": "2 plus 2 is 4"}\n')
    plain = write(
        tmp_path,
        "plain.yaml",
        deep_merge(
            load_yaml(DEMO_RECIPE), {"data": {"train_dataset": {"dataset_name": str(text)}, "target_column": "body"}}
        ),
    )
    hub = write(
        tmp_path,
        "hub.yaml",
        deep_merge(
            load_yaml(DEMO_RECIPE),
            {"data": {"train_dataset": {"dataset_name": "yahma/alpaca-cleaned"}, "target_column": "text"}},
        ),
    )
    load_experiment(
        demo_experiment(runs={"a": {"base": "tiny", "recipe": plain}, "b": {"base": "tiny", "recipe": hub}})
    )
    assert warnings(caplog) == []  # a hub dataset's format is known only to prepare_data, which warns then


def test_a_recipe_shared_by_many_runs_is_warned_about_once(tmp_path, caplog):
    path = write(tmp_path, "r.yaml", deep_merge(load_yaml(DEMO_RECIPE), {"training": {"output_dir": "./output/x"}}))
    runs = {
        "a": {"base": "tiny", "recipe": path},
        "b": {"base": "tiny", "recipe": path, "sweep": {"peft.lora_r": [4, 8]}},
    }
    load_experiment(demo_experiment(runs=runs))
    assert warnings(caplog) == [f"{path}: {OUTPUT_DIR}"]


def test_shipped_configs_have_no_ignored_keys(caplog, monkeypatch, online):
    from conftest import REPO

    from koaml import configfiles

    monkeypatch.setattr(configfiles, "_WARNED", set())
    for path in [REPO / "config/config.yaml", *sorted((REPO / "config/examples").glob("*.yaml"))]:
        load_experiment(load_yaml(path), str(path))
    for path in sorted((REPO / "config/recipes").glob("*.yaml")):
        load_recipe(path)
    for path in sorted((REPO / "config/benchmarks").glob("*.yaml")):
        load_benchmark(path)
    assert warnings(caplog) == []


def test_runs_are_compared_with_the_base_their_chain_starts_from():
    exp = load_experiment(demo_experiment())
    assert exp.comparisons == [("tiny", "tiny-lora"), ("tiny", "tiny-qlora"), ("tiny", "tiny-full")]


def test_an_experiment_without_runs_compares_its_models_with_the_reference(tmp_path):
    config = demo_experiment()
    config.pop("runs")
    config["base_models"] = {name: {"build": "resources/demo/tiny_model.yaml"} for name in ("a", "b", "c")}
    assert load_experiment(config).comparisons == [("a", "b"), ("a", "c")]
    assert load_experiment(dict(config, reference="c")).comparisons == [("c", "a"), ("c", "b")]
    exp = load_experiment(dict(config, compare=[["b", "c"], ["a", "b"]]))
    assert exp.comparisons == [("a", "b"), ("a", "c"), ("b", "c")] and exp.runs == {}
    assert exp.evaluated_models == ["a", "b", "c"]


def test_all_pairs_compares_every_two_evaluated_models():
    exp = load_experiment(dict(demo_experiment(), compare="all-pairs"))
    models = ["tiny", "tiny-lora", "tiny-qlora", "tiny-full"]
    assert exp.comparisons == [(a, b) for i, a in enumerate(models) for b in models[i + 1 :]]


def test_compare_pairs_any_two_evaluated_models():
    config = dict(demo_experiment(), compare=[["tiny-lora", "tiny-full"]], evaluate_adapters=True)
    exp = load_experiment(config)
    assert exp.comparisons[-1] == ("tiny-lora", "tiny-full") and ("tiny", "tiny-lora_adapter") in exp.comparisons


def test_statistics_settings_default_and_are_validated():
    assert load_experiment(demo_experiment()).statistics == {"correction": "bh", "alpha": 0.05, "power": 0.8}
    holm = load_experiment(demo_experiment(statistics={"correction": "holm", "alpha": 0.01}))
    assert holm.statistics == {"correction": "holm", "alpha": 0.01, "power": 0.8}
    with pytest.raises(ConfigError, match=r"statistics.correction: 'bonferroni' is not allowed; expected one of: bh"):
        load_experiment(demo_experiment(statistics={"correction": "bonferroni"}))


def test_a_section_left_empty_takes_its_defaults(tmp_path):
    """``statistics:`` with nothing under it (YAML's None) is the section with its defaults, in every config file
    and at any depth (a run's ``overrides:``, a recipe's ``peft:``); a value that is no section is still an error."""
    exp = load_experiment(demo_experiment(statistics=None, evaluation=None, recipe_overrides=None))
    assert exp.statistics == {"correction": "bh", "alpha": 0.05, "power": 0.8}
    runs = {"a": {"base": "tiny", "recipe": DEMO_RECIPE, "overrides": None}}
    assert load_experiment(demo_experiment(runs=runs)).runs["a"].recipe == load_recipe(DEMO_RECIPE)
    empty_peft = write(tmp_path, "p.yaml", {**load_yaml(DEMO_RECIPE), "peft": None})
    assert (
        load_recipe(empty_peft).peft
        == load_recipe(write(tmp_path, "q.yaml", {**load_yaml(DEMO_RECIPE), "peft": {}})).peft
    )
    with pytest.raises(ConfigError, match=r"statistics: 'none' is not of type 'object'"):
        load_experiment(demo_experiment(statistics="none"))


def test_build_spec_is_checked_by_its_own_schema(tmp_path):
    """A base model's build spec: unknown keys (a typo would build transformers' default width) and widths that
    heads do not divide are errors naming the file, before transformers sees the spec; its architecture keys are
    LlamaConfig's."""
    import inspect

    from transformers import LlamaConfig

    from koaml.configfiles import schema
    from koaml.tinymodel import load_spec

    arch = schema("tiny_model")["properties"]["architecture"]["properties"]
    assert set(arch) - {"vocab_size"} <= set(inspect.signature(LlamaConfig.__init__).parameters)
    assert load_spec("resources/demo/tiny_model.yaml")["seed"] == 0
    spec = load_yaml("resources/demo/tiny_model.yaml")
    spec["architecture"].update(num_key_value_heads=3)
    with pytest.raises(ConfigError, match=r"s.yaml: architecture.num_key_value_heads: 3 does not divide architecture"):
        load_spec(write(tmp_path, "s.yaml", spec))
    spec["architecture"].update(num_key_value_heads=2, vocab_size=400)
    with pytest.raises(ConfigError, match=r"architecture.vocab_size: 400 is not allowed \(set by the tokenizer"):
        load_spec(write(tmp_path, "s.yaml", spec))


def test_replicates_train_copies_with_consecutive_seeds():
    config = demo_experiment(
        runs={
            "sft": {"base": "tiny", "recipe": DEMO_RECIPE, "replicates": 3},
            "sft-again": {"base": "run:sft", "recipe": DEMO_RECIPE, "replicates": 3},
            "once": {"base": "tiny", "recipe": DEMO_RECIPE},
        },
        compare=[["sft", "sft-again"], ["once", "sft"]],
    )
    exp = load_experiment(config)
    assert exp.replicate_groups == {"sft": ["sft_rep1", "sft_rep2", "sft_rep3"],
                                    "sft-again": ["sft-again_rep1", "sft-again_rep2", "sft-again_rep3"]}  # fmt: skip
    seed = load_recipe(DEMO_RECIPE).training.seed
    assert [exp.runs[f"sft_rep{k}"].recipe.training.seed for k in (1, 2, 3)] == [seed, seed + 1, seed + 2]
    assert exp.runs["sft_rep2"].replicate == {"group": "sft", "index": 1, "seed": seed + 1}
    assert exp.runs["sft-again_rep2"].base == "run:sft_rep2"  # each seed's second stage starts from its first
    assert ("sft_rep3", "sft-again_rep3") in exp.comparisons and ("once", "sft_rep1") in exp.comparisons
    assert exp.evaluated_models.count("tiny") == 1  # the base is evaluated once
    everywhere = load_experiment(demo_experiment(replicates=2))
    assert sorted(everywhere.runs) == [f"tiny-{m}_rep{k}" for m in ("full", "lora", "qlora") for k in (1, 2)]


def test_replicate_errors_name_the_fix():
    mismatched = demo_experiment(
        runs={
            "sft": {"base": "tiny", "recipe": DEMO_RECIPE, "replicates": 3},
            "dpo": {"base": "run:sft", "recipe": DEMO_RECIPE},
        }
    )
    with pytest.raises(ConfigError, match=r"runs.dpo.base: run:sft has 3 replicates; give this run as many"):
        load_experiment(mismatched)
    too_many = demo_experiment(runs={"r": {"base": "tiny", "recipe": DEMO_RECIPE, "sweep": {"training.seed": [1, 2, 3]},
                                           "replicates": 100}})  # fmt: skip
    with pytest.raises(ConfigError, match=r"makes 300 runs \(runs.r: 3 x 100 replicates = 300\)"):
        load_experiment(too_many)
