"""Job resources (koaml.resources): GPUs and host memory, strict on a cluster and lenient locally."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_sizing import LLAMA_70B

from koaml.recipe import load_benchmark, load_recipe
from koaml.resources import (
    MIN_HOST_MEM_MB,
    evaluation_gpu,
    evaluation_gres,
    gguf_conversion_mem_mb,
    host_mem_mb,
    model_job_mem_mb,
    shape_of,
    training_gpu,
    training_gres,
)
from koaml.shapes import SizingError, shape_from_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "config" / "recipes"
MMLU = REPO / "config" / "benchmarks" / "mmlu.yaml"


@pytest.fixture
def llama_70b(tmp_path) -> str:
    """A Llama-3.1-70B folder with only its config.json: sized from the config, never loaded."""
    folder = tmp_path / "llama-70b"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(LLAMA_70B))
    return str(folder)


def test_a_model_the_workflow_has_not_built_is_sized_later(tmp_path):
    missing = str(tmp_path / "results/base/tiny/model")
    for strict in (True, False):  # never swallowed: Snakemake asks again once the model exists
        with pytest.raises(FileNotFoundError) as err:
            training_gres(load_recipe(RECIPES / "demo_lora.yaml"), missing, built_by_workflow=True, strict=strict)
        assert err.value.filename == missing
        with pytest.raises(FileNotFoundError):
            model_job_mem_mb(missing, 1, built_by_workflow=True, strict=strict)


def test_gres_of_a_built_model(tiny_model):
    shape = shape_of(str(tiny_model), built_by_workflow=True)
    recipe, benchmark = load_recipe(RECIPES / "demo_full.yaml"), load_benchmark(MMLU)
    for strict in (True, False):
        gres = training_gres(recipe, str(tiny_model), built_by_workflow=True, strict=strict)
        assert gres == training_gpu(recipe, shape).gres == "gpu:nvidia_a30_1g.6gb:1"
        gres = evaluation_gres([benchmark], str(tiny_model), built_by_workflow=True, strict=strict)
        assert gres == evaluation_gpu(benchmark, shape).gres


def test_evaluation_splits_a_model_no_gpu_holds(llama_70b):
    bf16 = load_benchmark(MMLU, {"model": {"dtype": "bfloat16"}})
    assert evaluation_gres([bf16], llama_70b, built_by_workflow=False, strict=True) == "gpu:NV-H100:2"
    # one job for several benchmarks (evaluation.group_by_model) gets the GPUs of the most demanding one
    short = load_benchmark(MMLU, {"model": {"dtype": "bfloat16", "model_max_length": 512}})
    assert evaluation_gres([short, bf16], llama_70b, built_by_workflow=False, strict=True) == "gpu:NV-H100:2"


def test_a_job_that_fits_no_gpu_is_an_error_only_on_a_cluster(llama_70b):
    full = load_recipe(RECIPES / "llama_8b_full.yaml")  # full fine-tuning of 70B: ~300 GB per GPU
    with pytest.raises(SizingError, match="more than the largest"):
        training_gres(full, llama_70b, built_by_workflow=False, strict=True)
    assert training_gres(full, llama_70b, built_by_workflow=False, strict=False) == ""


def test_a_model_that_cannot_be_sized_requests_nothing_locally(tmp_path):
    no_config = str(tmp_path)  # a folder without config.json
    recipe, benchmark = load_recipe(RECIPES / "demo_lora.yaml"), load_benchmark(MMLU)
    for size, unsized in (
        (lambda strict: training_gres(recipe, no_config, built_by_workflow=False, strict=strict), ""),
        (lambda strict: evaluation_gres([benchmark], no_config, built_by_workflow=False, strict=strict), ""),
        (lambda strict: model_job_mem_mb(no_config, 3, built_by_workflow=False, strict=strict), MIN_HOST_MEM_MB),
    ):
        with pytest.raises(SizingError, match=r"no config\.json"):
            size(True)
        assert size(False) == unsized  # memory too: the minimum, not doubled for the attempt


def test_host_memory_doubles_on_each_attempt(tiny_model, llama_70b):
    for strict in (True, False):
        assert [model_job_mem_mb(str(tiny_model), a, built_by_workflow=True, strict=strict) for a in (1, 2, 3)] == [
            MIN_HOST_MEM_MB,
            2 * MIN_HOST_MEM_MB,
            4 * MIN_HOST_MEM_MB,
        ]
    shape = shape_from_config(LLAMA_70B)
    weights_mb = 1.5 * shape.n_params * 2 / 2**20  # 1.5x the 16-bit weights
    assert host_mem_mb(shape) == int(weights_mb)
    assert model_job_mem_mb(llama_70b, 2, built_by_workflow=False, strict=True) == int(2 * weights_mb)


def test_gguf_conversion_memory(tmp_path):
    small, large = tmp_path / "small.gguf", tmp_path / "large.gguf"
    small.write_bytes(b"GGUF")
    with large.open("wb") as f:
        f.truncate(2**30)  # sparse: 1 GiB without writing it
    assert gguf_conversion_mem_mb(small) == MIN_HOST_MEM_MB
    assert gguf_conversion_mem_mb(str(large)) == 16 * 1024


def test_jobs_run_by_hand_take_every_cpu_they_may_use():
    """`koaml train` and `evaluate` by hand get torch's threads as a bare script does (the train rule passes its
    own): a default of 1 thread made a hand-run training 1.3x slower than the same TRL script (issue 41)."""
    import os

    from koaml.cli import parser

    job = ["--config", "c", "--model", "m", "--out", "o"]
    commands = [["train", *job, "--data", "d", "--checkpoints", "k"], ["evaluate", *job], ["evaluate-model",
                "--model", "m", "--suite", "c", "o"]]  # fmt: skip
    for argv in commands:
        assert parser().parse_args(argv).threads == len(os.sched_getaffinity(0)) >= 1
