"""The real model's training throughput and memory per method: SmolLM2-135M-Instruct with LoRA, QLoRA and full
fine-tuning on the CPU, next to what koaml.memory predicts for the same model and recipe on a GPU.

Each method is a real `koaml train` job of the example experiment's recipe (config/recipes/smollm2_arith_*.yaml,
float32, batch 8 of the demo's arithmetic rows) cut to a few optimizer steps, run in its own process with the
measurement settings of bench/train_memory.py (safetensors memory-mapping off, a fixed glibc mmap threshold).
Reported per method: useful tokens/s (TRL's token count over the trainer's runtime), the job's peak RSS, the
training steps' peak RSS and that minus the RSS of a process that only imported the training stack, and the
memory model's GPU estimate (with and without its CUDA-context allowance). The methods alternate over the
repeats; medians.

    .venv/bin/python bench/real_model_training.py [--smoke]    # writes bench/results/real_model_training.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, alternate, median, prepare_once, repeats, run, smoke, smollm2, train_args, write_result
from train_memory import NO_MMAP, baseline_rss_mb, estimate, train_sampling_rss

METHODS = ("lora", "qlora", "full")


def train_once(root: Path, model: Path, config: Path, data: Path) -> dict:
    """One `koaml train` job; its throughput from the trainer's log and its memory."""
    out = root / "trained"
    training_mb = train_sampling_rss(
        [sys.executable, "-c", NO_MMAP, *train_args(config, model, data, out, root / "checkpoints", 2)],
        root / "train.log",
    )
    history = json.loads((out / "log_history.json").read_text())
    summary = json.loads((out / "train_summary.json").read_text())
    final = next(e for e in reversed(history) if "train_runtime" in e)
    tokens = next(e["num_tokens"] for e in reversed(history) if "num_tokens" in e)
    run(["rm", "-rf", out, root / "checkpoints"])
    return {
        "tokens_per_s": tokens / final["train_runtime"],
        "train_runtime_s": final["train_runtime"],
        "tokens": tokens,
        "peak_rss_mb": summary["peak_rss_mb"],
        "training_rss_mb": training_mb,
        "steps": summary["global_step"],
    }


def main() -> None:
    from koaml.io import write_yaml
    from koaml.recipe import load_recipe

    steps = 2 if smoke() else 6
    baseline_mb = baseline_rss_mb()
    # --smoke trains full fine-tuning only: the suite trains this model's LoRA and QLoRA elsewhere
    results: dict[str, list[dict]] = {m: [] for m in (["full"] if smoke() else METHODS)}
    estimates = {}
    with TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = smollm2(tmp)
        prepared, shared = {}, {}
        for method in results:
            root = tmp / method
            root.mkdir()
            recipe = load_recipe(
                REPO / f"config/recipes/smollm2_arith_{method}.yaml",
                {
                    "training": {"max_steps": steps, "logging_steps": 1, "save_steps": 1000},
                    "data": {"eval_fraction": 0},
                },
            )
            write_yaml(root / "config.yaml", recipe)
            data = prepare_once(recipe, root / "config.yaml", model, root / "data", shared)
            prepared[method] = (root, root / "config.yaml", data)
            estimates[method] = estimate(recipe, model)
        variants = {
            m: (lambda m=m: results[m].append(train_once(prepared[m][0], model, *prepared[m][1:])) or 0.0)
            for m in results
        }
        alternate(variants, repeats(2))
    methods = {}
    for method, runs in results.items():
        training_mb = median([r["training_rss_mb"] for r in runs])
        methods[method] = {
            "tokens_per_s": median([r["tokens_per_s"] for r in runs]),
            "peak_rss_mb": median([r["peak_rss_mb"] for r in runs]),
            "training_rss_mb": training_mb,
            "above_baseline_mb": training_mb - baseline_mb,
            "estimate": estimates[method],
            "runs": runs,
        }
    result = {
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to float32)",
        "device": "cpu (2 threads), float32, sdpa, batch 8 x ~20 tokens",
        "optimizer_steps": steps,
        "baseline_rss_mb": baseline_mb,
        "methods": methods,
        "note": "the sizing estimate is GPU memory (bf16 on a GPU; here float32 on the CPU): compare it with the "
        "training steps' RSS above the import baseline",
    }
    print(f"SmolLM2-135M on the CPU, {steps} steps, medians of {repeats(2)} (import baseline {baseline_mb:.0f} MB):")
    print(f"  {'method':6} {'tokens/s':>9} {'job peak':>9} {'training':>9} {'- baseline':>11} {'GPU estimate':>13}")
    for method, m in methods.items():
        est = f"{m['estimate']['total_mb']:12.0f}M" if m["estimate"] else f"{'n/a':>13}"
        print(
            f"  {method:6} {m['tokens_per_s']:9.0f} {m['peak_rss_mb']:8.0f}M {m['training_rss_mb']:8.0f}M {m['above_baseline_mb']:10.0f}M {est}"
        )
    names = {"lora": "LoRA", "qlora": "QLoRA", "full": "full"}
    estimates = " / ".join(f"{m['estimate']['total_mb']:,.0f}" if m["estimate"] else "n/a" for m in methods.values())
    write_result(
        "real_model_training",
        result,
        ", ".join(f"{names.get(k, k)} {m['tokens_per_s']:.0f}" for k, m in methods.items())
        + f" useful tokens/s; training RSS above the {baseline_mb:,.0f} MB import baseline "
        + " / ".join(f"{m['above_baseline_mb']:,.0f}" for m in methods.values())
        + f" MB (float32 on the CPU) vs GPU estimates of {estimates} MB",
    )


if __name__ == "__main__":
    main()
