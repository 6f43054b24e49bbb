"""Peak memory of LoRA, QLoRA and full fine-tuning of the same ~70M-parameter model on the CPU, side by side
with koaml.memory's estimates.

Each method is a real `koaml train` job (koaml.cli.main) in its own process (a few optimizer steps on the demo's
arithmetic data), with two measurement settings for all three: safetensors memory-mapping off (else frozen
weights stay file-backed pages and the checkpoint pages QLoRA read to quantize stay mapped: RSS would count
neither what the job needs nor what it frees), and glibc's mmap threshold fixed (MALLOC_MMAP_THRESHOLD_), so
that freed large buffers go back to the OS. Two peaks: the job's (ru_maxrss, in train_summary.json), which
includes loading the float32 checkpoint (QLoRA quantizes it after reading it), and the training steps' (the
largest VmRSS sampled from /proc once the first step is logged). The estimator predicts GPU memory: it is compared with the training peak minus
the RSS of a process that only imported what training imports (torch, transformers, TRL, PEFT, bitsandbytes),
and with its CUDA-context allowance left out.

    .venv/bin/python bench/train_memory.py [--smoke]    # writes bench/results/train_memory.json
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from tempfile import TemporaryDirectory

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, env, prepare_once, run, smoke, tiny_model, train_args, write_result

# ~70M parameters, mostly in the decoder's linear layers (which QLoRA quantizes).
ARCH = dict(
    hidden_size=768,
    intermediate_size=2048,
    num_hidden_layers=8,
    num_attention_heads=12,
    num_key_value_heads=12,
    vocab_size=8192,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)
SMOKE_ARCH = dict(
    ARCH,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    vocab_size=512,
)
METHODS = {"qlora": "demo_qlora.yaml", "lora": "demo_lora.yaml", "full": "demo_full.yaml"}
MALLOC = {"MALLOC_MMAP_THRESHOLD_": "131072"}
NO_MMAP = """
import sys
from transformers import AutoModelForCausalLM
_load = AutoModelForCausalLM.from_pretrained.__func__
AutoModelForCausalLM.from_pretrained = classmethod(lambda cls, *a, **k: _load(cls, *a, **{"disable_mmap": True, **k}))
from koaml.cli import main
sys.exit(main(sys.argv[1:]))
"""
BASELINE = """
import resource
import bitsandbytes, peft, torch, transformers, trl
from trl import SFTConfig, SFTTrainer
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def build_model(out: Path, arch: dict) -> Path:
    """Random weights in a Llama config, with the demo tiny model's tokenizer (the vocabulary is padded)."""
    tokenizer_dir = tiny_model(out.parent)
    code = f"""
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
tok = AutoTokenizer.from_pretrained({str(tokenizer_dir)!r})
torch.manual_seed(0)
config = LlamaConfig(bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **{arch!r})
LlamaForCausalLM(config).save_pretrained({str(out)!r})
tok.save_pretrained({str(out)!r})
"""
    run([sys.executable, "-c", code])
    return out


def rss_mb(pid: int) -> float:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0.0)


def train_sampling_rss(cmd: list, log: Path) -> float:
    """Run a training job; the largest RSS sampled (every 20 ms) once it has logged its first step."""
    peak = 0.0
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(c) for c in cmd], cwd=REPO, env=env(**MALLOC), stdout=out, stderr=subprocess.STDOUT
        )
        training = False
        while proc.poll() is None:
            rss = rss_mb(proc.pid)
            training = training or "'loss'" in log.read_text()
            if training:
                peak = max(peak, rss)
            time.sleep(0.02)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(map(str, cmd))} failed:\n{log.read_text()[-5000:]}")
    return peak


def baseline_rss_mb() -> float:
    """The peak RSS of a process that only imported what training imports (``BASELINE``), in MB."""
    return int(run([sys.executable, "-c", BASELINE], **MALLOC).stdout.split()[-1]) / 1024


def estimate(recipe, model: Path) -> dict | None:
    try:
        from koaml.memory import CUDA_CONTEXT_GB, estimate_training_memory
        from koaml.shapes import model_shape
    except ImportError:
        return None
    shape = model_shape(str(model))
    est = estimate_training_memory(recipe, shape)
    return {
        "total_mb": est.total_gb * 1024,
        "without_cuda_context_mb": (est.total_gb - CUDA_CONTEXT_GB) * 1024,
        "parts_mb": {
            k: getattr(est, f"{k}_gb") * 1024 for k in ("weights", "gradients", "optimizer", "activations", "overhead")
        },
        "n_params": shape.n_params,
    }


