"""The shape of a causal LM (parameter count, layers, widths), read without loading its weights.

Cheap to import (no torch, no transformers): the Snakefile sizes jobs with it while it plans. The shape
comes from ``config.json`` and the safetensors headers of a local folder, the Hugging Face cache or the hub.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING

from koaml.configfiles import ConfigError

if TYPE_CHECKING:
    from koaml.experiment import BaseModel
    from koaml.recipe import Recipe


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


def _safetensors_header(path: Path) -> dict[str, dict]:
    """The tensors of a safetensors file (name -> dtype, shape, offsets), from its JSON header alone."""
    try:
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(length))
        return {name: t for name, t in header.items() if name != "__metadata__"}
    except (OSError, struct.error, ValueError) as exc:
        raise SizingError(f"{path}: not a readable safetensors file ({exc})") from None


def _weight_files(folder: Path) -> list[Path] | None:
    """``folder``'s safetensors weight files (sharded or not); None if they are not all there."""
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = [folder / name for name in sorted(set(json.loads(index.read_text())["weight_map"].values()))]
    else:
        shards = [folder / "model.safetensors"]
    return shards if all(shard.is_file() for shard in shards) else None


def _weights_param_count(folder: Path) -> int | None:
    """Parameters in ``folder``'s safetensors weights; None if they are not all there."""
    shards = _weight_files(folder)
    if shards is None:
        return None
    try:
        return sum(math.prod(t["shape"]) for shard in shards for t in _safetensors_header(shard).values())
    except (KeyError, TypeError) as exc:
        raise SizingError(f"{folder}: unreadable safetensors header ({exc})") from None


def readable_model_folder(model: str) -> Path | None:
    """Where ``model``'s config.json and weights can be read now without a download: the local folder, or the
    hub cache's snapshot; None when neither is there (a model the workflow has yet to build, an uncached ID)."""
    folder = Path(model).expanduser()
    if (folder / "config.json").is_file():
        return folder
    if folder.exists() or model.count("/") > 1:
        return None
    from huggingface_hub import try_to_load_from_cache

    cached = try_to_load_from_cache(model, "config.json")
    return Path(cached).parent if isinstance(cached, str) else None


@cache
def matrix_module_names(folder: Path) -> frozenset[str] | None:
    """The modules with a 2-D weight (linear layers and embeddings, what LoRA adapts), such as
    ``model.layers.0.self_attn.q_proj``, from the safetensors headers in ``folder``; None if the weights are
    not all there."""
    shards = _weight_files(folder)
    if shards is None:
        return None
    return frozenset(
        name.removesuffix(".weight")
        for shard in shards
        for name, tensor in _safetensors_header(shard).items()
        if name.endswith(".weight") and len(tensor.get("shape", ())) == 2
    )


# What the fit checks know of a model: its config (as config.json holds it) and the names of its modules with a 2-D
# weight (None when its weights are not all here).
ModelFacts = tuple[dict, frozenset[str] | None]


def folder_facts(folder: Path) -> ModelFacts:
    """The facts of a model folder with a config.json: its config, and its modules from the safetensors headers."""
    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    modules = matrix_module_names(folder)
    if modules is not None and config.get("tie_word_embeddings"):
        modules |= {"lm_head"}  # tied to the input embeddings: not stored, but a module all the same
    return config, modules


def model_facts(base: BaseModel) -> ModelFacts | None:
    """A base model's facts, read without downloading or building it: from its folder or the hub cache, or, for
    a model the workflow has yet to build or convert, from its build file or GGUF file (:func:`planned_facts`);
    None for a hub model that is not in the cache."""
    if base.built_by_workflow and not (Path(base.location) / "config.json").is_file():
        return planned_facts(base)
    folder = readable_model_folder(base.location)
    return folder_facts(folder) if folder is not None else None


def planned_facts(base: BaseModel) -> ModelFacts:
    """The facts of the model a build file or GGUF file makes, from the config transformers reads there and the
    model it makes on the meta device (no weights); cached, by the file's content or size and time, because the
    Snakefile asks on every parse."""
    from koaml.io import config_hash, write_json
    from koaml.tasks import cache_dir, installed_version

    source = Path(base.build or base.gguf_file)
    stamp = source.read_text(encoding="utf-8") if base.build else [str(source.resolve()), source.stat().st_mtime_ns]
    key = config_hash([stamp, installed_version("transformers")])
    path = cache_dir() / f"model-facts-{key}.json"
    if not path.is_file():
        try:
            config, modules = _meta_model_facts(base)
        except (KeyError, TypeError, ValueError, ImportError, OSError) as exc:
            raise ConfigError(
                f"{base.where}: transformers cannot make a model of {source} ({type(exc).__name__}: {exc})"
            ) from None
        write_json(path, {"config": config, "modules": sorted(modules)})
    facts = json.loads(path.read_text())
    return facts["config"], frozenset(facts["modules"])


