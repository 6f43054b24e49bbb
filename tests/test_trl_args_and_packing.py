"""The recipe -> TRL config mapping (the guide's keys on transformers 5 / TRL 1.x) and SFT's packed rows."""

import pytest

from koaml.packed_rows import trained_token_count
from koaml.recipe import load_recipe
from koaml.trl_args import trl_config_kwargs


@pytest.fixture
def recipe():
    from conftest import REPO

    return load_recipe(REPO / "config/recipes/demo_lora.yaml")


def test_warmup_ratio_becomes_a_fractional_warmup_steps(recipe):
    kwargs = trl_config_kwargs(recipe, "out", has_eval=False, on_gpu=False)
    assert kwargs["warmup_steps"] == pytest.approx(0.05) and isinstance(kwargs["warmup_steps"], float)
    assert "warmup_ratio" not in kwargs


def test_explicit_warmup_steps_win(recipe):
    recipe = recipe.replace(training=recipe.training.replace(warmup_steps=7))
    assert trl_config_kwargs(recipe, "out", has_eval=False, on_gpu=False)["warmup_steps"] == 7


def test_kwargs_are_accepted_by_sftconfig(recipe, tmp_path):
    from trl import SFTConfig

    args = SFTConfig(**trl_config_kwargs(recipe, str(tmp_path), has_eval=True, on_gpu=False))
    assert args.max_length == recipe.model.model_max_length
    assert args.learning_rate == recipe.training.learning_rate
    assert args.eval_strategy == "steps" and args.eval_steps == recipe.training.save_steps
    assert args.get_warmup_steps(1000) == 50
    assert args.report_to == [] or args.report_to == "none"


def test_seed_keys_that_the_workflow_manages_are_not_passed(recipe):
    recipe = recipe.replace(training={**recipe.as_dict()["training"], "output_dir": "./output/x"})
    kwargs = trl_config_kwargs(recipe, "results/checkpoints/x", has_eval=False, on_gpu=False)
    assert kwargs["output_dir"] == "results/checkpoints/x" and "trainer_type" not in kwargs


def test_gradient_checkpointing_maps_to_the_installed_name(recipe, tmp_path):
    from trl import SFTConfig

    recipe = recipe.replace(training=recipe.training.replace(gradient_checkpointing=True))
    args = SFTConfig(**trl_config_kwargs(recipe, str(tmp_path), has_eval=False, on_gpu=False))
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
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "flash_attn" else real_find_spec(name, *a)
    )
    assert attn_implementation("flash_attention_2") == "sdpa"
    assert "falling back to sdpa" in caplog.text
    assert attn_implementation("eager") == "eager"


def _cost(speedup: float):
    from koaml.packing import PackingCost

    return PackingCost(packed_flops=1.0, unpacked_flops=speedup, packed_rows=10, rows=30)


@pytest.mark.parametrize(
    "setting, attn, remote_code, speedup, expected",
    [
        ("auto", "sdpa", False, 2.0, True),
        ("auto", "sdpa", False, 1.05, False),  # a small predicted gain is not worth the model's error
        ("auto", "eager", False, 0.3, False),
        ("auto", "flash_attention_2", False, 1.2, True),
        ("auto", "flash_attention_2", True, 1.2, True),
        ("auto", "sdpa", True, 3.0, False),  # remote code: its masks may ignore position_ids
        (True, "sdpa", False, 0.3, True),
        (True, "sdpa", True, 2.0, True),
        (False, "flash_attention_2", False, 2.0, False),
        (False, "sdpa", False, 2.0, False),
    ],
)
def test_packing_decision(setting, attn, remote_code, speedup, expected):
    from koaml.packing import decide

    packing, why = decide(setting, attn, remote_code, _cost(speedup))
    assert packing is expected
    assert why.startswith("on" if expected else "off") and (setting != "auto" or "auto" in why)
    assert f"{speedup:.2f}x" in why or (remote_code and setting == "auto")
    assert not (remote_code and packing and attn == "sdpa") or "remote-code" in why


