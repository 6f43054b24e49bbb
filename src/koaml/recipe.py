"""Training recipes and benchmark suites: loaded, validated once into read-only objects with their derived facts.

A :class:`Recipe` holds typed, frozen sections (``recipe.training.seed``: :mod:`koaml.sections`) and cannot be
changed in place; facts derived from several keys (the training method, the trainer's registry entry, the
local data files, the trackers, ...) are properties here and nowhere else. ``results/runs/<run>/config.yaml``
holds a recipe's :meth:`Recipe.as_dict`, which :func:`read_recipe` turns back into the same object in a job.
A :class:`BenchmarkSuite` reads like the YAML it came from (``suite["generation"]["max_new_tokens"]``).
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import importlib.util
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from koaml import rewards
from koaml.configfiles import (
    ConfigError,
    canonical,
    deep_merge,
    empty_sections,
    fill_defaults,
    load_yaml,
    raise_if_problems,
    schema,
    validate,
    warn,
    warn_ignored,
)
from koaml.hf_facts import optimizer_names
from koaml.io import config_hash
from koaml.sections import SECTIONS, DatasetSpec, DataSettings, ModelSettings, PeftSettings, Section, TrainingSettings
from koaml.trainers import TRAINERS, Trainer

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv", ".parquet": "parquet"}  # -> datasets loader


def is_local_dataset(dataset_name: str) -> bool:
    """True when ``dataset_name`` names a local file rather than a hub dataset ID."""
    return Path(dataset_name).suffix in LOCAL_SUFFIXES or Path(dataset_name).exists()


class _Settings:
    """A validated config, read-only: written to YAML and hashed as its :meth:`as_dict`."""

    def __init__(self, settings: dict, source: str | Path):
        self._settings = settings
        self.source = str(source)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Settings) and self._settings == other._settings

    __hash__ = None  # type: ignore[assignment]  (equal configs compare equal; use config_hash to key them)

    def __setattr__(self, name: str, value: Any) -> None:
        if name in self.__dict__:
            raise AttributeError(f"{type(self).__name__} is read-only; use replace()")
        super().__setattr__(name, value)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source})"

    def as_dict(self) -> dict:
        """The settings as a plain dict (keys sorted): what is written to YAML and hashed."""
        return copy.deepcopy(self._settings)

    @property
    def config_hash(self) -> str:
        return config_hash(self._settings)

    def replace(self, **sections: Any):
        """A copy with whole sections replaced, as dicts or typed sections (no validation: for tests and estimates)."""
        given = {key: value.as_dict() if isinstance(value, Section) else value for key, value in sections.items()}
        return type(self)(canonical({**self.as_dict(), **given}), self.source)


yaml.SafeDumper.add_multi_representer(_Settings, lambda dumper, s: dumper.represent_dict(s.as_dict()))


class Recipe(_Settings):
    """A training recipe: typed ``model``, ``data``, ``training`` and ``peft`` sections, defaults filled in."""

    model: ModelSettings
    data: DataSettings
    training: TrainingSettings
    peft: PeftSettings

    def __init__(self, settings: dict, source: str | Path, given: frozenset[str] = frozenset()):
        super().__init__(settings, source)
        self.given = given  # "section.key" of each key the recipe file or its overrides set to other than its default
        for key, section in SECTIONS.items():
            super().__setattr__(key, section.from_dict(copy.deepcopy(settings.get(key) or {})))

    @property
    def trainer(self) -> Trainer:
        """The trainer registry's entry of ``training.trainer_type``."""
        return TRAINERS[self.training.trainer_type]

    @property
    def method(self) -> str:
        """'full', 'lora' or 'qlora'."""
        return "full" if self.peft.type == "none" else self.peft.type

    @property
    def quantized(self) -> bool:
        """True for QLoRA: the base model is loaded in 4 bits."""
        return self.method == "qlora"

    @property
    def trainer_type(self) -> str:
        """'sft', 'dpo' or 'grpo'."""
        return self.training.trainer_type

    @property
    def rewards(self) -> list[dict]:
        """GRPO's reward specs (``training.rewards``); empty for other trainers."""
        return list(self.training.rewards or [])

    @property
    def reward_files(self) -> list[str]:
        """The Python files of the user's own GRPO rewards (editing one reruns the run)."""
        return rewards.user_files(self.rewards)

    @property
    def config_hash(self) -> str:
        """The run's checkpoint key: the resolved recipe and, for GRPO with rewards of one's own, their files'
        contents (an edited reward starts training afresh instead of resuming the old reward's checkpoints).
        Not ``training.keep_checkpoints``: which steps are kept changes no step of training, so a run stopped
        before its end resumes when checkpoint_eval's steps were edited (koaml.snapshots.keeper refuses a new
        step it has passed already)."""
        recipe = self.as_dict()
        recipe["training"].pop("keep_checkpoints", None)
        if not self.reward_files:
            return config_hash(recipe)
        digests = {f: hashlib.sha256(Path(f).read_bytes()).hexdigest() for f in self.reward_files if Path(f).is_file()}
        return config_hash({"recipe": recipe, "reward_files": digests})

    @property
    def report_to(self) -> list[str]:
        """The trackers asked for (``koaml.train.tracking`` drops W&B without an API key)."""
        return list(self.training.report_to or [])

    @property
    def datasets(self) -> dict[str, DatasetSpec]:
        """The dataset specs by key (``train_dataset``, and ``eval_dataset`` if given)."""
        specs = {"train_dataset": self.data.train_dataset, "eval_dataset": self.data.eval_dataset}
        return {key: spec for key, spec in specs.items() if spec is not None}

    @property
    def local_data_files(self) -> list[str]:
        """The local files among the datasets (editing one reruns the run)."""
        return [s.dataset_name for s in self.datasets.values() if is_local_dataset(s.dataset_name)]

    @property
    def hub_datasets(self) -> list[DatasetSpec]:
        """The dataset specs that name hub datasets."""
        return [s for s in self.datasets.values() if not is_local_dataset(s.dataset_name)]


