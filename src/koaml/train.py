"""The training job: fine-tune one run with TRL (SFT, DPO, GRPO; full, LoRA or QLoRA), resumable from checkpoints."""

from __future__ import annotations

import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path

from koaml.io import atomic_dir, write_json
from koaml.lifecycle import NonFiniteLossError, Preempted, guard
from koaml.modeling import attention_of, device, four_bit_layers, load_causal_lm, load_tokenizer, torch_dtype
from koaml.packed_rows import sft_trainer
from koaml.packing import VARLEN_ATTENTION, decide, estimate
from koaml.recipe import Recipe
from koaml.snapshots import hand_over, keeper
from koaml.trl_args import lora_config, trl_config_kwargs

log = logging.getLogger(__name__)


def tracking(report_to: list[str], tracking_dir: str | Path) -> tuple[list[str], dict[str, str]]:
    """The trackers to enable and the environment that keeps their data local, under ``tracking_dir``.

    TensorBoard and MLflow write files there (no server needed); W&B is enabled only when
    ``WANDB_API_KEY`` is set, and its local files go there too.
    """
    tracking_dir = Path(tracking_dir).resolve()
    enabled, env = [], {}
    for tracker in report_to:
        if tracker == "wandb" and not os.environ.get("WANDB_API_KEY"):
            log.warning("report_to: wandb skipped: WANDB_API_KEY is not set")
            continue
        enabled.append(tracker)
    if "tensorboard" in enabled:
        env["TENSORBOARD_LOGGING_DIR"] = str(tracking_dir / "tensorboard")
    if "mlflow" in enabled:
        env.setdefault(
            "MLFLOW_TRACKING_URI", os.environ.get("MLFLOW_TRACKING_URI") or (tracking_dir / "mlruns").as_uri()
        )
    if "wandb" in enabled:
        env["WANDB_DIR"] = str(tracking_dir)
    return enabled, env


def choose_packing(recipe: Recipe, model, data_dir: str | Path) -> tuple[bool, str]:
    """``koaml.packing.decide`` for the loaded model (its attention after any fallback) and the prepared rows'
    token lengths (``lengths.json``); logged, with a warning where packing is forced on a remote-code model."""
    config = model.config
    attn = attention_of(model)
    remote_code = recipe.model.trust_remote_code
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cost = estimate(
        json.loads((Path(data_dir) / "lengths.json").read_text()),
        max_length=recipe.model.model_max_length,
        batch_size=recipe.training.per_device_train_batch_size,
        n_params=sum(p.numel() for p in model.parameters()),
        n_layers=config.num_hidden_layers,
        attention_width=config.num_attention_heads * head_dim,
        attn_implementation=attn,
        device=device(),
        seed=recipe.training.seed,
    )
    on, why = decide(recipe.training.packing, attn, remote_code, cost)
    unchecked = on and remote_code and attn not in VARLEN_ATTENTION
    log.log(logging.WARNING if unchecked else logging.INFO, "packing: %s", why)
    return on, why


