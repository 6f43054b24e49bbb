"""Estimate a job's peak GPU memory (training and evaluation) and a training job's disk.

Cheap to import (no torch, no transformers): the Snakefile sizes jobs with it while it plans.
The model's shape comes from :mod:`koaml.shapes` (never the weights); the memory model is the
usual back-of-the-envelope sum, per GPU, in GB of 2**30 bytes (what torch and nvidia-smi report):

- weights: the base model in ``model.dtype`` (``auto`` = bfloat16, as on KOA's Ampere+ GPUs); QLoRA
  stores the decoder's linear weights in 4-bit NF4 (0.5 byte/param plus the block constants), the
  embeddings, norms and ``lm_head`` stay 16-bit. LoRA adapters are fp32 (PEFT upcasts them).
- gradients and optimizer: only for trainable parameters, AdamW keeping two states. Full fine-tuning
  of a 16-bit model on one GPU or with DDP is pure 16-bit, as transformers does it: weights,
  gradients and states (``zeros_like(param)``) all bf16, 8 bytes/param. FSDP upcasts the trainable
  weights to fp32 (accelerate), DeepSpeed keeps an fp32 master copy: 16 bytes/param, sharded.
  ``*8bit*`` optimizers keep 2 bytes/param of states, ``adafactor`` and ``sgd`` (no momentum) ~0.
- sharding: FSDP (``full_shard``/``hybrid_shard``: all three, ``shard_grad_op``: gradients and
  optimizer) and DeepSpeed ZeRO (stage 1/2/3 from its JSON) divide by ``training.num_processes``,
  plus two gathered layers; plain DDP replicates everything. CPU offload is not modelled (an upper bound).
- activations, for a batch of ``per_device_train_batch_size`` sequences of ``model_max_length``
  tokens: one layer holds ``s·b·(17h + 8i)`` bytes in 16-bit (Korthikanti et al. 2022, with a gated
  MLP's four ``i``-wide tensors; ``5·a·s²·b`` more with eager attention); gradient checkpointing
  keeps each layer's input (``s·b·h``) plus one layer's full set; the logits add ``b·s·V·4`` bytes
  (one fp32 copy; it dominates for small models with big vocabularies).
- DPO (``trainer_type: dpo``): each row's chosen and rejected answers run in one batch (twice the
  sequences); full fine-tuning adds a frozen reference copy of the weights (LoRA and QLoRA disable the
  adapter instead).
- GRPO (``trainer_type: grpo``): a frozen reference copy for full fine-tuning when ``beta`` > 0; the
  generation of ``per_device_train_batch_size x gradient_accumulation_steps`` completions at once (TRL's
  generation batch) holds a KV cache of ``model_max_length`` tokens per completion, and the peak is the larger
  of that and the training activations (they do not overlap in time). With ``use_vllm`` colocated, vLLM takes
  ``vllm_gpu_memory_utilization`` of the GPU: the estimate is scaled so that training fits in the rest.
- overhead: 1 GB of CUDA context and allocator, plus a 10% fragmentation margin on the rest.

Tolerance: the guide's rough table is reproduced within a factor of 2 (0.5 <= estimate/guide <= 2),
except one row the guide gets physically wrong. ``tests/test_sizing.py`` checks it with the shipped
recipes at the guide's typical settings: batch 1 (``per_device_train_batch_size: 1``), each recipe's
``model_max_length`` (SmolLM 2048, 3B and 70B 4096, 8B 8192), gradient checkpointing on; the 3B QLoRA
and full rows, and 70B full, take the LoRA recipe with another ``peft.type``. GB per GPU:

===================  =====  ========  ===========================================================
model, method        guide  estimate  why they differ
===================  =====  ========  ===========================================================
SmolLM2-135M LoRA    2      1.8
SmolLM2-135M QLoRA   1      1.7       the 1 GB CUDA context outweighs the 0.3 GB model
SmolLM2-135M full    4      2.6
Llama-3.2-3B LoRA    8      11.0      4096 tokens: 2 GB of fp32 logits (128k vocabulary)
Llama-3.2-3B QLoRA   4      6.7       same logits; the tied embeddings stay 16-bit
Llama-3.2-3B full    16     30.7      AdamW states are bf16 too: 8 bytes/param (24 with adamw_8bit)
Llama-3.1-8B LoRA    24     25.6
Llama-3.1-8B QLoRA   12     15.0
Llama-3.1-8B full    40     74.9      8 bytes/param; the guide's 40 GB holds per GPU with FSDP
                                      over 4 GPUs (43) or nearly with adamw_8bit (58)
Llama-3.1-70B LoRA   80     50.0      per GPU: the recipe's FSDP over 4 GPUs (86 over 2); the bf16
                                      base alone is 131 GB, so 80 GB on one GPU is impossible
Llama-3.1-70B QLoRA  40     51.2
Llama-3.1-70B full   280    588       **exception** (2.1x), on one GPU: 280 GB is 4 bytes/param,
                                      the bf16 weights and gradients without AdamW's states; with
                                      FSDP over 4 GPUs it is 303 GB each (fp32 master weights):
                                      no KOA node holds it
===================  =====  ========  ===========================================================
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

from koaml.recipe import Recipe
from koaml.sections import TrainingSettings
from koaml.shapes import ModelShape, SizingError

GB = 2**30
CUDA_CONTEXT_GB = 1.0
FRAGMENTATION = 0.10
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2}
NF4_BLOCK = 64  # bitsandbytes 4-bit block size: one absmax per 64 weights
OOM_ADVICE = {
    "training": (
        "To use less memory: peft.type: qlora instead of lora or full fine-tuning; a smaller "
        "training.per_device_train_batch_size with a larger gradient_accumulation_steps; a smaller "
        "model.model_max_length; training.gradient_checkpointing: true; or shard over several GPUs with "
        "training.fsdp: 'full_shard auto_wrap' (or training.deepspeed) and training.num_processes: N."
    ),
    "evaluation": (
        "To use less memory: a smaller model.model_max_length or generation.per_device_batch_size in the "
        "benchmark, or model.dtype: bfloat16."
    ),
}


@dataclass(frozen=True)
class MemoryEstimate:
    """Peak GPU memory of a job, per GPU, in GB (2**30 bytes)."""

    weights_gb: float
    gradients_gb: float
    optimizer_gb: float
    activations_gb: float
    overhead_gb: float
    num_gpus: int = 1
    dtype: str = "bfloat16"
    kind: str = "training"  # or "evaluation"
    vllm_gb: float = 0.0  # GRPO's colocated vLLM: its share of the GPU

    @property
    def total_gb(self) -> float:
        parts = (self.weights_gb, self.gradients_gb, self.optimizer_gb, self.activations_gb, self.overhead_gb)
        return sum(parts) + self.vllm_gb

    def describe(self) -> str:
        gpus = f"each of {self.num_gpus} GPUs" if self.num_gpus > 1 else "1 GPU"
        return (
            f"{self.kind} needs ~{self.total_gb:.1f} GB on {gpus} ({self.dtype}): weights {self.weights_gb:.1f}"
            f" + gradients {self.gradients_gb:.1f} + optimizer {self.optimizer_gb:.1f}"
            f" + activations {self.activations_gb:.1f} + overhead {self.overhead_gb:.1f}"
            + (f" + vLLM {self.vllm_gb:.1f}" if self.vllm_gb else "")
        )


def _dtype(name: str) -> str:
    """The dtype a job computes in: ``auto`` is bfloat16 on the GPUs this sizes for."""
    return "bfloat16" if name == "auto" else name


def _optimizer_state_bytes(optim: str, state_bytes: int) -> float:
    """Bytes of optimizer state per trainable parameter."""
    optim = optim.lower()
    if "adafactor" in optim or optim.startswith("sgd"):
        return 0.0  # factored second moments (rows + columns) / no momentum by default
    states = 1 if "lion" in optim else 2
    return states * (1 if "8bit" in optim else state_bytes)


def _sharding(training: TrainingSettings) -> tuple[bool, bool, bool]:
    """Whether (weights, gradients, optimizer states) are sharded across the processes."""
    if training.num_processes == 1:
        return False, False, False
    fsdp = training.fsdp or ""
    if "full_shard" in fsdp or "hybrid_shard" in fsdp:
        return True, True, True
    if "shard_grad_op" in fsdp:
        return False, True, True
    if training.deepspeed:
        try:
            stage = json.loads(Path(training.deepspeed).read_text()).get("zero_optimization", {}).get("stage", 0)
        except (OSError, ValueError) as exc:
            raise SizingError(f"training.deepspeed: {training.deepspeed}: cannot read it ({exc})") from None
        return stage >= 3, stage >= 2, stage >= 1
    return False, False, False


def _with_overhead(parts: dict[str, float], **fields) -> MemoryEstimate:
    gb = {key: value / GB for key, value in parts.items()}
    overhead = CUDA_CONTEXT_GB + FRAGMENTATION * sum(gb.values())
    return MemoryEstimate(**{f"{key}_gb": value for key, value in gb.items()}, overhead_gb=overhead, **fields)


def estimate_training_memory(recipe: Recipe, shape: ModelShape) -> MemoryEstimate:
    """Peak per-GPU memory of training ``shape`` with a resolved recipe (see the module docstring)."""
    model, training, peft, trainer = recipe.model, recipe.training, recipe.peft, recipe.trainer
    dtype = _dtype(model.dtype)
    wbytes = DTYPE_BYTES[dtype]
    master_bytes = 0  # an fp32 copy of the weights kept by the optimizer
    if recipe.method == "full":
        trainable = shape.n_params
        grad_bytes = state_bytes = weight_bytes = wbytes  # pure 16-bit training: states follow the weights' dtype
        if dtype != "float32" and training.fsdp:  # accelerate upcasts FSDP's trainable weights to fp32
            grad_bytes = state_bytes = weight_bytes = 4
        elif dtype != "float32" and training.deepspeed:  # ZeRO keeps fp32 master weights and states
            master_bytes = state_bytes = 4
        weights = trainable * weight_bytes
    else:
        trainable = shape.lora_params(peft.lora_r, peft.lora_target_modules)
        if recipe.quantized:
            # one absmax per block: fp32, or with double quantization 8-bit plus an fp32 one per 256 blocks
            absmax = 1 / NF4_BLOCK + 4 / (256 * NF4_BLOCK) if peft.bnb_4bit_use_double_quant else 4 / NF4_BLOCK
            base = shape.linear_params * (0.5 + absmax) + (shape.n_params - shape.linear_params) * wbytes
        else:
            base = shape.n_params * wbytes
        weights = base + trainable * 4
        grad_bytes = state_bytes = 4  # adapters are fp32
    gradients = trainable * grad_bytes
    optimizer = trainable * (master_bytes + _optimizer_state_bytes(training.optim, state_bytes))

    n = training.num_processes
    shard_weights, shard_grads, shard_optimizer = _sharding(training)
    if shard_weights:  # each rank holds its shard plus the gathered layer being computed and the prefetched next one
        weights = weights / n + 2 * shape.linear_params / shape.n_layers * wbytes
    gradients /= n if shard_grads else 1
    optimizer /= n if shard_optimizer else 1

    if trainer.uses_reference_model(training) and recipe.method == "full":  # LoRA disables the adapter instead
        weights += shape.n_params * wbytes / (n if shard_weights else 1)

    # DPO runs the chosen and the rejected answer of each row in one batch: twice the sequences
    b = training.per_device_train_batch_size * (2 if trainer.paired else 1)
    s, h = model.model_max_length, shape.hidden_size
    scale = wbytes / 2  # the coefficients below are for 16-bit activations
    layer = b * s * (17 * h + (8 if shape.gated_mlp else 4) * shape.intermediate_size) * scale
    if model.attn_implementation == "eager":
        layer += 5 * shape.num_attention_heads * s * s * b * scale
    if training.gradient_checkpointing:
        activations = shape.n_layers * b * s * h * wbytes + layer
    else:
        activations = shape.n_layers * layer
    activations += b * s * shape.vocab_size * 4  # fp32 logits
    if trainer.generates:  # the KV cache of the completions sampled for a step's prompts
        generating = training.per_device_train_batch_size * training.gradient_accumulation_steps
        kv_cache = 2 * shape.n_layers * shape.num_key_value_heads * shape.head_dim * s * generating * wbytes
        activations = max(activations, kv_cache)
    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations}
    estimate = _with_overhead(parts, num_gpus=n, dtype=dtype, kind="training")
    if training.use_vllm and training.vllm_mode == "colocate":
        share = training.vllm_gpu_memory_utilization
        estimate = dataclasses.replace(estimate, vllm_gb=estimate.total_gb * share / (1 - share))
    return estimate


def estimate_training_disk_gb(recipe: Recipe, shape: ModelShape) -> float:
    """Disk a training job needs: ``save_total_limit`` checkpoints plus the one being written (trainable
    weights and their AdamW states) and the final model or adapter, with a 10% margin."""
    training, peft = recipe.training, recipe.peft
    if recipe.method == "full":
        trainable, weight_bytes = shape.n_params, DTYPE_BYTES[_dtype(recipe.model.dtype)]
    else:
        trainable, weight_bytes = shape.lora_params(peft.lora_r, peft.lora_target_modules), 4
    state_bytes = _optimizer_state_bytes(training.optim, weight_bytes)
    checkpoint = trainable * (weight_bytes + state_bytes)
    final = trainable * weight_bytes
    return (1 + FRAGMENTATION) * ((training.save_total_limit + 1) * checkpoint + final) / GB


def estimate_eval_memory(benchmark: dict, shape: ModelShape, num_gpus: int = 1) -> MemoryEstimate:
    """Peak memory per GPU of evaluating ``shape`` with a resolved benchmark: weights, KV cache and logits.

    ``per_device_batch_size: auto`` counts as 1: lm-eval then finds the largest batch that fits, so
    this is the minimum the job needs. Over ``num_gpus`` GPUs the layers (weights and KV cache) are
    split between them (lm-eval's ``parallelize``, vLLM's tensor parallelism); the logits are not.
    """
    model = benchmark["model"]
    dtype = _dtype(model["dtype"])
    wbytes = DTYPE_BYTES[dtype]
    b = benchmark["generation"]["per_device_batch_size"]
    b = 1 if b == "auto" else b
    s = model["model_max_length"]
    kv_cache = 2 * shape.n_layers * shape.num_key_value_heads * shape.head_dim * s * b * wbytes
    logits = b * s * shape.vocab_size * 4  # 16-bit logits and their log-softmax, or one fp32 copy
    weights = shape.n_params * wbytes / num_gpus
    parts = {"weights": weights, "gradients": 0, "optimizer": 0, "activations": kv_cache / num_gpus + logits}
    return _with_overhead(parts, num_gpus=num_gpus, dtype=dtype, kind="evaluation")