def _fill_trainer_settings(given: dict, training: dict) -> list[str]:
    """Fill in the defaults of the keys of ``training.trainer_type`` (the schema's ``x-trainers``) and return
    the problems: keys of other trainers, values outside this trainer's choices, GRPO's rewards and batch."""
    trainer, problems = training["trainer_type"], []
    for key, prop in schema("recipe")["properties"]["training"]["properties"].items():
        trainers = prop.get("x-trainers")
        if trainers is None:
            continue
        if trainer not in trainers:
            if key in given:
                problems.append(f"training.{key}: only used with training.trainer_type: {' or '.join(trainers)}")
            continue
        rules = trainers[trainer]
        if key not in given:
            if "default" in rules:
                training[key] = copy.deepcopy(rules["default"])
            continue
        value = training[key]
        if "enum" in rules and value not in rules["enum"]:
            hint = difflib.get_close_matches(str(value), rules["enum"], n=1)
            problems.append(
                f"training.{key}: '{value}' is not a {trainer} {key}; "
                + (f"did you mean '{hint[0]}'?" if hint else f"expected one of: {', '.join(rules['enum'])}")
            )
        if "exclusiveMinimum" in rules and value <= rules["exclusiveMinimum"]:
            problems.append(f"training.{key}: must be > {rules['exclusiveMinimum']} with trainer_type {trainer}")
    if trainer == "grpo":
        problems += _grpo_problems(given, training)
    return problems


# Why vLLM (GRPO's use_vllm, a benchmark's backend: vllm) cannot run here; checked when the workflow is parsed.
VLLM_MISSING = (
    "vLLM is not installed in this environment, where the jobs run; on KOA install the gpu extra "
    "(pip install -e '.[gpu]'; vLLM needs CUDA GPUs, which the jobs get from the profile)"
)


def _trainer_default(key: str, trainer: str):
    """The default the resolver writes for training ``key`` with ``trainer`` (None where it writes none)."""
    return _default("training", key, trainer)


def _default(section: str, key: str, trainer: str):
    """The default the resolver writes for ``section.key`` (None where it writes none): a key at its default in a
    recipe is no setting of the user's (a resolved recipe, such as a search's best.yaml, has every key)."""
    prop = schema("recipe")["properties"].get(section, {}).get("properties", {}).get(key, {})
    return prop.get("x-trainers", {}).get(trainer, prop).get("default")


