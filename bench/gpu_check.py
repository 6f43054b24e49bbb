"""The GPU path in one device call: what bench/gpu_check.sh runs after installing the carried wheels.

1. SmolLM2-135M's architecture (its config and tokenizer from bench/carry/smollm2, random weights: see
   bench/gpu_carry.py; `KOAML_SMOLLM2` may name a folder with the real weights) trained in bf16 with LoRA, QLoRA
   (bitsandbytes 4-bit on CUDA) and full fine-tuning, at model_max_length 512 and 2,048, packed and unpacked: each
   a real `koaml.train` run of a few dozen steps on instruction-like rows of varied length. Per run: useful
   tokens/s, peak GPU memory next to koaml.memory's estimate (and their ratio), and MFU (6 x parameters x
   tokens/s over the GPU's peak dense bf16 FLOP/s).
2. lm-eval on the GPU: the demo's multiple-choice arithmetic for the base and the LoRA adapter (koaml.evaluate).
3. The attention weight of koaml.packing fitted on CUDA (bench/packing_real_model.py's fit, bf16).
4. The training loop's overhead on the GPU: `koaml train` against a bare TRL script at the same settings
   (bench/train_overhead.py), SFT with LoRA and full fine-tuning, once each: koa-ml's guards must cost nothing per
   step there either (not in --dry: the suite runs bench/train_overhead.py --smoke).

Each step is recorded even when another fails (a lease is too short to rerun). ``--dry`` runs the same steps on the
CPU with the demo's tiny model, float32, 2 steps, length 64 (the suite's test of this script).

    bash bench/gpu_check.sh [--dry]    # writes bench/results/gpu_check.json and prints a table
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
import traceback
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, write_result
from gpu_throughput import peak_tflops
from packing_throughput import make_rows

DRY = "--dry" in sys.argv
METHODS = ("lora", "qlora", "full")
LENGTHS = (64,) if DRY else (512, 2048)
STEPS = 2 if DRY else 30
ROWS = 48 if DRY else 3000
BENCHMARK = "config/benchmarks/demo_arith_mc.yaml"


def versions() -> dict:
    import importlib.metadata as metadata

    import torch

    names = ("torch", "transformers", "peft", "trl", "bitsandbytes", "lm_eval", "datasets", "accelerate")
    found = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    cuda = torch.cuda.is_available()
    return {
        "packages": found,
        "cuda": torch.version.cuda,
        "device": torch.cuda.get_device_name(0) if cuda else "cpu",
        "gpu_memory_mb": torch.cuda.get_device_properties(0).total_memory / 2**20 if cuda else None,
    }


def model_folder(tmp: Path) -> Path:
    """The model the check trains: the tiny demo model (--dry), a real SmolLM2 folder, or SmolLM2's architecture
    with random bf16 weights."""
    if DRY:
        from koaml.configfiles import load_yaml
        from koaml.tinymodel import build_tiny_model

        if os.environ.get("KOAML_TINY_MODEL"):
            return Path(os.environ["KOAML_TINY_MODEL"])
        spec = load_yaml(REPO / "resources/demo/tiny_model.yaml")
        spec["tokenizer"]["corpus"] = [str(REPO / c) for c in spec["tokenizer"]["corpus"]]
        build_tiny_model(spec, tmp / "model")
        return tmp / "model"
    if os.environ.get("KOAML_SMOLLM2"):
        return Path(os.environ["KOAML_SMOLLM2"])
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    carried = REPO / "bench/carry/smollm2"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(carried), dtype=torch.bfloat16)
    model.save_pretrained(tmp / "model")
    AutoTokenizer.from_pretrained(carried).save_pretrained(tmp / "model")
    return tmp / "model"


def recipe_for(method: str, length: int, packing: bool, data: Path, cuda: bool):
    from koaml.recipe import load_recipe

    return load_recipe(
        REPO / f"config/recipes/smollm2_arith_{method}.yaml",
        {
            "model": {"model_max_length": length, "dtype": "bfloat16" if cuda else "float32"},
            "data": {"train_dataset": {"dataset_name": str(data)}, "eval_fraction": 0, "template": "none"},
            "training": {
                "max_steps": STEPS,
                "logging_steps": 1,
                "save_steps": 1000,
                "packing": packing,
                "gradient_checkpointing": True,
            },
        },
    )


def train_run(method: str, length: int, packing: bool, model: Path, data: Path, root: Path, cuda: bool) -> dict:
    """One real training run in this process: throughput, peak GPU memory, the sizing estimate, MFU."""
    import torch

    from koaml.data import prepare
    from koaml.memory import estimate_training_memory
    from koaml.shapes import model_shape
    from koaml.train import train

    recipe = recipe_for(method, length, packing, data, cuda)
    name = f"{method}-{length}-{'packed' if packing else 'unpacked'}"
    prepare(recipe, str(model), root / f"data-{length}")
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    train(recipe, str(model), str(root / f"data-{length}"), str(root / name), str(root / "checkpoints"), 2)
    history = json.loads((root / name / "log_history.json").read_text())
    summary = json.loads((root / name / "train_summary.json").read_text())
    final = next(e for e in reversed(history) if "train_runtime" in e)
    tokens = next(e["num_tokens"] for e in reversed(history) if "num_tokens" in e)
    shape = model_shape(str(model))
    estimate_mb = estimate_training_memory(recipe, shape).total_gb * 1024
    tokens_per_s = tokens / final["train_runtime"]
    peak = peak_tflops(torch.cuda.get_device_name(0)) if cuda else None
    measured = summary.get("peak_gpu_memory_mb")
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    return {
        "run": name,
        "steps": summary["global_step"],
        "tokens_per_s": tokens_per_s,
        "peak_gpu_memory_mb": measured,
        "estimate_mb": estimate_mb,
        "estimate_over_measured": estimate_mb / measured if measured else None,
        "mfu": 6 * shape.n_params * tokens_per_s / (peak * 1e12) if peak else None,
        "adapter": str(root / name),
    }


def lm_eval_runs(model: Path, adapter: str, root: Path) -> dict:
    from koaml.evaluate import evaluate

    scores = {}
    for label, lora in (("base", None), ("lora", adapter)):
        start = time.perf_counter()
        results = evaluate(str(REPO / BENCHMARK), str(model), str(root / f"eval-{label}"), 2, lora, 20 if DRY else 200)
        scores[label] = {"acc": results["results"]["demo_arith_mc"]["acc,none"], "seconds": time.perf_counter() - start}
    return scores


def attention_weight(model: Path, root: Path, cuda: bool) -> dict:
    """koaml.packing's attention weight for this device, fitted as bench/packing_real_model.py does."""
    import torch
    from packing_real_model import fit_attention_weight, time_batches, trainer_batches
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from koaml.modeling import load_tokenizer
    from koaml.packing import ATTENTION_WEIGHT
    from koaml.recipe import load_recipe
    from koaml.trl_args import lora_config

    dtype = torch.bfloat16 if cuda else torch.float32
    net = AutoModelForCausalLM.from_pretrained(model, dtype=dtype, attn_implementation="sdpa")
    net = get_peft_model(net, lora_config(load_recipe(REPO / "config/recipes/smollm_135m_lora.yaml").peft))
    net.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if cuda:
        net = net.cuda()
    tokenizer = load_tokenizer(str(model))
    rows, samples = make_rows(ROWS), []
    for length in LENGTHS:
        for packing in (False, True):
            batches, trainer = trainer_batches(net, tokenizer, rows, length, packing, root / f"fit-{length}-{packing}")
            samples += time_batches(trainer, batches, packing, 2 if DRY else 10)["batches"]
    config = net.config
    n_params = sum(p.numel() for p in net.parameters())
    fitted = fit_attention_weight(
        samples, n_params, config.num_hidden_layers, config.num_attention_heads * config.head_dim
    )
    device = "cuda" if cuda else "cpu"
    return {"device": device, "fitted": fitted, "in_use": ATTENTION_WEIGHT[device], "samples": len(samples)}


