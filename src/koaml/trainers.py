"""The trainer registry: what each ``training.trainer_type`` (sft, dpo, grpo) needs and does.

Every per-trainer fact lives here (the data it reads, its memory, its TRL classes, the keys it passes to
its TRL config); other modules ask the registry instead of comparing ``trainer_type`` strings.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from koaml.sections import TrainingSettings

PREFERENCE_KEYS = ("prompt", "chosen", "rejected")


@dataclass(frozen=True)
class Trainer:
    """One trainer type and the facts that differ between trainers."""

    name: str  # the training.trainer_type value
    trl_name: str  # TRL's classes are trl.<trl_name>Config and trl.<trl_name>Trainer
    formats: tuple[str, ...]  # the row formats (koaml.formats.detect_format) it trains on
    needs: str | None  # what its data must hold, for the error message (None: say what the data looks like)
    passthrough: tuple[str, ...]  # training keys passed to its TRL config unchanged
    packs: bool = False  # may pack several rows into one sequence
    paired: bool = False  # each row runs twice per step (DPO's chosen and rejected answer)
    generates: bool = False  # samples completions while training (GRPO): prompts leave room for them
    # Why its eval_loss does not measure the model (None: it does); a search cannot optimize it.
    eval_loss_meaningless: str | None = None
    # Whether training keeps a frozen reference model (for full fine-tuning, a second copy of the weights).
    uses_reference_model: Callable[[TrainingSettings], bool] = lambda training: False
    # Keyword arguments of its TRL config beyond ``passthrough``, from the training section.
    extra_config: Callable[[TrainingSettings], dict] = lambda training: {}


TRAINERS = {
    "sft": Trainer(
        name="sft",
        trl_name="SFT",
        formats=("messages", "prompt_completion", "alpaca", "text"),
        needs=None,
        passthrough=("completion_only_loss",),
        packs=True,
    ),
    "dpo": Trainer(
        name="dpo",
        trl_name="DPO",
        formats=("preference",),
        needs=f"preference rows ({', '.join(PREFERENCE_KEYS)})",
        passthrough=("beta",),
        paired=True,
        uses_reference_model=lambda training: True,
        extra_config=lambda training: {"loss_type": [training.loss_type]},
    ),
    "grpo": Trainer(
        name="grpo",
        trl_name="GRPO",
        formats=("prompt",),
        needs="rows with a 'prompt' and the columns its rewards read, no completions: it generates its own",
        passthrough=(
            "beta",
            "loss_type",
            "num_generations",
            "max_completion_length",
            "temperature",
            "top_p",
            "num_iterations",
            "epsilon",
            "scale_rewards",
            "mask_truncated_completions",
            "use_vllm",
        ),
        generates=True,
        # TRL 1.x computes GRPO's loss on eval data too (GRPOTrainer.prediction_step), but it is the policy-gradient
        # surrogate: on-policy its ratio is 1 and each group's advantages are centred on the group's mean reward.
        eval_loss_meaningless=(
            "TRL's GRPO loss on eval data is its policy-gradient surrogate, about 0 by construction (each group's "
            "advantages are centred on its mean reward) and exactly 0 when a group's rewards are all equal"
        ),
        uses_reference_model=lambda training: training.beta > 0,
        extra_config=lambda training: (
            {"vllm_mode": training.vllm_mode, "vllm_gpu_memory_utilization": training.vllm_gpu_memory_utilization}
            if training.use_vllm
            else {}
        ),
    ),
}
