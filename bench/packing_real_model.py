"""Packing on the real model: useful (non-padding) tokens/s packed vs unpacked, and what `packing: auto` picks.

SmolLM2-135M-Instruct (converted from the GGUF that `make` installs), LoRA as in the shipped recipes, float32,
sdpa on the CPU, gradient checkpointing on (as in the recipe), at model_max_length 512, 2,048 and 8,192. The rows are instruction-like prompt/completion
pairs with a long tail of lengths (median ~100 tokens, p90 ~240, max ~750: the lognormal rows of
bench/packing_throughput.py, through SmolLM2's tokenizer). Each variant's batches are the ones the trainer
really builds (koaml.packed_rows.sft_trainer: TRL's packing and collators, per_device_train_batch_size 4), and each
batch is timed through forward and backward. A packed batch holds at most 8,192 token positions (at 8,192 one
packed row, at 2,048 four): its tokens/s is per row, which is what a longer batch of such rows gets too.
Variants alternate, median of the repeats (one repeat at 8,192: a packed row takes minutes on 2 cores).

From the timed batches the script also fits `time = a * positions + b * attended pairs` and reports how much
more an attended pair costs than its FLOPs suggest compared with the matrix products: the
`koaml.packing.ATTENTION_WEIGHT` for the CPU. `auto` must never be slower than unpacked.

    .venv/bin/python bench/packing_real_model.py [--smoke]    # writes bench/results/packing_real_model.json
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, alternate, median, repeats, smoke, smollm2, write_result
from packing_throughput import make_rows

BATCH = 4
MAX_POSITIONS = 8192  # token positions timed per packed batch at most (rows beyond are cut)


def trainer_batches(model, tokenizer, rows: list[dict], max_length: int, packing: bool, out: Path):
    """The first batches the trainer would train on with packing on or off, and the trainer."""
    from datasets import Dataset
    from trl import SFTConfig

    from koaml.packed_rows import sft_trainer
    from koaml.recipe import load_recipe
    from koaml.trl_args import trl_config_kwargs

    recipe = load_recipe(
        REPO / "config/recipes/smollm_135m_lora.yaml",
        {
            "model": {"model_max_length": max_length, "dtype": "float32", "attn_implementation": "sdpa"},
            "training": {"per_device_train_batch_size": BATCH},  # gradient checkpointing on, as in the recipe
        },
    )
    trainer = sft_trainer(
        model=model,
        args=SFTConfig(**trl_config_kwargs(recipe, str(out), has_eval=False, on_gpu=False, packing=packing)),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )
    batches = []
    for batch in trainer.get_train_dataloader():
        if packing:
            keep = max(1, MAX_POSITIONS // max_length)
            batch = {k: v[:keep] if hasattr(v, "shape") else v for k, v in batch.items()}
            batch["num_real_tokens"] = sum(_real_length(pos) for pos in batch["position_ids"])
        batches.append(batch)
        if len(batches) == 3:
            break
    return batches, trainer


def time_batches(trainer, batches: list[dict], packing: bool, budget_s: float) -> dict:
    """Forward and backward of each batch until ``budget_s`` is spent (at least one batch)."""
    model = trainer.model
    model.train()
    tokens = positions = pairs = 0
    samples = []
    start = time.perf_counter()
    for batch in batches:
        batch = dict(batch)
        rows, width = batch["input_ids"].shape
        real = batch["num_real_tokens"] if packing else int(batch["attention_mask"].sum())
        t0 = time.perf_counter()
        loss = trainer.compute_loss(model, batch)
        loss.backward()
        model.zero_grad(set_to_none=True)
        elapsed = time.perf_counter() - t0
        samples.append({"seconds": elapsed, "positions": rows * width, "pairs": rows * width * width, "tokens": real})
        tokens, positions, pairs = tokens + real, positions + rows * width, pairs + rows * width * width
        if time.perf_counter() - start >= budget_s:
            break
    seconds = sum(s["seconds"] for s in samples)
    return {"tokens_per_s": tokens / seconds, "seconds": seconds, "tokens": tokens, "batches": samples}


def _real_length(position_ids) -> int:
    """Tokens of a packed row before its padding (the collator pads with position 0 after the last sequence)."""
    pos = position_ids.tolist()
    end = len(pos)
    while end > 1 and pos[end - 1] == 0 and pos[end - 2] == 0:
        end -= 1
    return end


def fit_attention_weight(samples: list[dict], n_params: int, n_layers: int, width: int) -> float | None:
    """Least-squares ``seconds = a * positions + b * pairs``; the attention weight ``(b / a) / (FLOPs ratio)``."""
    import numpy as np

    if len(samples) < 2:
        return None
    x = np.array([[s["positions"], s["pairs"]] for s in samples], dtype=float)
    y = np.array([s["seconds"] for s in samples])
    (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
    if a <= 0 or b <= 0:
        return None
    return float((b / a) / ((4.0 * n_layers * width) / (2.0 * n_params)))


def main() -> None:
    import torch
    from peft import get_peft_model

    from koaml.modeling import load_tokenizer
    from koaml.packing import decide, estimate
    from koaml.recipe import load_recipe
    from koaml.trl_args import lora_config

    torch.set_num_threads(2)
    quick = smoke()
    lengths_to_run = [64, 128] if quick else [512, 2048, 8192]
    n_rows = 40 if quick else 600
    with TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        folder = smollm2(tmp)
        from transformers import AutoModelForCausalLM

        tokenizer = load_tokenizer(str(folder))
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
        if quick:  # two layers: the shape of the JSON, in seconds
            model.model.layers = model.model.layers[:2]
            model.config.num_hidden_layers = 2
        recipe = load_recipe(REPO / "config/recipes/smollm_135m_lora.yaml")
        model = get_peft_model(model, lora_config(recipe.peft))
        # as the trainer does when it starts: without it sdpa keeps every layer's L x L attention for backward
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        config = model.config
        n_params = sum(p.numel() for p in model.parameters())
        width = config.num_attention_heads * config.head_dim
        rows = make_rows(n_rows)
        token_lengths = [len(tokenizer(r["prompt"] + r["completion"])["input_ids"]) for r in rows]
        by_length, samples = {}, []
        for max_length in lengths_to_run:
            prepared = {
                p: trainer_batches(model, tokenizer, rows, max_length, p, tmp / f"{max_length}-{p}")
                for p in (False, True)
            }
            results: dict[str, list[dict]] = {"unpacked": [], "packed": []}
            variants = {
                name: (
                    lambda name=name, p=p, results=results, prepared=prepared: (
                        results[name].append(time_batches(prepared[p][1], prepared[p][0], p, 5 if quick else 40)) or 0.0
                    )
                )
                for name, p in (("unpacked", False), ("packed", True))
            }
            alternate(variants, 1 if max_length >= 8192 else repeats(3))
            samples += [s for runs in results.values() for r in runs for s in r["batches"]]
            cost = estimate(token_lengths, max_length, BATCH, n_params, config.num_hidden_layers, width, "sdpa", "cpu")
            auto, why = decide("auto", "sdpa", False, cost)
            packed = median([r["tokens_per_s"] for r in results["packed"]])
            unpacked = median([r["tokens_per_s"] for r in results["unpacked"]])
            by_length[str(max_length)] = {
                "packed_tokens_per_s": packed,
                "unpacked_tokens_per_s": unpacked,
                "speedup": packed / unpacked,
                "predicted_speedup": cost.speedup,
                "auto": "packed" if auto else "unpacked",
                "auto_reason": why,
                "auto_vs_unpacked": (packed if auto else unpacked) / unpacked,
                "repeats": len(results["packed"]),
                "runs": results,
            }
            print(
                f"max_length {max_length}: packed {packed:.0f} vs unpacked {unpacked:.0f} useful tokens/s, speedup "
                f"{packed / unpacked:.2f}x (predicted {cost.speedup:.2f}x); auto: {'packed' if auto else 'unpacked'}, "
                f"{by_length[str(max_length)]['auto_vs_unpacked']:.2f}x unpacked",
                flush=True,
            )
    weight = fit_attention_weight(samples, n_params, config.num_hidden_layers, width)
    result = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32), LoRA r8 on q/k/v/o",
        "device": "cpu",
        "attn_implementation": "sdpa",
        "per_device_train_batch_size": BATCH,
        "rows": n_rows,
        "row_tokens": {"median": sorted(token_lengths)[len(token_lengths) // 2], "max": max(token_lengths)},
        "by_max_length": by_length,
        "auto_never_slower": all(v["auto_vs_unpacked"] >= 0.95 for v in by_length.values()),
        "fitted_attention_weight": weight,
    }
    speedups = ", ".join(
        f"{int(n):,}: {v['speedup']:.2f}x, auto {v['auto']}"
        for n, v in sorted(by_length.items(), key=lambda kv: int(kv[0]))
    )
    write_result(
        "packing_real_model",
        result,
        f"packed over unpacked useful tokens/s by max_length ({speedups}); auto never slower than unpacked: "
        f"{'yes' if result['auto_never_slower'] else 'no'}; fitted attention weight (CPU, sdpa) {weight}",
    )


if __name__ == "__main__":
    main()