def main() -> None:
    from koaml.io import write_yaml
    from koaml.recipe import load_recipe

    arch, steps = (SMOKE_ARCH, 2) if smoke() else (ARCH, 8)
    overrides = {
        "model": {"dtype": "float32", "model_max_length": 64},
        "training": {"max_steps": steps, "per_device_train_batch_size": 8, "save_steps": 1000, "logging_steps": 1},
        "data": {"max_samples": 200},
    }
    baseline_mb = baseline_rss_mb()
    methods, prepared = {}, {}
    with TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_model(tmp / "model", arch)
        for method, recipe_file in METHODS.items() if not smoke() else [("lora", METHODS["lora"])]:
            root = tmp / method
            root.mkdir()
            recipe = load_recipe(REPO / "config/recipes" / recipe_file, overrides)
            write_yaml(root / "config.yaml", recipe)
            data = prepare_once(recipe, root / "config.yaml", model, root / "data", prepared)
            args = train_args(root / "config.yaml", model, data, root / "trained", root / "checkpoints", 2)
            training_mb = train_sampling_rss([sys.executable, "-c", NO_MMAP, *args], root / "train.log")
            summary = json.loads((root / "trained/train_summary.json").read_text())
            predicted = estimate(recipe, model)
            methods[method] = {
                "peak_rss_mb": summary["peak_rss_mb"],
                "training_rss_mb": training_mb,
                "above_baseline_mb": training_mb - baseline_mb,
                "estimate": predicted,
                "steps": summary["global_step"],
            }
        n_params = next((m["estimate"]["n_params"] for m in methods.values() if m["estimate"]), None)
    order = sorted(methods, key=lambda m: methods[m]["training_rss_mb"])
    result = {
        "architecture": arch,
        "n_params": n_params,
        "dtype": "float32",
        "optimizer_steps": steps,
        "baseline_rss_mb": baseline_mb,
        "baseline": "peak RSS of a process that only imported torch, transformers, trl, peft and bitsandbytes",
        "settings": "safetensors mmap off (disable_mmap=True), MALLOC_MMAP_THRESHOLD_=131072, for every method",
        "methods": methods,
        "order": order,
        "expected_order_met": order == ["qlora", "lora", "full"],
        "estimator": "koaml.memory" if n_params else "n/a (koaml.memory not importable)",
        "order_by": "training_rss_mb (peak RSS during the training steps)",
        "note": "the estimator predicts GPU memory (with a CUDA context allowance); it is compared with the training "
        "steps' peak RSS minus the import baseline, on the CPU, in float32. peak_rss_mb (the whole job) includes "
        "loading the float32 checkpoint, which QLoRA quantizes only after loading",
    }
    print(f"peak RSS, {steps} steps, float32 on the CPU (baseline after imports {baseline_mb:.0f} MB):")
    print(
        f"  {'method':6} {'job peak':>9} {'training':>9} {'- baseline':>11} {'estimate':>9} {'est. w/o CUDA ctx':>18}"
    )
    for method in methods:
        m = methods[method]
        est = m["estimate"]
        cols = f"{est['total_mb']:8.0f}M {est['without_cuda_context_mb']:17.0f}M" if est else f"{'n/a':>9} {'n/a':>18}"
        print(
            f"  {method:6} {m['peak_rss_mb']:8.0f}M {m['training_rss_mb']:8.0f}M {m['above_baseline_mb']:10.0f}M {cols}"
        )
    peaks = " < ".join(
        f"{'QLoRA' if m == 'qlora' else 'LoRA' if m == 'lora' else m} {methods[m]['training_rss_mb']:.0f} MB"
        for m in order
    )
    above = " / ".join(f"{methods[m]['above_baseline_mb']:.0f}" for m in methods)
    estimated = " / ".join(
        f"{methods[m]['estimate']['without_cuda_context_mb']:.0f}" if methods[m]["estimate"] else "n/a" for m in methods
    )
    write_result(
        "train_memory",
        result,
        f"{peaks} (expected qlora < lora < full: {'yes' if result['expected_order_met'] else 'no'}); above the "
        f"{baseline_mb:.0f} MB import baseline {above} MB vs estimated {estimated} MB ({', '.join(methods)}; without "
        "the CUDA context)",
    )


if __name__ == "__main__":
    main()
