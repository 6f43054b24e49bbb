"""Merge a LoRA/QLoRA adapter into its base model's weights."""

from __future__ import annotations

from koaml.config import load_yaml
from koaml.io import atomic_dir
from koaml.modeling import load_causal_lm, load_tokenizer


def merge(config_path: str, base_path: str, adapter_dir: str, out_dir: str) -> None:
    """Load the base in the recipe's dtype (unquantized), apply the adapter, merge and save."""
    from peft import PeftModel

    recipe = load_yaml(config_path)
    base = load_causal_lm(base_path, recipe["model"])
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        load_tokenizer(adapter_dir).save_pretrained(tmp)
