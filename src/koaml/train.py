"""Fine-tuning with TRL (SFT, DPO, GRPO): full, LoRA or QLoRA, resumable from checkpoints."""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from koaml.io import atomic_dir, write_json
from koaml.modeling import attention_of, device, four_bit_layers, load_causal_lm, load_tokenizer, torch_dtype
from koaml.packing import VARLEN_ATTENTION, decide, estimate
from koaml.recipe import Recipe

log = logging.getLogger(__name__)

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


def sft_trainer(**kwargs):
    """A ``trl.SFTTrainer`` (same arguments) that packs into separate rows unless the attention is varlen.

    TRL's ``bfd`` packing is always padding-free: a batch becomes ONE flattened row, and TRL refuses a custom
    collator then. That is right for flash-attention (varlen kernels), but with sdpa/eager attention spans the
    whole flattened batch, its cost growing with (batch * max_length)^2. So here each packed row stays a batch
    row (up to max_length, several sequences whose ``position_ids`` restart at 0, right-padded to the longest row)
    and no attention mask is passed: transformers' built-in architectures then derive a per-sequence causal
    (block-diagonal) mask from the ``position_ids`` (``masking_utils.find_packed_sequence_indices``; only when the
    attention mask is None). Padding positions (position 0, label -100) come after every real token, which the
    causal mask keeps from seeing them. TRL counts a mask-less batch's tokens as ``position_ids.size(1)`` (one
    row), so the collator also hands the real token count to ``compute_loss`` for the ``num_tokens`` metric.
    """
    import torch
    from trl import SFTTrainer
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    class PackedRowsCollator(DataCollatorForLanguageModeling):
        def torch_call(self, examples):
            batch = super().torch_call(examples)  # padded rows, position_ids from the packed seq_lengths
            real = batch.pop("attention_mask")  # its presence would turn transformers' packed-sequence masking off
            batch["labels"][batch["position_ids"] == 0] = -100  # no row's first token is predicted from another's
            batch["num_real_tokens"] = int(real.sum())
            return batch

    class Trainer(SFTTrainer):
        def __init__(self, **kw):
            super().__init__(**kw)
            attn = attention_of(self.model)
            if self.padding_free and self.args.packing and attn not in VARLEN_ATTENTION:
                flat = self.data_collator
                self.data_collator = PackedRowsCollator(
                    pad_token_id=flat.pad_token_id, return_position_ids=True, pad_to_multiple_of=flat.pad_to_multiple_of
                )

        def compute_loss(self, model, inputs, *args, **kw):
            real = inputs.pop("num_real_tokens", None)
            counted = trained_token_count(self)
            result = super().compute_loss(model, inputs, *args, **kw)
            if real is not None and trained_token_count(self) != counted:  # TRL counted position_ids.size(1)
                device = inputs["input_ids"].device
                real = int(self.accelerator.gather_for_metrics(torch.tensor([real], device=device)).sum())
                set_trained_token_count(self, counted + real)
            return result

    return Trainer(**kwargs)


# TRL keeps the count of trained tokens (the ``num_tokens`` metric) in private SFTTrainer attributes, with no
# public API to correct it; these two functions are the only place koaml touches them, and
# tests/test_train.py::test_trl_private_token_count_is_where_koaml_expects fails when a TRL release moves them.
def trained_token_count(trainer) -> int:
    """The tokens TRL has counted as trained so far."""
    return trainer._total_train_tokens


def set_trained_token_count(trainer, tokens: int) -> None:
    """Set TRL's count of trained tokens and the ``num_tokens`` metric it logs."""
    trainer._total_train_tokens = tokens
    trainer._metrics["train"]["num_tokens"] = [tokens]


def sft_config_kwargs(
    recipe: Recipe, output_dir: str, has_eval: bool, on_gpu: bool, packing: bool = False, report_to: list[str] = ()
) -> dict:
    """Map a recipe (the guide's keys) to ``trl.SFTConfig`` keyword arguments (transformers 5 names).

    ``packing`` is the decision of ``koaml.packing.decide`` for the loaded model and the prepared data;
    ``report_to`` the trackers :func:`tracking` enabled.
    """
    kwargs = training_arguments(recipe, output_dir, has_eval, on_gpu, report_to)
    kwargs.update(packing=packing, completion_only_loss=recipe["training"]["completion_only_loss"])
    if packing:
        kwargs["packing_strategy"] = "bfd"  # position_ids restart at each packed sequence (see sft_trainer)
    return kwargs