def train(
    recipe: Recipe,
    model_path: str,
    data_dir: str,
    out_dir: str,
    checkpoint_root: str,
    threads: int,
    search_trial: bool = False,
) -> None:
    """Train one run and write its adapter (LoRA/QLoRA) or full model to ``out_dir``.

    Checkpoints go to ``checkpoint_root/<config hash>``, outside Snakemake's outputs, so a killed
    job resumes from its latest checkpoint when the workflow runs again, and a changed recipe starts fresh.
    A ``search_trial`` that diverges (a non-finite loss: a learning rate too high, say) is not an error: its
    summary says ``diverged``, the search tells the study it failed and goes on.
    """
    import torch
    import trl
    from datasets import load_dataset
    from transformers.trainer_utils import get_last_checkpoint

    torch.set_num_threads(max(1, threads // recipe.training.num_processes))
    checkpoint_dir = Path(checkpoint_root) / recipe.config_hash

    data_files = {"train": str(Path(data_dir) / "train.jsonl")}
    has_eval = (Path(data_dir) / "eval.jsonl").stat().st_size > 0
    if has_eval:
        data_files["eval"] = str(Path(data_dir) / "eval.jsonl")
    data = load_dataset("json", data_files=data_files)

    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, recipe.model, recipe.peft if recipe.quantized else None)
    quantized = {"base_4bit": four_bit_layers(model)} if recipe.quantized else {}
    on_gpu = device() == "cuda"
    report_to, env = tracking(recipe.report_to, Path(out_dir).parent / "tracking")
    os.environ.update(env)
    common = {
        "model": model,
        "train_dataset": data["train"],
        "eval_dataset": data.get("eval"),
        "processing_class": tokenizer,
        "peft_config": lora_config(recipe.peft) if recipe.method != "full" else None,
        "callbacks": [stopper := guard()],
    }
    keep = recipe.training.keep_checkpoints or []  # checkpoint_eval's steps
    if keep:
        common["callbacks"].append(keeper(keep, checkpoint_dir / "kept"))
    kind = recipe.trainer  # the registry's entry
    if kind.packs:
        packing, why = choose_packing(recipe, model, data_dir)
    else:
        packing, why = False, f"off ({kind.trl_name})"
    if recipe.training.use_vllm:
        require_vllm()
    args = getattr(trl, f"{kind.trl_name}Config")(
        **trl_config_kwargs(recipe, str(checkpoint_dir), has_eval, on_gpu, packing, report_to)
    )
    if kind.generates:  # GRPO scores its own completions with the recipe's rewards
        from koaml.rewards import reward_functions

        common["reward_funcs"] = reward_functions(recipe.rewards)
    # DPO's reference model is the start model itself with the LoRA adapter disabled (no second copy), or for
    # full fine-tuning a second copy TRL loads from the same folder.
    trainer_class = sft_trainer if kind.packs else getattr(trl, f"{kind.trl_name}Trainer")
    trainer = trainer_class(args=args, **common)
    last = get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    started = time.monotonic()
    diverged = None
    try:
        result = trainer.train(resume_from_checkpoint=last)
    except NonFiniteLossError as error:
        if not search_trial:
            raise
        log.warning("this search trial diverged (%s); it is recorded as failed and the search goes on", error)
        diverged, result = str(error), None
    if stopper.terminated:
        log.warning("stopped at step %d by SIGTERM; rerun the workflow to resume", trainer.state.global_step)
        raise Preempted(trainer.state.global_step)

    summary = {
        "method": recipe.method,
        "trainer_type": recipe.trainer_type,
        "resumed_from": last,
        "global_step": trainer.state.global_step,
        "world_size": trainer.args.world_size,
        "packing": packing,
        "packing_reason": why,
        "train_loss": result.training_loss if result else None,
        "diverged": diverged,
        "final_eval_loss": next(
            (e["eval_loss"] for e in reversed(trainer.state.log_history) if "eval_loss" in e), None
        ),
        "dtype": str(torch_dtype(recipe.model.dtype)),
        "config_hash": recipe.config_hash,
        **quantized,
        **resource_usage(time.monotonic() - started, trainer.args.world_size),
    }
    if not trainer.is_world_process_zero():
        return
    data_stats = json.loads((Path(data_dir) / "stats.json").read_text())
    with atomic_dir(out_dir) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_json(tmp / "log_history.json", trainer.state.log_history)
        write_json(tmp / "train_summary.json", summary)
        (tmp / "README.md").write_text(model_card(recipe, data_stats, summary))
        if keep and not diverged:
            hand_over(checkpoint_dir / "kept", tmp, keep, trainer.state.global_step)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def require_vllm() -> None:
    """GRPO's ``use_vllm`` needs the vllm package (KOA's optional extra) and a GPU."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None or device() != "cuda":
        raise SystemExit(
            "training.use_vllm: needs the vllm package and a GPU (pip install -e '.[gpu]' on KOA); "
            "set use_vllm: false to generate with transformers"
        )


def resource_usage(wall_time_s: float, world_size: int) -> dict:
    """Wall time, peak memory and, under SLURM, the job ID and GPU-hours of this training."""
    import torch

    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    usage = {
        "wall_time_s": round(wall_time_s, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "peak_gpu_memory_mb": round(torch.cuda.max_memory_allocated() / 2**20, 1) if gpus else None,
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
    }
    usage["gpu_hours"] = round(wall_time_s / 3600 * max(gpus, world_size if gpus else 0), 3) if gpus else 0.0
    return usage


def model_card(recipe: Recipe, data_stats: dict, summary: dict) -> str:
    """A Markdown model card: method, final losses, data statistics and the resolved recipe."""
    import yaml

    loss = lambda v: "n/a" if v is None else f"{v:.4f}"  # noqa: E731
    return (
        f"# Fine-tuned with koa-ml ({summary['method']})\n\n"
        f"- steps: {summary['global_step']}\n"
        f"- final training loss (mean over the run): {loss(summary['train_loss'])}\n"
        f"- final eval loss: {loss(summary['final_eval_loss'])}\n\n"
        f"## Data\n\n```json\n{json.dumps(data_stats, indent=2)}\n```\n\n"
        f"## Resolved recipe (config hash {recipe.config_hash})\n\n```yaml\n{yaml.safe_dump(recipe.as_dict(), sort_keys=True)}```\n"
    )