def test_best_fit_decreasing_fills_bins():
    from koaml.packing import best_fit_decreasing

    assert sorted(best_fit_decreasing([5, 4, 3, 3, 2, 1], 8)) == [2, 8, 8]
    bins = best_fit_decreasing([300, 200, 900, 120, 700, 40], 1000)
    assert sum(bins) == 2260 and max(bins) <= 1000 and len(bins) == 3


def test_packing_estimate_follows_padding_and_attention_costs():
    """Long-tailed rows waste padding unpacked: packing into short rows wins. Short uniform rows packed into
    8,192-token rows pay attention over every masked pair with sdpa: packing loses. Varlen kernels never lose."""
    import random

    from koaml.packing import estimate

    rng = random.Random(0)
    tailed = [min(2000, int(rng.lognormvariate(4, 1))) + 1 for _ in range(3000)]
    uniform = [rng.randint(16, 20) for _ in range(3000)]
    smollm2 = dict(batch_size=8, n_params=134_515_008, n_layers=30, attention_width=576)
    assert estimate(tailed, 512, attn_implementation="sdpa", **smollm2).speedup > 1.5
    assert estimate(uniform, 8192, attn_implementation="sdpa", **smollm2).speedup < 0.6
    assert estimate(uniform, 2048, attn_implementation="sdpa", **smollm2).speedup < 1.0
    for lengths in (tailed, uniform):
        for max_length in (512, 8192):
            assert estimate(lengths, max_length, attn_implementation="flash_attention_2", **smollm2).speedup >= 1.0


def test_packing_off_leaves_the_packing_strategy_unset(recipe):
    kwargs = trl_config_kwargs(recipe, "out", has_eval=False, on_gpu=False)
    assert kwargs["packing"] is False and "packing_strategy" not in kwargs
    kwargs = trl_config_kwargs(recipe, "out", has_eval=False, on_gpu=False, packing=True)
    assert kwargs["packing"] is True and kwargs["packing_strategy"] == "bfd"


def test_forced_packing_is_accepted_by_sftconfig(recipe, tmp_path):
    from trl import SFTConfig

    args = SFTConfig(**trl_config_kwargs(recipe, str(tmp_path), has_eval=False, on_gpu=False, packing=True))
    assert args.packing and args.packing_strategy == "bfd"


