"""What a training or evaluation job asks SLURM for: a GPU sized from the model, and host memory.

The rules call these from their ``resources:`` callables when the workflow runs on a cluster executor;
the KOA profile maps the GPU type to a partition (``profiles/koa/partitions.yaml``).
"""

from __future__ import annotations

import errno
from pathlib import Path

from koaml.sizing import GpuChoice, ModelShape, SizingError, choose_gpu, estimate_eval_memory, estimate_training_memory, model_shape

MIN_HOST_MEM_MB = 8000
EVAL_GPU_COUNTS = (1, 2, 4)


def shape_of(model: str, built_by_workflow: bool) -> ModelShape:
    """The model's shape; a model the workflow has not built yet raises FileNotFoundError naming it, which
    Snakemake takes as "resources to be determined" and asks again once the model exists."""
    if built_by_workflow and not (Path(model) / "config.json").is_file():
        raise FileNotFoundError(errno.ENOENT, "model not built yet", model)
    return model_shape(model)  # cached per process


def training_gpu(recipe: dict, shape: ModelShape) -> GpuChoice:
    """The GPUs a training job needs (preemptible partitions allowed: training resumes from checkpoints)."""
    return choose_gpu(estimate_training_memory(recipe, shape))


def evaluation_gpu(benchmark: dict, shape: ModelShape) -> GpuChoice:
    """The GPUs an evaluation job needs: one if any GPU holds the model, else the layers split over 2 or 4
    (the `gpu` partition is preferred: an evaluation restarts from scratch when preempted)."""
    for num_gpus in EVAL_GPU_COUNTS:
        try:
            return choose_gpu(estimate_eval_memory(benchmark, shape, num_gpus))
        except SizingError:
            if num_gpus == EVAL_GPU_COUNTS[-1]:
                raise


def host_mem_mb(shape: ModelShape, attempt: int = 1) -> int:
    """Host memory for loading, training, merging or evaluating the model: 1.5x its 16-bit weights
    (safetensors loading and saving hold a copy), at least 8 GB, doubled on each retry."""
    need = 1.5 * shape.n_params * 2 / 2**20
    return int(max(MIN_HOST_MEM_MB, need) * 2 ** (attempt - 1))
