"""KOA's GPU types (``koa_gpus.yaml``) and the smallest one a job's memory estimate fits on."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources

import yaml

from koaml.memory import OOM_ADVICE, MemoryEstimate
from koaml.shapes import SizingError


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
        raise SizingError(
            f"{estimate.describe()}: more than {max_gpus_per_node} GPUs on one node; lower training.num_processes"
        )
    needs_bf16 = estimate.dtype == "bfloat16"
    usable = [
        gpu for gpu in KOA_GPUS if (gpu.bf16 or not needs_bf16) and not (gpu.mig and (count > 1 or not allow_mig))
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
