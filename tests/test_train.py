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


@pytest.mark.parametrize(
    "setting, attn, expected",
    [
        ("auto", "flash_attention_2", True),
        ("auto", "flash_attention_3", True),
        ("auto", "sdpa", False),
        ("auto", "eager", False),
        (True, "sdpa", True),
        (True, "flash_attention_2", True),
        (False, "flash_attention_2", False),
        (False, "sdpa", False),
    ],
)
def test_packing_decision(setting, attn, expected):
    from koaml.train import packing_decision

    packing, why = packing_decision(setting, attn)
    assert packing is expected
    assert why.startswith("on" if expected else "off") and (setting != "auto" or "auto" in why)


def test_packing_defaults_to_auto_and_is_off_with_sdpa(recipe):
    assert recipe["training"]["packing"] == "auto"
    kwargs = sft_config_kwargs(recipe, "out", has_eval=False, on_gpu=False)
    assert kwargs["packing"] is False and "packing_strategy" not in kwargs


def test_auto_packs_padding_free_with_flash_attention_on_a_gpu(recipe):
    recipe["model"]["attn_implementation"] = "flash_attention_2"
    on_gpu = sft_config_kwargs(recipe, "out", has_eval=False, on_gpu=True)
    assert on_gpu["packing"] is True and on_gpu["packing_strategy"] == "bfd"
    # off the GPU the loader falls back to sdpa, and so does the decision
    assert sft_config_kwargs(recipe, "out", has_eval=False, on_gpu=False)["packing"] is False
    # the loaded model's implementation wins over the recipe's
    assert sft_config_kwargs(recipe, "out", has_eval=False, on_gpu=True, attn_implementation="sdpa")["packing"] is False


def test_forced_packing_is_accepted_by_sftconfig(recipe, tmp_path):
    from trl import SFTConfig

    recipe["training"]["packing"] = True
    args = SFTConfig(**sft_config_kwargs(recipe, str(tmp_path), has_eval=False, on_gpu=False))
    assert args.packing and args.packing_strategy == "bfd"


def test_packing_schema_accepts_auto_and_booleans_only():
    from conftest import REPO
    from koaml.config import ConfigError, load_recipe

    path = REPO / "config/recipes/demo_lora.yaml"
    for value in ("auto", True, False):
        assert load_recipe(path, {"training": {"packing": value}})["training"]["packing"] == value
    with pytest.raises(ConfigError):
        load_recipe(path, {"training": {"packing": "yes"}})


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_get_exactly_their_unpacked_loss(tiny_model, tmp_path, recipe, attn):
    """The strongest check that packing is correct: in a packed batch the trainer really builds, every row's
    logits and the batch loss equal those of the rows run one at a time (no attention across rows)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    from koaml.modeling import load_causal_lm, load_tokenizer

    rows = [{"prompt": f"What is {a} plus {b}? " * (1 + a % 3), "completion": str(a + b)} for a, b in
            [(3, 4), (120, 7), (55, 901), (8, 8), (77, 13), (402, 96)]]
    recipe["model"]["attn_implementation"] = attn
    recipe["training"].update(packing=True, per_device_train_batch_size=2, max_steps=1)
    model = load_causal_lm(str(tiny_model), recipe["model"])
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**sft_config_kwargs(recipe, str(tmp_path), has_eval=False, on_gpu=False)),
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(str(tiny_model)),
    )
    batch = next(iter(trainer.get_train_dataloader()))
    position_ids = batch["position_ids"][0]
    starts = (position_ids == 0).nonzero().flatten().tolist() + [len(position_ids)]
    assert "attention_mask" not in batch and len(starts) - 1 > 2, "expected several rows flattened into one"

    model.eval()
    with torch.no_grad():
        packed = model(**{k: v for k, v in batch.items() if k != "labels"}, use_cache=False).logits[0]
        crossed = model(input_ids=batch["input_ids"], use_cache=False).logits[0]  # the same tokens, no boundaries
        loss_sum, n_tokens, crossing = 0.0, 0, 0.0
        for begin, end in zip(starts, starts[1:]):
            ids, labels = batch["input_ids"][:, begin:end], batch["labels"][:, begin:end]
            alone = model(input_ids=ids, labels=labels, use_cache=False)
            torch.testing.assert_close(packed[begin:end], alone.logits[0], atol=1e-4, rtol=1e-4)
            crossing = max(crossing, (crossed[begin:end] - alone.logits[0]).abs().max().item())
            n = int((labels[0, 1:] != -100).sum())
            loss_sum, n_tokens = loss_sum + alone.loss.item() * n, n_tokens + n
        assert crossing > 1e-2, "without position_ids the rows would see each other: the check must notice"
        loss = trainer.compute_loss(model, dict(batch))
    assert loss.item() == pytest.approx(loss_sum / n_tokens, rel=1e-4)