def overhead(model: Path, root: Path, cuda: bool) -> dict:
    """bench/train_overhead.py's comparison on this device: `koaml train` over a bare TRL script, per method."""
    from train_overhead import Case, measure

    settings = {"model": {"dtype": "bfloat16" if cuda else "float32"}, "training": {"max_steps": STEPS}}
    cases = [Case(f"sft_{m}", "device", f"config/recipes/smollm2_arith_{m}.yaml", settings) for m in ("lora", "full")]
    prepared: dict = {}
    return {case.name: measure(case, root / "overhead", {"device": model}, prepared, 1) for case in cases}


def step(result: dict, name: str, action) -> None:
    """Run one step; its result, or its error, goes into ``result[name]``."""
    start = time.perf_counter()
    try:
        result[name] = action()
    except Exception as error:  # one failing step must not lose the others' figures
        result[name] = {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()[-3000:]}
    print(f"gpu_check: {name}: {time.perf_counter() - start:.0f} s", flush=True)


def main() -> None:
    import torch

    cuda = torch.cuda.is_available()
    if not cuda and not DRY:
        raise SystemExit("gpu_check: no CUDA GPU here; run it on a lent GPU, or --dry for the CPU path")
    result: dict = {"dry": DRY, "steps_per_run": STEPS}
    step(result, "environment", versions)
    with TemporaryDirectory() as tmp:
        root = Path(tmp)
        model = model_folder(root)
        data = root / "rows.jsonl"
        data.write_text("".join(json.dumps(row) + "\n" for row in make_rows(ROWS)))
        runs = result["training"] = []
        for method in METHODS:
            for length in LENGTHS:
                for packing in (False, True):
                    step(
                        result,
                        "last_run",
                        lambda m=method, n=length, p=packing: train_run(m, n, p, model, data, root, cuda),
                    )
                    runs.append(result.pop("last_run"))
        adapter = next((r["adapter"] for r in runs if r.get("run", "").startswith("lora-")), None)
        step(result, "lm_eval", lambda: lm_eval_runs(model, adapter, root))
        step(result, "attention_weight", lambda: attention_weight(model, root, cuda))
        if not DRY:  # the suite runs the same measurement in bench/train_overhead.py's smoke test
            step(result, "train_overhead", lambda: overhead(model, root, cuda))
    result["model"] = "tiny demo model (--dry)" if DRY else "SmolLM2-135M-Instruct architecture"
    result["dry"] = DRY
    result["failed_steps"] = [r.get("run", "?") for r in runs if "error" in r] + [
        name
        for name in ("environment", "lm_eval", "attention_weight", "train_overhead")
        if "error" in result.get(name, {})
    ]
    print(f"{'run':22} {'tokens/s':>10} {'peak MB':>9} {'estimate MB':>12} {'est/meas':>9} {'MFU':>6}")
    for r in runs:
        if "error" in r:
            print(f"{'?':22} {r['error'][:60]}")
            continue
        fmt = lambda v, f: "" if v is None else format(v, f)  # noqa: E731
        print(f"{r['run']:22} {r['tokens_per_s']:10.0f} {fmt(r['peak_gpu_memory_mb'], '9.0f'):>9} "
              f"{r['estimate_mb']:12.0f} {fmt(r['estimate_over_measured'], '9.2f'):>9} {fmt(r['mfu'], '6.1%'):>6}")  # fmt: skip
    print(f"lm_eval: {result['lm_eval']}\nattention weight: {result['attention_weight']}")
    if "error" not in result.get("train_overhead", {"error": "--dry"}):
        for name, case in result["train_overhead"].items():
            print(f"train overhead {name}: koaml / bare train_runtime {case['train_runtime_ratio']:.3f}")
    ratios = [r["estimate_over_measured"] for r in runs if r.get("estimate_over_measured")]
    write_result(
        "gpu_check",
        result,
        f"{len(runs) - len([r for r in runs if 'error' in r])} training runs on {result['model']}; memory estimate "
        f"over measured {min(ratios, default=0):.2f} to {max(ratios, default=0):.2f}; failed steps: "
        f"{', '.join(result['failed_steps']) or 'none'}",
    )


if __name__ == "__main__":
    main()