def test_packing_schema_accepts_auto_and_booleans_only():
    from conftest import REPO

    from koaml.configfiles import ConfigError
    from koaml.recipe import load_recipe

    path = REPO / "config/recipes/demo_lora.yaml"
    for value in ("auto", True, False):
        assert load_recipe(path, {"training": {"packing": value}}).training.packing == value
    with pytest.raises(ConfigError):
        load_recipe(path, {"training": {"packing": "yes"}})


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_rows_get_exactly_their_unpacked_loss(tiny_model, tmp_path, recipe, attn):
    """The strongest check that packing is correct: in the packed batches the trainer really builds (several
    rows, each holding several sequences, right-padded to the longest row), every sequence's logits and the
    batch loss equal those of the sequences run one at a time (no attention across sequences, none from padding)."""
    import torch
    from datasets import Dataset
    from trl import SFTConfig

    from koaml.modeling import load_causal_lm, load_tokenizer
    from koaml.packed_rows import sft_trainer

    rows = [
        {"prompt": f"What is {a} plus {b}? " * (1 + a % 4), "completion": str(a + b)}
        for a, b in [(3, 4), (120, 7), (55, 901), (8, 8), (77, 13), (402, 96), (1, 2), (30, 3), (9, 90), (11, 5)]
    ]
    recipe = recipe.replace(
        model=recipe.model.replace(attn_implementation=attn),
        training=recipe.training.replace(packing=True, per_device_train_batch_size=3, max_steps=1),
    )
    model = load_causal_lm(str(tiny_model), recipe.model)
    trainer = sft_trainer(
        model=model,
        args=SFTConfig(**trl_config_kwargs(recipe, str(tmp_path), has_eval=False, on_gpu=False, packing=True)),
        train_dataset=Dataset.from_list(rows),
        processing_class=load_tokenizer(str(tiny_model)),
    )
    packed_rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    assert all(len(r["input_ids"]) <= recipe.model.model_max_length for r in packed_rows)
    assert len(packed_rows) >= 3 and max(len(r["seq_lengths"]) for r in packed_rows) >= 3
    model.eval()
    padded = 0
    for first in range(0, len(packed_rows) - 1, 3):
        examples = packed_rows[first : first + 3]
        batch = trainer.data_collator(examples)
        width = batch["input_ids"].shape[1]
        assert "attention_mask" not in batch and batch["input_ids"].shape[0] == len(examples) > 1
        assert batch["num_real_tokens"] == sum(len(e["input_ids"]) for e in examples)
        padded += sum(width - len(e["input_ids"]) for e in examples)
        inputs = {k: v for k, v in batch.items() if k in ("input_ids", "position_ids")}
        with torch.no_grad():
            packed = model(**inputs, use_cache=False).logits
            crossed = model(input_ids=batch["input_ids"], use_cache=False).logits  # the same tokens, no boundaries
            loss_sum, n_tokens, crossing = 0.0, 0, 0.0
            for row, example in enumerate(examples):
                begin = 0
                for length in example["seq_lengths"]:
                    end = begin + length
                    ids, labels = (
                        batch["input_ids"][row : row + 1, begin:end],
                        batch["labels"][row : row + 1, begin:end],
                    )
                    assert batch["position_ids"][row, begin:end].tolist() == list(range(length))
                    alone = model(input_ids=ids, labels=labels, use_cache=False)
                    torch.testing.assert_close(packed[row, begin:end], alone.logits[0], atol=1e-4, rtol=1e-4)
                    crossing = max(crossing, (crossed[row, begin:end] - alone.logits[0]).abs().max().item())
                    n = int((labels[0, 1:] != -100).sum())
                    loss_sum, n_tokens = loss_sum + alone.loss.item() * n, n_tokens + n
                    begin = end
                assert (batch["labels"][row, begin:] == -100).all(), "padding must not count in the loss"
            assert crossing > 1e-2, "without position_ids the sequences would see each other: the check must notice"
            model.train()  # compute_loss counts the tokens of training batches only (the tiny model has no dropout)
            counted = trained_token_count(trainer)
            loss = trainer.compute_loss(model, dict(batch))
            model.eval()
        assert loss.item() == pytest.approx(loss_sum / n_tokens, rel=1e-4)
        assert trained_token_count(trainer) - counted == batch["num_real_tokens"], "num_tokens counts real tokens"
        assert trainer._metrics["train"]["num_tokens"] == [trained_token_count(trainer)]
    assert padded > 0, "expected rows of different lengths, padded to the longest"


def test_trl_private_token_count_is_where_koaml_expects():
    """koaml.packed_rows corrects TRL's count of trained tokens through two private SFTTrainer attributes (no public
    API); a TRL release that renames or stops updating them must fail here, not log a wrong num_tokens."""
    import inspect

    from trl import SFTTrainer

    source = inspect.getsource(SFTTrainer)
    assert "self._total_train_tokens = 0" in source, "TRL no longer keeps SFTTrainer._total_train_tokens"
    assert "self._total_train_tokens +=" in source, "TRL no longer counts tokens in compute_loss"
    assert '["num_tokens"] = [self._total_train_tokens]' in source, "TRL's num_tokens metric moved"


def test_each_process_loads_its_4bit_model_on_its_own_gpu(monkeypatch):
    import torch

    from koaml.modeling import quantized_device_map

    assert quantized_device_map() == {"": "cpu"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert quantized_device_map() == {"": 3}
