"""The recipe -> TRL SFTConfig mapping (the guide's keys on transformers 5 / TRL 1.x)."""

import pytest

from koaml.config import load_recipe
from koaml.train import sft_config_kwargs


@pytest.fixture
def recipe():
    from conftest import REPO

    return load_recipe(REPO / "config/recipes/demo_lora.yaml")


def test_warmup_ratio_becomes_a_fractional_warmup_steps(recipe):
    kwargs = sft_config_kwargs(recipe, "out", has_eval=False, on_gpu=False)
    assert kwargs["warmup_steps"] == pytest.approx(0.05) and isinstance(kwargs["warmup_steps"], float)
    assert "warmup_ratio" not in kwargs


def test_explicit_warmup_steps_win(recipe):
    recipe["training"]["warmup_steps"] = 7
    assert sft_config_kwargs(recipe, "out", has_eval=False, on_gpu=False)["warmup_steps"] == 7


def test_kwargs_are_accepted_by_sftconfig(recipe, tmp_path):
    from trl import SFTConfig

    args = SFTConfig(**sft_config_kwargs(recipe, str(tmp_path), has_eval=True, on_gpu=False))
    assert args.max_length == recipe["model"]["model_max_length"]
    assert args.learning_rate == recipe["training"]["learning_rate"]
    assert args.eval_strategy == "steps" and args.eval_steps == recipe["training"]["save_steps"]
    assert args.get_warmup_steps(1000) == 50
    assert args.report_to == [] or args.report_to == "none"


def test_seed_keys_that_the_workflow_manages_are_not_passed(recipe):
    recipe["training"]["output_dir"] = "./output/x"
    kwargs = sft_config_kwargs(recipe, "results/checkpoints/x", has_eval=False, on_gpu=False)
    assert kwargs["output_dir"] == "results/checkpoints/x" and "trainer_type" not in kwargs


def test_gradient_checkpointing_maps_to_the_installed_name(recipe, tmp_path):
    from trl import SFTConfig

    recipe["training"]["gradient_checkpointing"] = True
    args = SFTConfig(**sft_config_kwargs(recipe, str(tmp_path), has_eval=False, on_gpu=False))
    assert getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing


def test_tracking_is_local_and_wandb_needs_a_key(tmp_path, monkeypatch):
    from koaml.train import tracking

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    enabled, env = tracking(["tensorboard", "mlflow", "wandb"], tmp_path)
    assert enabled == ["tensorboard", "mlflow"]
    assert env["TENSORBOARD_LOGGING_DIR"] == str(tmp_path / "tensorboard")
    assert env["MLFLOW_TRACKING_URI"] == (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("WANDB_API_KEY", "x")
    assert tracking(["wandb"], tmp_path) == (["wandb"], {"WANDB_DIR": str(tmp_path)})


def test_flash_attention_falls_back_to_sdpa_with_a_warning(monkeypatch, caplog):
    import importlib.util

    from koaml.modeling import attn_implementation

    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a))
    assert attn_implementation("flash_attention_2") == "sdpa"
    assert "falling back to sdpa" in caplog.text
    assert attn_implementation("eager") == "eager"