def _grpo_problems(given: dict, training: dict) -> list[str]:
    # A vLLM key at its default is what the resolver writes (a resolved recipe must load again): only another
    # value is a setting that use_vllm: false would silently ignore.
    problems = [
        f"training.{key}: only used with training.use_vllm: true"
        for key in ("vllm_mode", "vllm_gpu_memory_utilization")
        if key in given and not training["use_vllm"] and given[key] != _trainer_default(key, "grpo")
    ]
    if training["use_vllm"] and importlib.util.find_spec("vllm") is None:
        problems.append(f"training.use_vllm: {VLLM_MISSING}; or set use_vllm: false to generate with transformers")
    if not training.get("rewards"):
        return [
            *problems,
            "training.rewards: GRPO needs at least one reward, e.g. "
            "[{function: exact_match, column: answer}] (see the documentation's GRPO page, docs/training/grpo.md)",
        ]
    reward_schema = schema("recipe")["$defs"]["reward"]
    training["rewards"] = [fill_defaults(spec, reward_schema) for spec in training["rewards"]]
    problems += rewards.problems(training["rewards"])
    batch = (
        training["per_device_train_batch_size"] * training["gradient_accumulation_steps"] * training["num_processes"]
    )
    if batch % training["num_generations"]:
        problems.append(
            f"training.num_generations: {training['num_generations']} completions per prompt do not divide the "
            f"{batch} completions of an optimizer step (per_device_train_batch_size x gradient_accumulation_steps "
            "x num_processes); make that a multiple of num_generations"
        )
    return problems


def _contradictions(raw: dict, given: dict, recipe: dict) -> list[str]:
    """Settings that cannot all hold. ``given`` is the recipe file ``raw`` with the run's overrides,
    before defaults, so that a default never counts as a setting the user chose."""
    problems = _peft_contradictions(raw, given, recipe)
    peft, training, data = recipe["peft"], recipe["training"], recipe["data"]
    if peft["type"] == "qlora":
        for key in ("fsdp", "deepspeed"):
            if training[key]:
                problems.append(
                    f"training.{key}: not supported with peft.type qlora (its 4-bit base is loaded whole on one GPU); "
                    f"use peft.type lora, or remove training.{key}"
                )
    if training["fsdp"] and training["deepspeed"]:
        problems.append("training.deepspeed: cannot be combined with training.fsdp; choose one")
    if "warmup_steps" in given.get("training", {}) and training["warmup_ratio"] > 0:
        problems.append(
            "training.warmup_steps: given together with training.warmup_ratio; set only one "
            "(warmup_ratio: 0 to count warmup in steps)"
        )
    if training["trainer_type"] != "sft" and given.get("training", {}).get("packing") is True:
        problems.append(
            f"training.packing: packs SFT rows only; remove it with trainer_type: {training['trainer_type']}"
        )
    if training["trainer_type"] == "grpo" and training["max_completion_length"] >= recipe["model"]["model_max_length"]:
        problems.append(
            f"training.max_completion_length: {training['max_completion_length']} tokens leave no room for a prompt "
            f"in model.model_max_length ({recipe['model']['model_max_length']}); lower it or raise model_max_length"
        )
    optimizers = optimizer_names()
    if optimizers and training["optim"] not in optimizers:
        hint = difflib.get_close_matches(training["optim"], optimizers, n=1)
        problems.append(
            f"training.optim: '{training['optim']}' is not an optimizer of the installed transformers; "
            + (f"did you mean '{hint[0]}'?" if hint else f"expected one of: {', '.join(optimizers)}")
        )
    if "enable_thinking" in data and data["template"] != "model":
        problems.append(
            "data.enable_thinking: only used with data.template: model (it is an option of the tokenizer's chat "
            f"template; the '{data['template']}' template has none)"
        )
    if data.get("eval_dataset") and data["eval_fraction"] > 0:
        problems.append("data.eval_fraction: has no effect when data.eval_dataset is given; remove one of them")
    if training["eval_steps"] and not data.get("eval_dataset") and data["eval_fraction"] == 0:
        problems.append(
            "training.eval_steps: there is no eval data (data.eval_fraction is 0 and no data.eval_dataset); "
            "remove eval_steps or add eval data"
        )
    return problems


def _peft_contradictions(raw: dict, given: dict, recipe: dict) -> list[str]:
    """LoRA settings given for full fine-tuning, or as overrides that would silently turn it into LoRA."""
    lora_keys = ", ".join(f"peft.{k}" for k in sorted(given.get("peft", {})) if k != "type")
    if lora_keys and recipe["peft"]["type"] == "none":
        return [
            f"{lora_keys}: LoRA settings, but peft.type is none (full fine-tuning); "
            "remove the peft section or set peft.type: lora|qlora"
        ]
    if lora_keys and "peft" not in raw and "type" not in given["peft"]:
        return [
            f"{lora_keys}: overrides on a full fine-tuning recipe (no peft section) would silently make it LoRA; "
            "set peft.type: lora|qlora in the overrides too, or drop them"
        ]
    return []


