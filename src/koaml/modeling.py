"""Loading models and tokenizers the way a recipe says: dtype, attention, 4-bit quantization."""

from __future__ import annotations

import importlib.util
import logging
import os

from koaml.sections import ModelSettings, PeftSettings

log = logging.getLogger(__name__)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def quantized_device_map() -> dict:
    """Where a 4-bit model loads: whole on this process's GPU (torchrun's LOCAL_RANK), or the CPU."""
    return {"": "cpu" if device() == "cpu" else int(os.environ.get("LOCAL_RANK", 0))}


def torch_dtype(name: str):
    """The torch dtype for a config's ``dtype`` (``auto``: bfloat16 on a GPU that has it, else float32)."""
    import torch

    if name == "auto":
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    return getattr(torch, name)


def attn_implementation(requested: str) -> str:
    """``requested``, or ``sdpa`` with a warning when flash-attention 2 cannot run here."""
    if requested == "flash_attention_2":
        import torch

        if importlib.util.find_spec("flash_attn") is None or not torch.cuda.is_available():
            log.warning("flash_attention_2 needs the flash-attn package and a GPU; falling back to sdpa")
            return "sdpa"
    return requested


def attention_of(model) -> str:
    """The attention kernel a loaded model runs (after any fallback: what packing and sizing must assume)."""
    return model.config._attn_implementation


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(path: str, model: ModelSettings, quantize_4bit: PeftSettings | None = None):
    """Load a causal LM per a recipe's ``model`` section; ``quantize_4bit`` (a QLoRA ``peft`` section) holds the
    bitsandbytes settings."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    dtype = torch_dtype(model.dtype)
    kwargs = {
        "dtype": dtype,
        "attn_implementation": attn_implementation(model.attn_implementation),
        "trust_remote_code": model.trust_remote_code,
    }
    if quantize_4bit is not None:
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type=quantize_4bit.bnb_4bit_quant_type,
            bnb_4bit_use_double_quant=quantize_4bit.bnb_4bit_use_double_quant,
            bnb_4bit_compute_dtype=dtype,
        )
        kwargs["device_map"] = quantized_device_map()
    return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def four_bit_layers(model) -> dict:
    """What of a loaded model is 4-bit: the number of its bitsandbytes ``Linear4bit`` layers and their quant types
    (a QLoRA run's record that its base really was quantized)."""
    import bitsandbytes as bnb

    layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
    return {"linear4bit_layers": len(layers), "quant_types": sorted({m.weight.quant_state.quant_type for m in layers})}
