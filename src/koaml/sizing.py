"""Estimate a job's GPU memory and pick the KOA GPU (GRES type and count) it fits on.

Cheap to import (no torch, no transformers): the SLURM profile calls it while Snakemake parses.
Shapes come from ``config.json`` and the safetensors headers (never the weights); the memory
model is the usual back-of-the-envelope sum, per GPU, in GB of 2**30 bytes (what torch and
nvidia-smi report):

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

import json
import math
import struct
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path

import yaml

from koaml.config import ConfigError

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


class SizingError(ConfigError):
    """A job's memory cannot be estimated, or fits no KOA GPU."""


@dataclass(frozen=True)
class ModelShape:
    """What sizing needs to know about a causal LM, read without loading its weights."""

    n_params: int
    n_layers: int
    hidden_size: int
    vocab_size: int
    intermediate_size: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    tie_word_embeddings: bool
    linear_layers: tuple[tuple[str, int, int], ...]  # (module name, in_features, out_features) of one decoder layer

    @property
    def gated_mlp(self) -> bool:
        return any(name in ("gate_proj", "gate_up_proj") for name, _, _ in self.linear_layers)

    @property
    def linear_params(self) -> int:
        """Weights of the decoder layers' linear modules: what QLoRA quantizes and FSDP gathers layer by layer."""
        return self.n_layers * sum(n_in * n_out for _, n_in, n_out in self.linear_layers)

    def lora_params(self, rank: int, targets: str | list[str]) -> int:
        """Parameters of rank-``rank`` LoRA adapters on ``targets`` (module names, or ``all-linear``)."""
        return self.n_layers * sum(
            rank * (n_in + n_out)
            for name, n_in, n_out in self.linear_layers
            if targets == "all-linear" or name in targets
        )


def _safetensors_numel(path: Path) -> int:
    """Number of values stored in a safetensors file, from its JSON header alone."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        return sum(math.prod(t["shape"]) for name, t in header.items() if name != "__metadata__")
    except (OSError, struct.error, ValueError, KeyError, TypeError) as exc:
        raise SizingError(f"{path}: not a readable safetensors file ({exc})") from None


def _weights_param_count(folder: Path) -> int | None:
    """Parameters in ``folder``'s safetensors weights (sharded or not); None if they are not all there."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        shards = [folder / "model.safetensors"]
    if not all(shard.is_file() for shard in shards):
        return None
    return sum(_safetensors_numel(shard) for shard in shards)


def _hub_config(model: str) -> Path:
    """config.json of a hub model, from the Hugging Face cache (or the hub, when online)."""
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    try:
        return Path(hf_hub_download(model, "config.json"))
    except (OSError, ValueError, EntryNotFoundError) as exc:
        raise SizingError(
            f"{model}: not a local folder and its config.json is not in the Hugging Face cache "
            f"({type(exc).__name__}): run `snakemake fetch` on the login node (it has internet) to cache "
            "the model, or set the job's GPU resources by hand"
        ) from None


def _hub_param_count(model: str) -> int | None:
    """Parameter count from the hub's safetensors headers (HTTP range requests); None offline or on failure."""
    from huggingface_hub import constants, get_safetensors_metadata
    from huggingface_hub.errors import EntryNotFoundError, NotASafetensorsRepoError, SafetensorsParsingError

    if constants.is_offline_mode():
        return None
    try:
        return sum(get_safetensors_metadata(model).parameter_count.values())
    except (OSError, EntryNotFoundError, NotASafetensorsRepoError, SafetensorsParsingError):
        return None