class BenchmarkSuite(_Settings, Mapping):
    """A benchmark suite: ``model``, ``generation``, ``tasks`` and the lm-eval options, defaults filled in, read
    like the YAML it came from (``suite["generation"]["max_new_tokens"]``)."""

    def __getitem__(self, key: str) -> Any:
        return self._settings[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._settings)

    def __len__(self) -> int:
        return len(self._settings)

    @property
    def task_names(self) -> list[str]:
        """The lm-eval task (or group) names, in order."""
        return [task["task"] for task in self["tasks"]]

    @property
    def local_task_files(self) -> list[str]:
        """The YAML files of the suite's local lm-eval tasks (``include_path``): editing one reruns the suite."""
        task_dir = self.get("include_path")
        return sorted(str(p) for p in Path(task_dir).rglob("*.yaml")) if task_dir else []


def _load(path: str | Path, overrides: dict | None, kind: str, sections: str, overridden: str):
    """The config file ``path`` of schema ``kind`` with ``overrides`` applied and validated, ignored keys
    warned of: ``(as written, with the overrides, with defaults filled in, the source to name in messages)``."""
    raw = empty_sections(load_yaml(path), kind)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with {sections} sections")
    merged = deep_merge(raw, empty_sections(overrides or {}, kind))
    source = f"{path} (with {overridden})" if overrides else str(path)
    validate(merged, kind, source)
    warn_ignored(raw, kind, path)
    warn_ignored(overrides, kind, source)
    return raw, merged, fill_defaults(merged, schema(kind)), source


def load_recipe(path: str | Path, overrides: dict | None = None) -> Recipe:
    """The recipe file ``path`` with run overrides applied, validated, defaults filled in."""
    raw, merged, recipe, source = _load(path, overrides, "recipe", "model / data / training / peft", "run overrides")
    problems = _fill_trainer_settings(merged.get("training", {}), recipe["training"])
    raise_if_problems("recipe", source, problems + _contradictions(raw, merged, recipe))
    trainer = recipe["training"]["trainer_type"]
    given_loss = merged.get("training", {}).get("completion_only_loss")
    if trainer != "sft" and given_loss is not None and given_loss != _trainer_default("completion_only_loss", trainer):
        warn(f"{source}: training.completion_only_loss: ignored with trainer_type {trainer} (an SFT setting)")
    deepspeed = recipe["training"].get("deepspeed")
    if deepspeed and not Path(deepspeed).is_file():
        raise ConfigError(f"{source}: training.deepspeed: {deepspeed}: file not found")
    if recipe["peft"]["type"] == "none":
        recipe["peft"] = {"type": "none"}
    given = frozenset(
        f"{section}.{key}"
        for section, keys in merged.items()
        if isinstance(keys, dict)
        for key, value in keys.items()
        if value != _default(section, key, trainer)
    )
    return Recipe(canonical(recipe), source, given)


def read_recipe(path: str | Path) -> Recipe:
    """A resolved recipe written by the workflow (``results/runs/<run>/config.yaml``), checked against the schema."""
    settings = load_yaml(path)
    validate(settings, "recipe", path)
    return Recipe(canonical(settings), path)


def load_benchmark(path: str | Path, overrides: dict | None = None) -> BenchmarkSuite:
    """The benchmark file ``path`` with overrides applied, validated, defaults filled in."""
    _, _, bench, source = _load(path, overrides, "benchmark", "model / generation / tasks", "overrides")
    generation, needing = bench["generation"], []
    if not generation["apply_chat_template"]:  # options of the chat template, ignored without it
        needing = ["fewshot_as_multiturn"] if generation["fewshot_as_multiturn"] else []
        needing += ["enable_thinking"] if "enable_thinking" in generation else []
    problems = [f"generation.{key}: needs generation.apply_chat_template: true" for key in needing]
    if bench["model"]["backend"] == "vllm" and importlib.util.find_spec("vllm") is None:
        problems.append(f"model.backend: vllm: {VLLM_MISSING}; or set backend: hf")
    raise_if_problems("benchmark", source, problems)
    task_schema = schema("benchmark")["properties"]["tasks"]["items"]
    bench["tasks"] = [fill_defaults(t, task_schema) for t in bench["tasks"]]
    return BenchmarkSuite(canonical(bench), source)
