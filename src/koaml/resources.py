"""What a job asks SLURM for: GPUs sized from the model, and host memory.

The rules' ``resources:`` callables pass these the job's recipe or benchmark, its model, the attempt and
``strict`` (jobs go to a cluster). On a cluster a job that cannot be sized is an error before anything is
submitted; locally the sizing is only informative, and such a job requests nothing. The KOA profile maps
the GPU type to a partition (``profiles/koa/partitions.yaml``).
"""

from __future__ import annotations

import errno
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from koaml.gpus import GpuChoice, choose_gpu
from koaml.memory import estimate_eval_memory, estimate_training_memory
from koaml.recipe import Recipe
from koaml.shapes import ModelShape, SizingError, model_shape

MIN_HOST_MEM_MB = 8000
EVAL_GPU_COUNTS = (1, 2, 4)
GGUF_CONVERSION_MEMORY_FACTOR = 16  # per byte of a ~4-bit GGUF file: dequantized to float32 (8x), held twice

T = TypeVar("T")


def shape_of(model: str, built_by_workflow: bool) -> ModelShape:
    """The model's shape; a model the workflow has not built yet raises FileNotFoundError naming it, which
    Snakemake takes as "resources to be determined" and asks again once the model exists."""
    if built_by_workflow and not (Path(model) / "config.json").is_file():
        raise FileNotFoundError(errno.ENOENT, "model not built yet", model)
    return model_shape(model)  # cached per process


def training_gpu(recipe: Recipe, shape: ModelShape) -> GpuChoice:
    """The GPUs a training job needs (preemptible partitions allowed: training resumes from checkpoints)."""
    return choose_gpu(estimate_training_memory(recipe, shape))


def evaluation_gpu(benchmark: Mapping, shape: ModelShape) -> GpuChoice:
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


def _sized(size: Callable[[], T], strict: bool, unsized: T) -> T:
    """``size()``, or ``unsized`` when the job cannot be sized and jobs do not go to a cluster."""
    try:
        return size()
    except SizingError:
        if strict:
            raise
        return unsized


def training_gres(recipe: Recipe, model: str, *, built_by_workflow: bool, strict: bool) -> str:
    """The ``gres`` of a job training ``model`` with ``recipe`` ("" when it cannot be sized and not strict)."""
    return _sized(lambda: training_gpu(recipe, shape_of(model, built_by_workflow)).gres, strict, "")


def evaluation_gres(benchmarks: list[Mapping], model: str, *, built_by_workflow: bool, strict: bool) -> str:
    """The ``gres`` of a job evaluating ``model`` on ``benchmarks`` (one, or all of a model's with
    evaluation.group_by_model): the GPUs of the most demanding one ("" when it cannot be sized and not strict)."""

    def size() -> str:
        shape = shape_of(model, built_by_workflow)
        largest = max(benchmarks, key=lambda b: estimate_eval_memory(b, shape).total_gb)
        return evaluation_gpu(largest, shape).gres

    return _sized(size, strict, "")


def model_job_mem_mb(model: str, attempt: int, *, built_by_workflow: bool, strict: bool) -> int:
    """The ``mem_mb`` of a job that loads ``model`` (MIN_HOST_MEM_MB when it cannot be sized and not strict)."""
    return _sized(lambda: host_mem_mb(shape_of(model, built_by_workflow), attempt), strict, MIN_HOST_MEM_MB)


def gguf_conversion_mem_mb(gguf_file: str | Path) -> int:
    """The ``mem_mb`` of converting a GGUF file to a Hugging Face folder: 16x the file, at least MIN_HOST_MEM_MB."""
    return max(MIN_HOST_MEM_MB, GGUF_CONVERSION_MEMORY_FACTOR * Path(gguf_file).stat().st_size // 2**20)
