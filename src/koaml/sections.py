"""The typed sections of a training recipe (model, data, training, peft), read from recipe.schema.json.

The schema is the one source of truth for keys, types, defaults, documentation and the "Ignored:" keys:
``load_recipe`` validates a recipe and fills its defaults from it, and each class here declares exactly the
schema's keys of its section (the ignored ones left out), with the attribute documentation taken from the
schema's descriptions. ``tests/test_sections.py`` checks that the classes and the schema agree. A key
that is not set (no default, or one that only another trainer uses) reads as ``None``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from koaml.configfiles import IGNORED, schema


@dataclass(frozen=True)
class Section:
    """A frozen, typed view of one recipe section."""

    schema_path: ClassVar[tuple[str, ...]]  # where the section's properties live in recipe.schema.json
    nested: ClassVar[dict[str, type[Section]]] = {}  # keys holding a section of their own

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> Section:
        """The section of the validated dict ``values``, the schema's defaults filled in. Keys the class does not
        declare, the ignored ones, are left out; any other unknown key is an error."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - names - set(ignored_keys(cls))
        if unknown:
            raise TypeError(f"{cls.__name__}: keys not in the schema: {', '.join(sorted(unknown))}")
        kwargs = {}
        for name in names:
            value = values[name] if name in values else default(cls, name)
            if name in cls.nested and value is not None:
                value = cls.nested[name].from_dict(value)
            kwargs[name] = value
        return cls(**kwargs)

    def as_dict(self) -> dict:
        """The section as the dict a recipe file holds (keys that are not set left out)."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value is not None:
                out[f.name] = value.as_dict() if isinstance(value, Section) else value
        return out

    def replace(self, **changes: Any) -> Section:
        """A copy with ``changes`` (no validation: for tests and estimates)."""
        return dataclasses.replace(self, **changes)


def schema_node(path: tuple[str, ...]) -> dict:
    """The recipe schema's node at ``path`` (``("properties", "training")``, ...)."""
    node = schema("recipe")
    for key in path:
        node = node[key]
    return node


def ignored_keys(cls: type[Section]) -> list[str]:
    """The keys of ``cls``'s section that the schema marks ignored (accepted with a warning, never used)."""
    props = schema_node(cls.schema_path)["properties"]
    return [key for key, prop in props.items() if prop.get("description", "").startswith(IGNORED)]


def default(cls: type[Section], key: str) -> Any:
    """The schema's default of ``key`` in ``cls``'s section."""
    return schema_node(cls.schema_path)["properties"][key].get("default")


def _documented(cls: type[Section]) -> type[Section]:
    """Append each attribute's schema description and default to the class docstring."""
    props = schema_node(cls.schema_path)["properties"]
    lines = []
    for f in dataclasses.fields(cls):
        prop = props[f.name]
        text = prop.get("description", "")
        if "default" in prop:
            text = f"{text} (default {json.dumps(prop['default'])})".strip()
        lines.append(f"    {f.name}: {text}")
    cls.__doc__ = f"{cls.__doc__}\n\nAttributes:\n" + "\n".join(lines)
    return cls


@_documented
@dataclass(frozen=True)
class DatasetSpec(Section):
    """A dataset: a hub ID or a local file, with its configuration and split."""

    schema_path: ClassVar[tuple[str, ...]] = ("$defs", "dataset")
    dataset_name: str
    subset: str | None
    split: str


@_documented
@dataclass(frozen=True)
class ModelSettings(Section):
    """The recipe's ``model`` section: which model to start from and how to load it."""

    schema_path: ClassVar[tuple[str, ...]] = ("properties", "model")
    model_name: str | None
    model_max_length: int
    dtype: str
    attn_implementation: str
    trust_remote_code: bool


@_documented
@dataclass(frozen=True)
class DataSettings(Section):
    """The recipe's ``data`` section: the training (and eval) data and how rows become text."""

    schema_path: ClassVar[tuple[str, ...]] = ("properties", "data")
    nested: ClassVar[dict[str, type[Section]]] = {"train_dataset": DatasetSpec, "eval_dataset": DatasetSpec}
    train_dataset: DatasetSpec
    eval_dataset: DatasetSpec | None
    eval_fraction: float
    target_column: str
    template: str
    enable_thinking: bool | None
    max_samples: int | None


@_documented
@dataclass(frozen=True)
class TrainingSettings(Section):
    """The recipe's ``training`` section: the trainer and its hyper-parameters. Keys of another trainer are None."""

    schema_path: ClassVar[tuple[str, ...]] = ("properties", "training")
    trainer_type: str
    beta: float | None
    loss_type: str | None
    num_generations: int | None
    max_completion_length: int | None
    temperature: float | None
    top_p: float | None
    num_iterations: int | None
    epsilon: float | None
    scale_rewards: str | None
    mask_truncated_completions: bool | None
    rewards: list[dict] | None
    use_vllm: bool | None
    vllm_mode: str | None
    vllm_gpu_memory_utilization: float | None
    per_device_train_batch_size: int
    gradient_accumulation_steps: int
    learning_rate: float
    lr_scheduler_type: str
    warmup_ratio: float
    warmup_steps: int | None
    weight_decay: float
    max_grad_norm: float
    num_train_epochs: float
    max_steps: int
    save_steps: int
    save_total_limit: int
    keep_checkpoints: list[int] | None
    logging_steps: int
    eval_steps: int | None
    gradient_checkpointing: bool
    packing: bool | str
    completion_only_loss: bool
    seed: int
    num_processes: int
    fsdp: str
    fsdp_config: dict | None
    deepspeed: str | None
    optim: str
    report_to: list[str]


@_documented
@dataclass(frozen=True)
class PeftSettings(Section):
    """The recipe's ``peft`` section: LoRA, QLoRA or none (full fine-tuning, whose other keys are None)."""

    schema_path: ClassVar[tuple[str, ...]] = ("properties", "peft")
    type: str
    lora_r: int | None
    lora_alpha: float | None
    lora_dropout: float | None
    lora_target_modules: list[str] | str | None
    bnb_4bit_quant_type: str | None
    bnb_4bit_use_double_quant: bool | None

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> PeftSettings:
        """Full fine-tuning (``type: none``) has no LoRA settings: they stay None, not their defaults."""
        if values.get("type") == "none":
            return cls(**{f.name: None for f in dataclasses.fields(cls)} | {"type": "none"})
        return super().from_dict(values)


SECTIONS: dict[str, type[Section]] = {
    "model": ModelSettings,
    "data": DataSettings,
    "training": TrainingSettings,
    "peft": PeftSettings,
}