def shape_from_config(config: dict, n_params: int | None = None, source: str = "config.json") -> ModelShape:
    """A ModelShape from a config.json dict (Llama, Mistral, Qwen2, Phi and Phi-3 layouts).

    ``n_params`` (e.g. from safetensors headers) overrides the count computed from the config: embeddings,
    attention with grouped-query heads, the MLP, norms, biases, and ``lm_head`` unless tied.
    """

    def need(key: str) -> int:
        if not isinstance(config.get(key), int):
            raise SizingError(f"{source}: no integer '{key}': cannot size this architecture; set the job's resources by hand")
        return config[key]

    h, layers, vocab = need("hidden_size"), need("num_hidden_layers"), need("vocab_size")
    inter, heads = need("intermediate_size"), need("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    model_type = config.get("model_type", "")
    if model_type == "phi":  # phi-1/2: biased projections, LayerNorm (weight + bias) shared by attention and MLP
        linears = [("q_proj", h, q_dim, True), ("k_proj", h, kv_dim, True), ("v_proj", h, kv_dim, True),
                   ("dense", q_dim, h, True), ("fc1", h, inter, True), ("fc2", inter, h, True)]
        layer_norms, final_norm, head_bias = 2 * h, 2 * h, vocab
    elif model_type == "phi3":  # fused qkv and gate/up projections
        linears = [("qkv_proj", h, q_dim + 2 * kv_dim, False), ("o_proj", q_dim, h, False),
                   ("gate_up_proj", h, 2 * inter, False), ("down_proj", inter, h, False)]
        layer_norms, final_norm, head_bias = 2 * h, h, 0
    else:  # Llama, Mistral, Qwen2 (q/k/v biases), ...: RMSNorm before attention and MLP
        qkv_bias = bool(config.get("attention_bias")) or model_type == "qwen2"
        mlp_bias = bool(config.get("mlp_bias"))
        linears = [("q_proj", h, q_dim, qkv_bias), ("k_proj", h, kv_dim, qkv_bias), ("v_proj", h, kv_dim, qkv_bias),
                   ("o_proj", q_dim, h, bool(config.get("attention_bias"))),
                   ("gate_proj", h, inter, mlp_bias), ("up_proj", h, inter, mlp_bias), ("down_proj", inter, h, mlp_bias)]
        layer_norms, final_norm, head_bias = 2 * h, h, 0
    tied = bool(config.get("tie_word_embeddings", False))
    if n_params is None:
        per_layer = sum(n_in * n_out + (n_out if bias else 0) for _, n_in, n_out, bias in linears) + layer_norms
        n_params = vocab * h + layers * per_layer + final_norm + (0 if tied else vocab * h + head_bias)
    return ModelShape(
        n_params=n_params,
        n_layers=layers,
        hidden_size=h,
        vocab_size=vocab,
        intermediate_size=inter,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        tie_word_embeddings=tied,
        linear_layers=tuple((name, n_in, n_out) for name, n_in, n_out, _ in linears),
    )


@lru_cache(maxsize=None)
def model_shape(model: str, trust_remote_code: bool = False) -> ModelShape:
    """The shape of ``model`` (a local folder or a hub ID), without loading its weights.

    The parameter count comes from the safetensors headers when the weights are there (a local
    folder, the Hugging Face cache, or the hub when online), else from config.json. Checkpoints that
    are already quantized are counted from config.json (their packed tensors would mislead).
    ``trust_remote_code`` is accepted for symmetry with the recipe: only JSON is read, no code runs.
    Cached per process: the Snakefile asks once per job.
    """
    folder = Path(model)
    if folder.is_dir():
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise SizingError(f"{model}: no config.json in this folder")
        n_params = _weights_param_count(folder)
    else:
        config_path = _hub_config(model)
        n_params = _weights_param_count(config_path.parent)  # the cached snapshot `snakemake fetch` filled
        if n_params is None:
            n_params = _hub_param_count(model)
    config = json.loads(config_path.read_text(encoding="utf-8"))
    if "quantization_config" in config:
        n_params = None
    return shape_from_config(config, n_params, source=str(config_path))


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

    @property
    def total_gb(self) -> float:
        return self.weights_gb + self.gradients_gb + self.optimizer_gb + self.activations_gb + self.overhead_gb

    def describe(self) -> str:
        gpus = f"each of {self.num_gpus} GPUs" if self.num_gpus > 1 else "1 GPU"
        return (
            f"{self.kind} needs ~{self.total_gb:.1f} GB on {gpus} ({self.dtype}): weights {self.weights_gb:.1f}"
            f" + gradients {self.gradients_gb:.1f} + optimizer {self.optimizer_gb:.1f}"
            f" + activations {self.activations_gb:.1f} + overhead {self.overhead_gb:.1f}"
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


def _sharding(training: dict) -> tuple[bool, bool, bool]:
    """Whether (weights, gradients, optimizer states) are sharded across the processes."""
    if training["num_processes"] == 1:
        return False, False, False
    fsdp = training.get("fsdp") or ""
    if "full_shard" in fsdp or "hybrid_shard" in fsdp:
        return True, True, True
    if "shard_grad_op" in fsdp:
        return False, True, True
    if training.get("deepspeed"):
        try:
            stage = json.loads(Path(training["deepspeed"]).read_text()).get("zero_optimization", {}).get("stage", 0)
        except (OSError, ValueError) as exc:
            raise SizingError(f"training.deepspeed: {training['deepspeed']}: cannot read it ({exc})") from None
        return stage >= 3, stage >= 2, stage >= 1
    return False, False, False


def _with_overhead(parts: dict[str, float], **fields) -> MemoryEstimate:
    gb = {key: value / GB for key, value in parts.items()}
    overhead = CUDA_CONTEXT_GB + FRAGMENTATION * sum(gb.values())
    return MemoryEstimate(**{f"{key}_gb": value for key, value in gb.items()}, overhead_gb=overhead, **fields)


def estimate_training_memory(recipe: dict, shape: ModelShape) -> MemoryEstimate:
    """Peak per-GPU memory of training ``shape`` with a resolved recipe (see the module docstring)."""
    model, training = recipe["model"], recipe["training"]
    peft = recipe.get("peft") or {"type": "none"}
    dtype = _dtype(model["dtype"])
    wbytes = DTYPE_BYTES[dtype]
    master_bytes = 0  # an fp32 copy of the weights kept by the optimizer
    if peft["type"] == "none":
        trainable = shape.n_params
        grad_bytes = state_bytes = weight_bytes = wbytes  # pure 16-bit training: states follow the weights' dtype
        if dtype != "float32" and training.get("fsdp"):  # accelerate upcasts FSDP's trainable weights to fp32
            grad_bytes = state_bytes = weight_bytes = 4
        elif dtype != "float32" and training.get("deepspeed"):  # ZeRO keeps fp32 master weights and states
            master_bytes = state_bytes = 4
        weights = trainable * weight_bytes
    else:
        trainable = shape.lora_params(peft["lora_r"], peft["lora_target_modules"])
        if peft["type"] == "qlora":
            # one absmax per block: fp32, or with double quantization 8-bit plus an fp32 one per 256 blocks
            absmax = 1 / NF4_BLOCK + 4 / (256 * NF4_BLOCK) if peft.get("bnb_4bit_use_double_quant", True) else 4 / NF4_BLOCK
            base = shape.linear_params * (0.5 + absmax) + (shape.n_params - shape.linear_params) * wbytes
        else:
            base = shape.n_params * wbytes
        weights = base + trainable * 4
        grad_bytes = state_bytes = 4  # adapters are fp32
    gradients = trainable * grad_bytes
    optimizer = trainable * (master_bytes + _optimizer_state_bytes(training["optim"], state_bytes))

    n = training["num_processes"]
    shard_weights, shard_grads, shard_optimizer = _sharding(training)
    if shard_weights:  # each rank holds its shard plus the gathered layer being computed and the prefetched next one
        weights = weights / n + 2 * shape.linear_params / shape.n_layers * wbytes
    gradients /= n if shard_grads else 1
    optimizer /= n if shard_optimizer else 1

    b, s, h = training["per_device_train_batch_size"], model["model_max_length"], shape.hidden_size
    scale = wbytes / 2  # the coefficients below are for 16-bit activations
    layer = b * s * (17 * h + (8 if shape.gated_mlp else 4) * shape.intermediate_size) * scale
    if model.get("attn_implementation") == "eager":
        layer += 5 * shape.num_attention_heads * s * s * b * scale
    if training["gradient_checkpointing"]:
        activations = shape.n_layers * b * s * h * wbytes + layer
    else:
        activations = shape.n_layers * layer
    activations += b * s * shape.vocab_size * 4  # fp32 logits
    parts = {"weights": weights, "gradients": gradients, "optimizer": optimizer, "activations": activations}
    return _with_overhead(parts, num_gpus=n, dtype=dtype, kind="training")


def estimate_training_disk_gb(recipe: dict, shape: ModelShape) -> float:
    """Disk a training job needs: ``save_total_limit`` checkpoints plus the one being written (trainable
    weights and their AdamW states) and the final model or adapter, with a 10% margin."""
    training = recipe["training"]
    peft = recipe.get("peft") or {"type": "none"}
    if peft["type"] == "none":
        trainable, weight_bytes = shape.n_params, DTYPE_BYTES[_dtype(recipe["model"]["dtype"])]
    else:
        trainable, weight_bytes = shape.lora_params(peft["lora_r"], peft["lora_target_modules"]), 4
    state_bytes = _optimizer_state_bytes(training["optim"], weight_bytes)
    checkpoint = trainable * (weight_bytes + state_bytes)
    final = trainable * weight_bytes
    return (1 + FRAGMENTATION) * ((training["save_total_limit"] + 1) * checkpoint + final) / GB


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


@dataclass(frozen=True)
class KoaGpu:
    """One of KOA's GPU types, as listed in ``koa_gpus.yaml``."""

    type: str
    vram_gb: int
    partitions: tuple[str, ...]
    bf16: bool
    mig: bool
    preemptible: bool


def _load_gpus() -> tuple[tuple[str, ...], tuple[KoaGpu, ...]]:
    table = yaml.safe_load(resources.files("koaml").joinpath("koa_gpus.yaml").read_text(encoding="utf-8"))
    preemptible = tuple(table["preemptible_partitions"])
    gpus = tuple(
        KoaGpu(
            type=g["type"],
            vram_gb=g["vram_gb"],
            partitions=tuple(g["partitions"]),
            bf16=g["bf16"],
            mig=g["mig"],
            preemptible=all(p in preemptible for p in g["partitions"]),
        )
        for g in table["gpus"]
    )
    return preemptible, gpus


PREEMPTIBLE_PARTITIONS, KOA_GPUS = _load_gpus()


@dataclass(frozen=True)
class GpuChoice:
    """The GPUs a job should request."""

    gres: str  # e.g. "gpu:NV-A30:1"
    gpu_type: str
    count: int
    vram_gb: int
    partitions: tuple[str, ...]
    preemptible: bool


def choose_gpu(
    estimate: MemoryEstimate,
    allow_preemptible: bool = True,
    allow_mig: bool = True,
    max_gpus_per_node: int = 4,
) -> GpuChoice:
    """The smallest KOA GPU type that holds ``estimate`` (``estimate.num_gpus`` of them, on one node).

    Types on the non-preemptible ``gpu`` partition come first, then the preemptible kill-* ones; a
    bfloat16 job needs an Ampere+ GPU; MIG slices serve single-GPU jobs only. The estimate already
    carries its margin, so a GPU fits when its memory covers ``estimate.total_gb``.
    """
    count = estimate.num_gpus
    if count > max_gpus_per_node:
        raise SizingError(f"{estimate.describe()}: more than {max_gpus_per_node} GPUs on one node; lower training.num_processes")
    needs_bf16 = estimate.dtype == "bfloat16"
    usable = [
        gpu for gpu in KOA_GPUS
        if (gpu.bf16 or not needs_bf16) and not (gpu.mig and (count > 1 or not allow_mig))
    ]
    fitting = [gpu for gpu in usable if estimate.total_gb <= gpu.vram_gb]
    allowed = [gpu for gpu in fitting if allow_preemptible or not gpu.preemptible]
    if allowed:
        gpu = min(allowed, key=lambda g: (g.preemptible, g.vram_gb))  # min() keeps the table's order on ties
        return GpuChoice(f"gpu:{gpu.type}:{count}", gpu.type, count, gpu.vram_gb, gpu.partitions, gpu.preemptible)
    advice = OOM_ADVICE[estimate.kind]
    bf16 = " bfloat16-capable" if needs_bf16 else ""
    if fitting:
        names = ", ".join(gpu.type for gpu in fitting)
        raise SizingError(
            f"{estimate.describe()}: only the preemptible partitions ({', '.join(PREEMPTIBLE_PARTITIONS)}) have"
            f"{bf16} GPUs that large ({names}); allow preemptible jobs there (and checkpoint often), or shrink the job. {advice}"
        )
    largest = max(usable, key=lambda g: g.vram_gb)
    raise SizingError(
        f"{estimate.describe()}: more than the largest{bf16} KOA GPU ({largest.type}, {largest.vram_gb} GB). {advice}"
    )
