"""GPU sizing: parameter counts, memory estimates against the guide's table, and the KOA GPU choice."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import cache_hub_model
from safetensors import safe_open
from safetensors.numpy import save_file

from koaml.gpus import KOA_GPUS, GpuChoice, choose_gpu
from koaml.memory import MemoryEstimate, estimate_eval_memory, estimate_training_disk_gb, estimate_training_memory
from koaml.recipe import Recipe, load_benchmark, load_recipe
from koaml.shapes import SizingError, model_shape, shape_from_config

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "config" / "recipes"

# Published configs (config.json on the hub) and parameter counts (the hub's safetensors metadata).
LLAMA_8B = dict(
    model_type="llama",
    hidden_size=4096,
    num_hidden_layers=32,
    intermediate_size=14336,
    num_attention_heads=32,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=False,
)
LLAMA_3B = dict(
    model_type="llama",
    hidden_size=3072,
    num_hidden_layers=28,
    intermediate_size=8192,
    head_dim=128,
    num_attention_heads=24,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=True,
)
LLAMA_70B = dict(
    model_type="llama",
    hidden_size=8192,
    num_hidden_layers=80,
    intermediate_size=28672,
    num_attention_heads=64,
    num_key_value_heads=8,
    vocab_size=128256,
    tie_word_embeddings=False,
)
SMOLLM_135M = dict(
    model_type="llama",
    hidden_size=576,
    num_hidden_layers=30,
    intermediate_size=1536,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
    tie_word_embeddings=True,
)
QWEN_7B = dict(
    model_type="qwen2",
    hidden_size=3584,
    num_hidden_layers=28,
    intermediate_size=18944,
    num_attention_heads=28,
    num_key_value_heads=4,
    vocab_size=152064,
    tie_word_embeddings=False,
)
QWEN3 = {  # Qwen3's config.json: hidden, layers, intermediate, heads, tied embeddings; 8 KV heads of 128 dims
    size: dict(model_type="qwen3", hidden_size=h, num_hidden_layers=n, intermediate_size=i, num_attention_heads=a,
               num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=tied)
    for size, (h, n, i, a, tied) in {"0.6b": (1024, 28, 3072, 16, True), "4b": (2560, 36, 9728, 32, True),
                                     "8b": (4096, 36, 12288, 32, False), "14b": (5120, 40, 17408, 40, False)}.items()
}  # fmt: skip
PHI_2 = dict(
    model_type="phi",
    hidden_size=2560,
    num_hidden_layers=32,
    intermediate_size=10240,
    num_attention_heads=32,
    num_key_value_heads=None,
    vocab_size=51200,
    tie_word_embeddings=False,
)


@pytest.mark.parametrize(
    ("config", "published"),
    [
        (LLAMA_8B, 8_030_261_248),
        (LLAMA_3B, 3_212_749_824),
        (LLAMA_70B, 70_553_706_496),
        (SMOLLM_135M, 134_515_008),
        (QWEN_7B, 7_615_616_512),
        (PHI_2, 2_779_683_840),
        (QWEN3["0.6b"], 596_049_920),
        (QWEN3["4b"], 4_022_468_096),
        (QWEN3["8b"], 8_190_735_360),
        (QWEN3["14b"], 14_768_307_200),
    ],
    ids=[
        "llama-3.1-8b",
        "llama-3.2-3b",
        "llama-3.1-70b",
        "smollm2-135m",
        "qwen2.5-7b",
        "phi-2",
        "qwen3-0.6b",
        "qwen3-4b",
        "qwen3-8b",
        "qwen3-14b",
    ],
)
def test_parameter_count_from_config(config, published):
    assert shape_from_config(config).n_params == pytest.approx(published, rel=0.01)


def _write_model(folder: Path, tensors: dict[str, np.ndarray], shards: int = 1, config: dict = SMOLLM_135M) -> int:
    """A model folder with config.json and safetensors weights (in ``shards`` files); returns the numel."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(tensors, folder / "model.safetensors")
    else:
        names, weight_map = list(tensors), {}
        for i in range(shards):
            shard = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
            part = {name: tensors[name] for name in names[i::shards]}
            save_file(part, folder / shard)
            weight_map.update(dict.fromkeys(part, shard))
        (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return sum(t.size for t in tensors.values())


TENSORS = {
    "model.embed_tokens.weight": np.zeros((50, 8), np.float32),
    "model.layers.0.self_attn.q_proj.weight": np.zeros((8, 8), np.float16),
    "model.layers.0.mlp.up_proj.weight": np.zeros((16, 8), np.float32),
    "model.norm.weight": np.zeros((8,), np.float32),
}


def test_parameter_count_from_safetensors_header(tmp_path):
    numel = _write_model(tmp_path / "m", TENSORS)
    assert model_shape(str(tmp_path / "m")).n_params == numel == 400 + 64 + 128 + 8


def test_parameter_count_from_sharded_safetensors(tmp_path):
    numel = _write_model(tmp_path / "m", TENSORS, shards=2)
    assert model_shape(str(tmp_path / "m")).n_params == numel


def test_missing_shard_or_quantized_checkpoint_counts_from_config(tmp_path):
    _write_model(tmp_path / "partial", TENSORS, shards=2)
    next((tmp_path / "partial").glob("model-00002-*.safetensors")).unlink()
    assert model_shape(str(tmp_path / "partial")).n_params == shape_from_config(SMOLLM_135M).n_params

    _write_model(tmp_path / "quantized", TENSORS, config={**SMOLLM_135M, "quantization_config": {"load_in_4bit": True}})
    assert model_shape(str(tmp_path / "quantized")).n_params == shape_from_config(SMOLLM_135M).n_params


def test_unreadable_folder_and_config(tmp_path):
    with pytest.raises(SizingError, match=r"no config\.json"):
        model_shape(str(tmp_path))
    with pytest.raises(SizingError, match="intermediate_size"):
        shape_from_config({"hidden_size": 8, "num_hidden_layers": 2, "vocab_size": 10, "num_attention_heads": 2})


def test_tiny_demo_model(tiny_model):
    shape = model_shape(str(tiny_model))
    with safe_open(tiny_model / "model.safetensors", framework="np") as f:
        numel = sum(math.prod(f.get_slice(name).get_shape()) for name in f.keys())  # noqa: SIM118 (not iterable)
    assert shape.n_params == numel
    config = json.loads((tiny_model / "config.json").read_text())
    assert shape_from_config(config).n_params == numel  # the formula agrees with the real (tied) Llama
    assert shape.hidden_size == 128 and shape.n_layers == 2 and shape.tie_word_embeddings


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline."""
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model_shape.cache_clear()
    yield tmp_path / "hf" / "hub"
    model_shape.cache_clear()


def test_hub_model_not_cached_offline(offline_hub):
    with pytest.raises(SizingError, match=r"koaml-test/not-cached.*snakemake fetch"):
        model_shape("koaml-test/not-cached")


def test_hub_model_from_the_cache(offline_hub, tmp_path):
    numel = _write_model(tmp_path / "src", TENSORS)
    cache_hub_model(
        offline_hub,
        "koaml-test/cached",
        {
            "config.json": (tmp_path / "src" / "config.json").read_bytes(),
            "model.safetensors": (tmp_path / "src" / "model.safetensors").read_bytes(),
        },
    )
    assert model_shape("koaml-test/cached").n_params == numel

    cache_hub_model(offline_hub, "koaml-test/config-only", {"config.json": json.dumps(LLAMA_8B).encode()})
    assert model_shape("koaml-test/config-only").n_params == shape_from_config(LLAMA_8B).n_params


# The guide's table (GB of GPU memory) and the settings it is compared under: the shipped recipes with
# per_device_train_batch_size: 1 and their own model_max_length (see the koaml.memory docstring).
GUIDE = {
    ("smollm", "lora"): 2,
    ("smollm", "qlora"): 1,
    ("smollm", "full"): 4,
    ("3b", "lora"): 8,
    ("3b", "qlora"): 4,
    ("3b", "full"): 16,
    ("8b", "lora"): 24,
    ("8b", "qlora"): 12,
    ("8b", "full"): 40,
    ("70b", "lora"): 80,
    ("70b", "qlora"): 40,
    ("70b", "full"): 280,
}
MODELS = {
    "smollm": ("smollm_135m", SMOLLM_135M),
    "3b": ("llama_3b", LLAMA_3B),
    "8b": ("llama_8b", LLAMA_8B),
    "70b": ("llama_70b", LLAMA_70B),
}


def guide_recipe(model: str, method: str) -> Recipe:
    """The shipped recipe for a guide cell at batch 1; missing ones are the LoRA recipe with another method."""
    prefix = MODELS[model][0]
    path = RECIPES / f"{prefix}_{method}.yaml"
    if path.is_file():
        recipe = load_recipe(path)
    else:
        recipe = load_recipe(RECIPES / f"{prefix}_lora.yaml")
        peft = recipe.peft.replace(type="qlora") if method == "qlora" else {"type": "none"}
        recipe = recipe.replace(peft=peft)
        if method == "full":  # on one GPU: the row the guide's figure is compared with
            recipe = recipe.replace(training=recipe.training.replace(num_processes=1, fsdp="", fsdp_config=None))
    return recipe.replace(training=recipe.training.replace(per_device_train_batch_size=1))


@pytest.mark.parametrize(("model", "method"), list(GUIDE))
def test_guide_memory_table(model, method):
    estimate = estimate_training_memory(guide_recipe(model, method), shape_from_config(MODELS[model][1]))
    ratio = estimate.total_gb / GUIDE[model, method]
    print(f"{model} {method}: guide {GUIDE[model, method]} GB, {estimate.describe()}, ratio {ratio:.2f}")
    if (model, method) == ("70b", "full"):
        # Documented exception: the guide's 280 GB is 4 bytes/param (bf16 weights and gradients only);
        # AdamW's states add 4 more in bf16, so one GPU would need about twice that.
        assert 2 < ratio < 2.5
        assert estimate.optimizer_gb > 0.9 * estimate.weights_gb
    else:
        assert 0.5 <= ratio <= 2


def test_full_fine_tuning_precision_and_sharding():
    shape = shape_from_config(LLAMA_8B)
    recipe = guide_recipe("8b", "full")
    single = estimate_training_memory(recipe, shape)
    params_gb = shape.n_params / 2**30
    assert single.weights_gb == pytest.approx(2 * params_gb)  # pure bf16
    assert single.optimizer_gb == pytest.approx(4 * params_gb)  # two bf16 AdamW states
    eight_bit = estimate_training_memory(recipe.replace(training=recipe.training.replace(optim="adamw_8bit")), shape)
    assert eight_bit.optimizer_gb == pytest.approx(2 * params_gb)
    # FSDP over 4 GPUs: fp32 trainable weights (accelerate's upcast), everything sharded, the guide's 40 GB per GPU
    fsdp = recipe.replace(training=recipe.training.replace(num_processes=4, fsdp="full_shard auto_wrap"))
    sharded = estimate_training_memory(fsdp, shape)
    assert sharded.num_gpus == 4 and sharded.optimizer_gb == pytest.approx(8 * params_gb / 4)
    assert 0.75 <= sharded.total_gb / 40 <= 1.25
    zero3 = recipe.replace(training=recipe.training.replace(num_processes=4, deepspeed="config/deepspeed/zero3.json"))
    assert estimate_training_memory(zero3, shape).total_gb == pytest.approx(sharded.total_gb, rel=0.05)
    ddp = recipe.replace(training=recipe.training.replace(num_processes=4))
    assert estimate_training_memory(ddp, shape).weights_gb == single.weights_gb  # DDP replicates


def test_activations_without_checkpointing_and_eager_attention():
    shape = shape_from_config(LLAMA_3B)
    recipe = guide_recipe("3b", "lora")
    base = estimate_training_memory(recipe, shape).activations_gb
    no_ckpt = recipe.replace(training=recipe.training.replace(gradient_checkpointing=False))
    without = estimate_training_memory(no_ckpt, shape).activations_gb
    eager = no_ckpt.replace(model=recipe.model.replace(attn_implementation="eager"))
    assert base < without < estimate_training_memory(eager, shape).activations_gb


def test_demo_recipes_fit_the_smallest_slice(tiny_model):
    shape = model_shape(str(tiny_model))
    for method in ("full", "lora", "qlora"):
        estimate = estimate_training_memory(load_recipe(RECIPES / f"demo_{method}.yaml"), shape)
        assert estimate.dtype == "float32" and estimate.total_gb < 1.5
        assert choose_gpu(estimate).gpu_type == "nvidia_a30_1g.6gb"


def test_eval_memory():
    shape = shape_from_config(LLAMA_8B)
    estimate = estimate_eval_memory(load_benchmark(REPO / "config" / "benchmarks" / "mmlu.yaml"), shape)
    assert estimate.gradients_gb == estimate.optimizer_gb == 0
    assert estimate.weights_gb == pytest.approx(2 * shape.n_params / 2**30)
    kv_cache = 2 * 32 * 8 * 128 * 4096 * 2 / 2**30  # batch auto: 1 sequence of 4096 tokens
    assert estimate.activations_gb == pytest.approx(kv_cache + 4096 * 128256 * 4 / 2**30)
    assert choose_gpu(estimate) == GpuChoice("gpu:NV-A30:1", "NV-A30", 1, 24, ("gpu",), False)


def _shipped(name: str, config: dict) -> MemoryEstimate:
    return estimate_training_memory(load_recipe(RECIPES / f"{name}.yaml"), shape_from_config(config))


def test_choose_gpu_small_model_on_gpu_partition():
    choice = choose_gpu(_shipped("smollm_135m_lora", SMOLLM_135M))
    assert "gpu" in choice.partitions and not choice.preemptible and choice.vram_gb <= 16
    assert choice.gres == f"gpu:{choice.gpu_type}:1"
    no_mig = choose_gpu(_shipped("smollm_135m_lora", SMOLLM_135M), allow_mig=False)
    assert no_mig.gpu_type == "NV-RTX-A4000"  # the smallest whole bfloat16 GPU there


def test_choose_gpu_8b_lora():
    choice = choose_gpu(_shipped("llama_8b_lora", LLAMA_8B))
    assert 32 <= choice.vram_gb <= 48  # L40: the gpu partition's bfloat16 GPUs stop at 24 GB
    assert choice.gpu_type == "NV-L40" and choice.preemptible


def test_choose_gpu_70b():
    qlora = choose_gpu(_shipped("llama_70b_qlora", LLAMA_70B))
    assert qlora.gpu_type in ("NV-H100", "nvidia_h100_pcie", "nvidia_h100_nvl", "nvidia_h200_nvl")
    assert qlora.preemptible and set(qlora.partitions) == {"kill-shared", "kill-exclusive"}
    lora = choose_gpu(_shipped("llama_70b_lora", LLAMA_70B))  # FSDP over 4 GPUs
    assert lora.count == 4 and lora.gres == f"gpu:{lora.gpu_type}:4" and lora.preemptible

    with pytest.raises(SizingError, match="only the preemptible partitions") as err:
        choose_gpu(_shipped("llama_70b_qlora", LLAMA_70B), allow_preemptible=False)
    assert "kill-shared" in str(err.value)


def test_choose_gpu_70b_full_fits_nothing():
    estimate = estimate_training_memory(guide_recipe("70b", "full"), shape_from_config(LLAMA_70B))
    with pytest.raises(SizingError) as err:
        choose_gpu(estimate)
    message = str(err.value)
    assert f"~{estimate.total_gb:.1f} GB" in message and "optimizer" in message
    assert "nvidia_h200_nvl, 141 GB" in message
    assert "qlora" in message and "fsdp" in message and "num_processes" in message


def test_choose_gpu_limits():
    with pytest.raises(SizingError, match="more than 4 GPUs"):
        choose_gpu(MemoryEstimate(1, 0, 0, 0, 1, num_gpus=8))
    fp32 = choose_gpu(MemoryEstimate(25, 0, 0, 0, 2, dtype="float32"))
    assert fp32.gpu_type == "NV-V100-SXM2" and not fp32.preemptible  # no bfloat16 needed
    assert choose_gpu(MemoryEstimate(1, 0, 0, 0, 1, num_gpus=2)).gpu_type == "NV-RTX-A4000"  # no MIG for multi-GPU


def test_koa_gpu_table():
    types = {gpu.type: gpu for gpu in KOA_GPUS}
    assert types["NV-A30"].vram_gb == 24 and not types["NV-A30"].preemptible
    assert types["nvidia_h200_nvl"].vram_gb == 141 and types["nvidia_h200_nvl"].preemptible
    assert types["nvidia_a30_1g.6gb"].mig and "gpu-sandbox" in types["nvidia_a30_1g.6gb"].partitions
    assert len(types) == 13


def test_import_is_cheap():
    code = (
        "import sys, koaml.resources; "
        "print([m for m in ('torch', 'transformers', 'huggingface_hub', 'safetensors') if m in sys.modules])"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_training_disk_counts_checkpoints_and_the_final_model():
    full = load_recipe(RECIPES / "llama_8b_full.yaml")
    lora = load_recipe(RECIPES / "llama_8b_lora.yaml")
    shape = shape_from_config(LLAMA_8B)
    # full: (save_total_limit 2 + 1) checkpoints of bf16 weights + bf16 AdamW states (6 bytes/param), + the model
    expected = 1.1 * (3 * 6 + 2) * shape.n_params / 2**30
    assert estimate_training_disk_gb(full, shape) == pytest.approx(expected)
    assert estimate_training_disk_gb(lora, shape) < 1  # an adapter of a few MB
    fewer = full.replace(training=full.training.replace(save_total_limit=1))
    assert estimate_training_disk_gb(fewer, shape) < estimate_training_disk_gb(full, shape)


def test_not_enough_disk_is_refused_before_training(tmp_path, monkeypatch):
    from koaml.io import DiskSpaceError, ensure_free_disk

    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(100 * 2**30, 95 * 2**30, 5 * 2**30))
    ensure_free_disk(tmp_path / "not/yet/there", 4.0, "training")  # the nearest existing folder is measured
    with pytest.raises(DiskSpaceError, match=r"not/yet/there: 5\.0 GB free, but training needs about 179\.1 GB"):
        ensure_free_disk(tmp_path / "not/yet/there", 179.1, "training")


def test_koaml_train_refuses_to_start_without_disk(tiny_model, tmp_path, monkeypatch, capsys):
    from koaml.cli import main
    from koaml.io import write_yaml

    config = tmp_path / "config.yaml"
    write_yaml(config, load_recipe(RECIPES / "demo_full.yaml").as_dict())
    monkeypatch.setattr("shutil.disk_usage", lambda path: shutil._ntuple_diskusage(2**30, 2**30, 0))
    argv = ["train", "--config", str(config), "--model", str(tiny_model), "--data", str(tmp_path / "data"),
            "--out", str(tmp_path / "out"), "--checkpoints", str(tmp_path / "ckpt")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"koaml train: error: {tmp_path / 'ckpt'}: 0.0 GB free, but training (2 checkpoints + 1 being written" in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "ckpt").exists()


@pytest.mark.parametrize("size", list(QWEN3))
def test_qwen3_recipes_fit_a_koa_gpu(size):
    """Each shipped Qwen3 recipe (LoRA, QLoRA, full) fits one KOA GPU by the memory model; full fine-tuning of 8B
    needs an 80 GB H100, of 14B a 141 GB H200."""
    for recipe in sorted(RECIPES.glob(f"qwen3_{size}_*.yaml")):
        choice = choose_gpu(_shipped(recipe.stem, QWEN3[size]))
        assert choice.count == 1, recipe.name
    methods = {p.stem.rsplit("_", 1)[1] for p in RECIPES.glob(f"qwen3_{size}_*.yaml")}
    assert methods == {"lora", "qlora", "full"}
    if size in ("8b", "14b"):
        assert choose_gpu(_shipped(f"qwen3_{size}_full", QWEN3[size])).vram_gb >= (80 if size == "8b" else 141)


def test_benchmark_context_beyond_the_model_position_limit(tiny_model):
    from koaml.configfiles import ConfigError
    from koaml.shapes import check_benchmark_fits_model, folder_facts

    facts = folder_facts(tiny_model)
    limit = facts[0]["max_position_embeddings"]
    bench = load_benchmark(RECIPES.parent / "benchmarks/demo_arith_gen.yaml")
    check_benchmark_fits_model(bench, facts, str(tiny_model), "b.yaml (evaluating tiny)")
    longer = bench.replace(model={**bench["model"], "model_max_length": limit + 1})
    with pytest.raises(
        ConfigError, match=rf"b.yaml \(evaluating tiny\): model.model_max_length: {limit + 1} is beyond"
    ):
        check_benchmark_fits_model(longer, facts, str(tiny_model), "b.yaml (evaluating tiny)")
