"""The recipe-to-TRL mapping: a recipe as the keyword arguments of its trainer's TRL config, and its LoRA config."""

from __future__ import annotations

from koaml.recipe import Recipe
from koaml.sections import PeftSettings

# Recipe `training` keys passed to SFTConfig unchanged.
_PASSTHROUGH = (
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "learning_rate",
    "lr_scheduler_type",
    "weight_decay",
    "max_grad_norm",
    "num_train_epochs",
    "max_steps",
    "save_steps",
    "save_total_limit",
    "logging_steps",
    "seed",
    "optim",
)


def _checkpointing_key() -> str:
    """transformers 5.x renamed gradient_checkpointing to activation_checkpointing."""
    from transformers import TrainingArguments

    fields = TrainingArguments.__dataclass_fields__
    return "activation_checkpointing" if "activation_checkpointing" in fields else "gradient_checkpointing"


def trl_config_kwargs(
    recipe: Recipe, output_dir: str, has_eval: bool, on_gpu: bool, packing: bool = False, report_to: list[str] = ()
) -> dict:
    """Map a recipe (the guide's keys) to the keyword arguments of its trainer's TRL config (``trl.SFTConfig``,
    ``DPOConfig`` or ``GRPOConfig``: the registry's ``trl_name``), in transformers 5 names.

    ``packing`` is the decision of ``koaml.packing.decide`` for the loaded model and the prepared data (SFT);
    ``report_to`` the trackers ``koaml.train.tracking`` enabled. A generating trainer (GRPO) has no
    ``max_length``: its prompts were fitted to ``model_max_length - max_completion_length`` by prepare.
    """
    trainer, training, data = recipe.trainer, recipe.training, recipe.data
    kwargs = training_arguments(recipe, output_dir, has_eval, on_gpu, report_to)
    kwargs.update({key: getattr(training, key) for key in trainer.passthrough})
    kwargs.update(trainer.extra_config(training))
    if trainer.packs:
        kwargs["packing"] = packing
        if packing:
            kwargs["packing_strategy"] = "bfd"  # position_ids restart at each packed sequence (koaml.packed_rows)
    if trainer.generates:
        del kwargs["max_length"]
        kwargs["reward_weights"] = [float(spec["weight"]) for spec in recipe.rewards]
        if data.template == "model" and data.enable_thinking is not None:  # prompts are rendered with these
            kwargs["chat_template_kwargs"] = {"enable_thinking": data.enable_thinking}
    return kwargs


def training_arguments(recipe: Recipe, output_dir: str, has_eval: bool, on_gpu: bool, report_to: list[str]) -> dict:
    """The keyword arguments every trainer's config shares (transformers' TrainingArguments, TRL's max_length)."""
    t = recipe.training
    kwargs = {key: getattr(t, key) for key in _PASSTHROUGH}
    # transformers 5 dropped warmup_ratio: warmup_steps takes a float in [0, 1) as a ratio instead.
    kwargs["warmup_steps"] = t.warmup_steps if t.warmup_steps is not None else float(t.warmup_ratio)
    kwargs[_checkpointing_key()] = t.gradient_checkpointing
    if t.fsdp:
        kwargs.update(fsdp=t.fsdp, fsdp_config=t.fsdp_config)
    if t.deepspeed:
        kwargs["deepspeed"] = t.deepspeed
    if t.num_processes > 1 and not on_gpu:
        kwargs["ddp_backend"] = "gloo"
    dtype = recipe.model.dtype
    kwargs.update(
        output_dir=output_dir,
        max_length=recipe.model.model_max_length,
        report_to=list(report_to) or "none",
        save_strategy="steps",
        logging_strategy="steps",
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must show (and stop the run), not be hidden
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(t.eval_steps or t.save_steps) if has_eval else None,
        bf16=on_gpu and dtype in ("bfloat16", "auto"),
        fp16=on_gpu and dtype == "float16",
        use_cpu=not on_gpu,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return kwargs


def lora_config(peft: PeftSettings):
    """The ``peft.LoraConfig`` of a recipe's LoRA or QLoRA ``peft`` section."""
    from peft import LoraConfig

    return LoraConfig(
        r=peft.lora_r,
        lora_alpha=peft.lora_alpha,
        lora_dropout=peft.lora_dropout,
        target_modules=peft.lora_target_modules,
        task_type="CAUSAL_LM",
    )
