"""GPU training throughput (the GPU variant of packing_throughput.py): useful tokens/s and model FLOPs
utilisation (6 * parameters * tokens/s over the GPU's peak dense bf16 FLOPs), packed vs unpacked, bfloat16,
with flash-attention 2 when flash-attn is installed (packing is then on by default: `training.packing: auto`).

Without a GPU it prints why and exits 0, writing {"skipped": reason}.

    .venv/bin/python bench/gpu_throughput.py [--smoke]    # writes bench/results/gpu_throughput.json
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import repeats, smoke, write_result

# Peak dense bf16 tensor-core TFLOPS (no sparsity), matched as substrings of torch.cuda.get_device_name().
PEAK_BF16_TFLOPS = [
    ("GH200", 989),
    ("H200", 989),
    ("H100 PCIe", 756),
    ("H100", 989),
    ("B200", 2250),
    ("A100", 312),
    ("L40S", 362),
    ("L40", 181),
    ("A40", 150),
    ("RTX A6000", 155),
    ("L4", 121),
    ("A30", 165),
    ("RTX 4090", 165),
    ("RTX 3090", 71),
]
GPU_ARCH = dict(
    hidden_size=1024,
    intermediate_size=2816,
    num_hidden_layers=12,
    num_attention_heads=16,
    num_key_value_heads=8,
    max_position_embeddings=4096,
    tie_word_embeddings=False,
)


def peak_tflops(name: str) -> float | None:
    return next((tflops for key, tflops in PEAK_BF16_TFLOPS if key in name), None)


def main() -> None:
    import torch

    if not torch.cuda.is_available():
        reason = "no CUDA GPU available (torch.cuda.is_available() is False)"
        write_result("gpu_throughput", {"skipped": reason}, f"skipped: {reason}")
        return
    from packing_throughput import SMOKE_ARCH, measure

    name = torch.cuda.get_device_name()
    flash = importlib.util.find_spec("flash_attn") is not None
    attn = "flash_attention_2" if flash else "sdpa"
    quick = smoke()
    rows, max_length, batch, steps = (64, 128, 4, 2) if quick else (20000, 2048, 8, 30)
    # auto packs with flash-attention; without it, force packing on to still measure it
    result = measure(
        SMOKE_ARCH if quick else GPU_ARCH,
        rows,
        max_length,
        batch,
        steps,
        repeats(3),
        dtype="bfloat16",
        attn=attn,
        packed_setting="auto" if flash else True,
        threads=8,
    )
    peak = peak_tflops(name)
    for variant in ("packed", "unpacked"):
        flops = 6 * result["model_parameters"] * result[variant]["tokens_per_s"]
        result[variant]["model_tflops"] = flops / 1e12
        result[variant]["mfu"] = flops / (peak * 1e12) if peak else None
    result.update(
        device=name,
        peak_bf16_tflops=peak,
        flash_attn_installed=flash,
        liger_kernel_installed=importlib.util.find_spec("liger_kernel") is not None,
        liger_note="not used: recipes have no use_liger_kernel setting",
    )
    mfu = lambda v: f"{result[v]['mfu']:.1%}" if result[v]["mfu"] is not None else "n/a (unknown GPU peak)"  # noqa: E731
    write_result(
        "gpu_throughput",
        result,
        f"{name}, {attn}, bf16: packed {result['packed']['tokens_per_s']:.0f} tokens/s (MFU {mfu('packed')}), "
        f"unpacked {result['unpacked']['tokens_per_s']:.0f} tokens/s (MFU {mfu('unpacked')}), "
        f"speedup {result['speedup']:.2f}x",
    )


if __name__ == "__main__":
    main()