def _meta_model_facts(base: BaseModel) -> tuple[dict, set[str]]:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    if base.build:
        from koaml.tinymodel import load_spec, tiny_config

        config = tiny_config(load_spec(base.build))
    else:
        gguf = Path(base.gguf_file)
        config = AutoConfig.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    weights = {name: getattr(module, "weight", None) for name, module in model.named_modules()}
    return config.to_dict(), {name for name, weight in weights.items() if weight is not None and weight.dim() == 2}


def check_recipe_fits_model(recipe: Recipe, facts: ModelFacts, model: str, where: str) -> None:
    """Raise ConfigError when ``recipe`` asks what ``model`` (known by its ``facts``) cannot do: LoRA target
    modules it does not have, or ``model.model_max_length`` beyond its position limit; ``where`` names the
    recipe in messages."""
    config, modules = facts
    check_length_fits_model(recipe.model.model_max_length, config, model, where)
    targets = recipe.peft.lora_target_modules
    if recipe.method == "full" or not isinstance(targets, list) or modules is None:
        return
    missing = [t for t in targets if not any(m == t or m.endswith(f".{t}") for m in modules)]
    if missing:
        leaves = sorted({m.rsplit(".", 1)[-1] for m in modules})
        raise ConfigError(
            f"{where}: peft.lora_target_modules: {', '.join(map(repr, missing))}: no such linear module in {model} "
            f"(it has: {', '.join(leaves)}; or use all-linear)"
        )


POSITION_LIMIT_KEYS = ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length")


def check_length_fits_model(length: int, config: dict, model: str, where: str) -> None:
    """Raise ConfigError when ``model.model_max_length`` (``length``) is beyond the position limit in ``config``."""
    limit_key = next((k for k in POSITION_LIMIT_KEYS if isinstance(config.get(k), int)), None)
    if limit_key and length > config[limit_key]:
        raise ConfigError(
            f"{where}: model.model_max_length: {length} is beyond {model}'s position limit "
            f"({limit_key}: {config[limit_key]}); set model_max_length to {config[limit_key]} or less"
        )


def check_benchmark_fits_model(bench, facts: ModelFacts, model: str, where: str) -> None:
    """Raise ConfigError when a benchmark's ``model.model_max_length`` (prompt plus generation) is beyond the
    position limit of ``model`` (known by its ``facts``)."""
    check_length_fits_model(bench["model"]["model_max_length"], facts[0], model, where)


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
            raise SizingError(
                f"{source}: no integer '{key}': cannot size this architecture; set the job's resources by hand"
            )
        return config[key]

    h, layers, vocab = need("hidden_size"), need("num_hidden_layers"), need("vocab_size")
    inter, heads = need("intermediate_size"), need("num_attention_heads")
    kv_heads = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or h // heads
    q_dim, kv_dim = heads * head_dim, kv_heads * head_dim
    model_type = config.get("model_type", "")
    if model_type == "phi":  # phi-1/2: biased projections, LayerNorm (weight + bias) shared by attention and MLP
        linears = [
            ("q_proj", h, q_dim, True),
            ("k_proj", h, kv_dim, True),
            ("v_proj", h, kv_dim, True),
            ("dense", q_dim, h, True),
            ("fc1", h, inter, True),
            ("fc2", inter, h, True),
        ]
        layer_norms, final_norm, head_bias = 2 * h, 2 * h, vocab
    elif model_type == "phi3":  # fused qkv and gate/up projections
        linears = [
            ("qkv_proj", h, q_dim + 2 * kv_dim, False),
            ("o_proj", q_dim, h, False),
            ("gate_up_proj", h, 2 * inter, False),
            ("down_proj", inter, h, False),
        ]
        layer_norms, final_norm, head_bias = 2 * h, h, 0
    else:  # Llama, Mistral, Qwen2 (q/k/v biases), ...: RMSNorm before attention and MLP
        qkv_bias = bool(config.get("attention_bias")) or model_type == "qwen2"
        mlp_bias = bool(config.get("mlp_bias"))
        linears = [
            ("q_proj", h, q_dim, qkv_bias),
            ("k_proj", h, kv_dim, qkv_bias),
            ("v_proj", h, kv_dim, qkv_bias),
            ("o_proj", q_dim, h, bool(config.get("attention_bias"))),
            ("gate_proj", h, inter, mlp_bias),
            ("up_proj", h, inter, mlp_bias),
            ("down_proj", inter, h, mlp_bias),
        ]
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


@cache
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