def dpo_config_kwargs(recipe: Recipe, output_dir: str, has_eval: bool, on_gpu: bool, report_to: list[str] = ()) -> dict:
    """``trl.DPOConfig`` keyword arguments: the shared training arguments, ``beta`` and ``loss_type``."""
    kwargs = training_arguments(recipe, output_dir, has_eval, on_gpu, report_to)
    kwargs.update(beta=recipe["training"]["beta"], loss_type=[recipe["training"]["loss_type"]])
    return kwargs


# Recipe `training` keys of GRPO passed to GRPOConfig unchanged (the vLLM ones only with use_vllm).
_GRPO_PASSTHROUGH = (
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
)


def grpo_config_kwargs(
    recipe: Recipe, output_dir: str, has_eval: bool, on_gpu: bool, report_to: list[str] = ()
) -> dict:
    """``trl.GRPOConfig`` keyword arguments: the shared training arguments, the GRPO keys and the reward weights.
    GRPO has no ``max_length``: prompts were fitted to ``model_max_length - max_completion_length`` by prepare."""
    t = recipe["training"]
    kwargs = training_arguments(recipe, output_dir, has_eval, on_gpu, report_to)
    del kwargs["max_length"]
    kwargs.update({key: t[key] for key in _GRPO_PASSTHROUGH})
    if t["use_vllm"]:
        kwargs.update(vllm_mode=t["vllm_mode"], vllm_gpu_memory_utilization=t["vllm_gpu_memory_utilization"])
    kwargs["reward_weights"] = [float(spec["weight"]) for spec in recipe.rewards]
    data = recipe["data"]
    if data["template"] == "model" and "enable_thinking" in data:  # GRPO renders prompts with these, not per row
        kwargs["chat_template_kwargs"] = {"enable_thinking": data["enable_thinking"]}
    return kwargs


