"""Merge a LoRA/QLoRA adapter into its base model's weights."""

from __future__ import annotations

import shutil
from pathlib import Path

from koaml.io import atomic_dir
from koaml.modeling import load_causal_lm, load_tokenizer, torch_dtype
from koaml.recipe import Recipe, read_recipe


def load_merge_base(base_path: str, recipe: Recipe):
    """The weights the adapter was trained against, in the recipe's dtype.

    For QLoRA that is the 4-bit base dequantized (not the original weights), so the merged model
    computes what the trained adapter model computed.
    """
    if recipe.quantized:
        quantized = load_causal_lm(base_path, recipe.model, recipe.peft)
        return quantized.dequantize().to(torch_dtype(recipe.model.dtype))
    return load_causal_lm(base_path, recipe.model)


def merge(config_path: str, base_path: str, adapter_dir: str, out_dir: str) -> None:
    """Apply the adapter to its base, merge the weights and save model, tokenizer and model card (a kept step that
    training ended before is passed on as such: koaml.snapshots)."""
    from peft import PeftModel

    from koaml.snapshots import pass_on_not_reached

    if pass_on_not_reached(adapter_dir, out_dir):
        return
    recipe = read_recipe(config_path)
    merged = PeftModel.from_pretrained(load_merge_base(base_path, recipe), adapter_dir).merge_and_unload()
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp)
        load_tokenizer(adapter_dir).save_pretrained(tmp)
        card = Path(adapter_dir) / "README.md"
        if card.exists():
            shutil.copy(card, tmp / "README.md")