def training_arguments(recipe: Recipe, output_dir: str, has_eval: bool, on_gpu: bool, report_to: list[str]) -> dict:
    """The keyword arguments every trainer's config shares (transformers' TrainingArguments, TRL's max_length)."""
    t = recipe["training"]
    kwargs = {key: t[key] for key in _PASSTHROUGH}
    # transformers 5 dropped warmup_ratio: warmup_steps takes a float in [0, 1) as a ratio instead.
    kwargs["warmup_steps"] = t["warmup_steps"] if "warmup_steps" in t else float(t["warmup_ratio"])
    kwargs[_checkpointing_key()] = t["gradient_checkpointing"]
    if t["fsdp"]:
        kwargs.update(fsdp=t["fsdp"], fsdp_config=t["fsdp_config"])
    if t["deepspeed"]:
        kwargs["deepspeed"] = t["deepspeed"]
    if t["num_processes"] > 1 and not on_gpu:
        kwargs["ddp_backend"] = "gloo"
    dtype = recipe["model"]["dtype"]
    kwargs.update(
        output_dir=output_dir,
        max_length=recipe["model"]["model_max_length"],
        report_to=list(report_to) or "none",
        save_strategy="steps",
        logging_strategy="steps",
        logging_first_step=True,
        logging_nan_inf_filter=False,  # a NaN loss must show (and stop the run), not be hidden
        eval_strategy="steps" if has_eval else "no",
        eval_steps=(t["eval_steps"] or t["save_steps"]) if has_eval else None,
        bf16=on_gpu and dtype in ("bfloat16", "auto"),
        fp16=on_gpu and dtype == "float16",
        use_cpu=not on_gpu,
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    return kwargs


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


def lora_config(peft: dict):
    from peft import LoraConfig

    return LoraConfig(
        r=peft["lora_r"],
        lora_alpha=peft["lora_alpha"],
        lora_dropout=peft["lora_dropout"],
        target_modules=peft["lora_target_modules"],
        task_type="CAUSAL_LM",
    )


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss or gradient norm."""


class Preempted(SystemExit):
    """SIGTERM arrived (SLURM preemption or time limit); a checkpoint was saved."""

    def __init__(self, step: int):
        super().__init__(PREEMPTED_EXIT_CODE)
        self.step = step


PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, as if the signal had killed us
# Seconds a step may still take after SIGTERM before the process exits without a new checkpoint (the last
# one is kept): within SLURM's KillWait (30 s by default) before SIGKILL. KOAML_SIGTERM_GRACE_S overrides it.
SIGTERM_GRACE_S = 20.0
# The workflow process that started this job (set by the Snakefile); training stops when it is gone.
CONTROLLER_PID_VARIABLE = "KOAML_CONTROLLER_PID"
CONTROLLER_POLL_S = 5.0


def _exit_now(why: str) -> None:
    """Exit at once with the preemption status (from a watchdog thread: the main thread is inside a step)."""
    log.warning("%s; exiting without a new checkpoint (the run resumes from its last one)", why)
    logging.shutdown()
    os._exit(PREEMPTED_EXIT_CODE)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _callbacks():
    """Stop on a non-finite loss or gradient norm (a diverged DPO run's loss can stay finite while its gradient
    norm is NaN); on SIGTERM (or when the workflow process that started the job is gone), save a
    checkpoint at the end of the step and stop, or exit after SIGTERM_GRACE_S if the step does not end by then;
    keep ``progress.json`` (step, loss, time left) next to the checkpoints for ``koaml status``."""
    from transformers import TrainerCallback

    class Guard(TrainerCallback):
        def __init__(self):
            self.terminated = False
            self.started: tuple[float, int] | None = None
            self.grace = threading.Timer(
                float(os.environ.get("KOAML_SIGTERM_GRACE_S", SIGTERM_GRACE_S)),
                _exit_now,
                ["the step did not end within the grace period after SIGTERM"],
            )
            self.grace.daemon = True
            signal.signal(signal.SIGTERM, self._on_sigterm)
            controller = os.environ.get(CONTROLLER_PID_VARIABLE)
            if controller and controller.isdigit():
                threading.Thread(target=self._watch, args=(int(controller),), daemon=True).start()

        def _watch(self, pid: int) -> None:
            while not self.terminated:
                time.sleep(CONTROLLER_POLL_S)
                if not _alive(pid):
                    log.warning("the workflow process (pid %d) that started this job is gone", pid)
                    self._on_sigterm(signal.SIGTERM, None)

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = (time.monotonic(), state.global_step)

        def _write_progress(self, args, state, logs):
            seconds, first = self.started or (time.monotonic(), 0)
            done = state.global_step - first
            rate = (time.monotonic() - seconds) / done if done > 0 else None
            progress = {
                "step": state.global_step,
                "max_steps": state.max_steps,
                "loss": logs.get("loss"),
                "eta_s": round(rate * (state.max_steps - state.global_step), 1) if rate else None,
                "updated": time.time(),
            }
            write_json(Path(args.output_dir) / "progress.json", progress)

        def _on_sigterm(self, signum, frame):
            if self.terminated:
                return
            log.warning("SIGTERM: saving a checkpoint after this step, then stopping")
            self.terminated = True
            self.grace.start()

        def on_step_end(self, args, state, control, **kwargs):
            if self.terminated:
                self.grace.cancel()  # the step ended in time: the checkpoint is written, however long that takes
                control.should_save = True
                control.should_training_stop = True

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if state.is_world_process_zero and "loss" in logs:
                self._write_progress(args, state, logs)
            bad = {
                k: logs[k]
                for k in ("loss", "grad_norm")
                if isinstance(logs.get(k), float) and not math.isfinite(logs[k])
            }
            if bad:
                what = ", ".join(f"{k} is {v}" for k, v in bad.items())
                raise NonFiniteLossError(
                    f"{what} at step {state.global_step}: lower training.learning_rate, "
                    "check the data for broken rows, or keep training.max_grad_norm > 0"
                )

    return Guard()


def launch(argv: list[str], num_processes: int) -> None:
    """Run ``koaml train`` in ``num_processes`` data-parallel processes with torchrun. SIGTERM is passed on to
    torchrun (which passes it to the workers); torchrun gets SIGTERM too if this process dies."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={num_processes}"]
    proc = subprocess.Popen([*cmd, "-m", "koaml.cli", *argv], preexec_fn=_terminate_with_parent)
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    if returncode := proc.wait():
        raise SystemExit(returncode)


def _terminate_with_parent() -> None:
    """In a child process: ask Linux for SIGTERM when the parent dies (PR_SET_PDEATHSIG); nothing elsewhere."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1 = PR_SET_PDEATHSIG


def is_distributed_worker() -> bool:
    return "LOCAL_RANK" in os.environ


def choose_packing(recipe: Recipe, model, data_dir: str | Path) -> tuple[bool, str]:
    """``koaml.packing.decide`` for the loaded model (its attention after any fallback) and the prepared rows'
    token lengths (``lengths.json``); logged, with a warning where packing is forced on a remote-code model."""
    config = model.config
    attn = attention_of(model)
    remote_code = recipe.trust_remote_code
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    cost = estimate(
        json.loads((Path(data_dir) / "lengths.json").read_text()),
        max_length=recipe["model"]["model_max_length"],
        batch_size=recipe["training"]["per_device_train_batch_size"],
        n_params=sum(p.numel() for p in model.parameters()),
        n_layers=config.num_hidden_layers,
        attention_width=config.num_attention_heads * head_dim,
        attn_implementation=attn,
        device=device(),
        seed=recipe["training"]["seed"],
    )
    on, why = decide(recipe.packing, attn, remote_code, cost)
    unchecked = on and remote_code and attn not in VARLEN_ATTENTION
    log.log(logging.WARNING if unchecked else logging.INFO, "packing: %s", why)
    return on, why


def train(recipe: Recipe, model_path: str, data_dir: str, out_dir: str, checkpoint_root: str, threads: int) -> None:
    """Train one run and write its adapter (LoRA/QLoRA) or full model to ``out_dir``.

    Checkpoints go to ``checkpoint_root/<config hash>``, outside Snakemake's outputs, so a killed
    job resumes from its latest checkpoint when the workflow runs again, and a changed recipe starts fresh.
    """
    import torch
    from datasets import load_dataset
    from transformers.trainer_utils import get_last_checkpoint

    torch.set_num_threads(max(1, threads // recipe["training"]["num_processes"]))
    checkpoint_dir = Path(checkpoint_root) / recipe.config_hash

    data_files = {"train": str(Path(data_dir) / "train.jsonl")}
    has_eval = (Path(data_dir) / "eval.jsonl").stat().st_size > 0
    if has_eval:
        data_files["eval"] = str(Path(data_dir) / "eval.jsonl")
    data = load_dataset("json", data_files=data_files)

    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, recipe["model"], recipe["peft"] if recipe.quantized else None)
    quantized = {"base_4bit": four_bit_layers(model)} if recipe.quantized else {}
    on_gpu = device() == "cuda"
    report_to, env = tracking(recipe.report_to, Path(out_dir).parent / "tracking")
    os.environ.update(env)
    common = {
        "model": model,
        "train_dataset": data["train"],
        "eval_dataset": data.get("eval"),
        "processing_class": tokenizer,
        "peft_config": lora_config(recipe["peft"]) if recipe.method != "full" else None,
        "callbacks": [guard := _callbacks()],
    }
    if recipe.trainer_type == "dpo":
        from trl import DPOConfig, DPOTrainer

        packing, why = False, "off (DPO)"
        # The reference model: the start model itself, with the LoRA adapter disabled (no second copy), or for
        # full fine-tuning a second copy TRL loads from the same folder.
        args = DPOConfig(**dpo_config_kwargs(recipe, str(checkpoint_dir), has_eval, on_gpu, report_to))
        trainer = DPOTrainer(args=args, **common)
    elif recipe.trainer_type == "grpo":
        from trl import GRPOConfig, GRPOTrainer

        from koaml.rewards import reward_functions

        packing, why = False, "off (GRPO)"
        if recipe["training"]["use_vllm"]:
            require_vllm()
        args = GRPOConfig(**grpo_config_kwargs(recipe, str(checkpoint_dir), has_eval, on_gpu, report_to))
        trainer = GRPOTrainer(args=args, reward_funcs=reward_functions(recipe.rewards), **common)
    else:
        from trl import SFTConfig

        packing, why = choose_packing(recipe, model, data_dir)
        args = SFTConfig(**sft_config_kwargs(recipe, str(checkpoint_dir), has_eval, on_gpu, packing, report_to))
        trainer = sft_trainer(args=args, **common)
    last = get_last_checkpoint(str(checkpoint_dir)) if checkpoint_dir.is_dir() else None
    if last:
        log.info("resuming from %s", last)
    started = time.monotonic()
    result = trainer.train(resume_from_checkpoint=last)
    if guard.terminated:
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
        "train_loss": result.training_loss,
        "final_eval_loss": next(
            (e["eval_loss"] for e in reversed(trainer.state.log_history) if "eval_loss" in e), None
        ),
        "dtype": str(torch_dtype(recipe["model"]["dtype"])),
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
    shutil.rmtree(checkpoint_dir, ignore_errors=True)


def require_vllm() -> None:
    """GRPO's ``use_vllm`` needs the vllm package (KOA's optional extra) and a GPU."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None or device() != "cuda":
        raise SystemExit(
            "training.use_vllm: needs the vllm package and a GPU (pip install -e '.[koa]' on KOA); "
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
