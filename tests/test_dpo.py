"""DPO (trainer_type: dpo): preference data, recipe checks, the trainer's config, sizing, and real training."""

import json

import pytest
from conftest import REPO, dry_run, planned_jobs

from koaml.configfiles import ConfigError
from koaml.datafiles import check_local_data
from koaml.formats import detect_format, to_training_row
from koaml.recipe import load_recipe

PREFERENCES = "resources/demo/data/arith_preference_train.jsonl"
DPO = "config/recipes/demo_dpo_lora.yaml"


def rows(*dicts):
    return [dict(d, _source=f"f.jsonl:{i + 1}") for i, d in enumerate(dicts)]


def test_preference_rows_plain_and_conversational():
    plain = rows({"prompt": "Q: 1+1?\nA:", "chosen": " 2", "rejected": " 3"})
    assert detect_format(plain, "text") == "preference"
    assert to_training_row(plain[0], "preference", "none", "text") == {
        "prompt": "Q: 1+1?\nA:",
        "chosen": " 2",
        "rejected": " 3",
    }
    assert to_training_row(plain[0], "preference", "model", "text") == {
        "prompt": [{"role": "user", "content": "Q: 1+1?\nA:"}],
        "chosen": [{"role": "assistant", "content": " 2"}],
        "rejected": [{"role": "assistant", "content": " 3"}],
    }
    chatml = to_training_row(plain[0], "preference", "chatml", "text")
    assert chatml["prompt"].endswith("<|im_start|>assistant\n") and chatml["chosen"] == " 2<|im_end|>"
    chat = rows(
        {
            "prompt": [{"role": "user", "content": "1+1?"}],
            "chosen": [{"role": "assistant", "content": "2"}],
            "rejected": [{"role": "assistant", "content": "3"}],
        }
    )
    assert detect_format(chat, "text") == "preference"
    with pytest.raises(ConfigError, match=r"f\.jsonl:1: chat messages need a template"):
        to_training_row(chat[0], "preference", "none", "text")


def test_preference_rows_are_checked_like_sft_rows():
    bad = rows({"prompt": "Q", "chosen": " 2", "rejected": " 3"}, {"prompt": "Q", "chosen": {"x": 1}, "rejected": "3"})
    with pytest.raises(
        ConfigError, match=r"f\.jsonl:2: 'chosen' must be a string, or a list of \{role, content\} objects"
    ):
        detect_format(bad, "text")
    missing = rows({"prompt": "Q", "chosen": " 2", "rejected": " 3"}, {"prompt": "Q", "chosen": " 2"})
    with pytest.raises(ConfigError, match=r"f\.jsonl:2: missing 'rejected' \(the first row is in preference format\)"):
        detect_format(missing, "text")


def test_data_and_trainer_type_must_agree(monkeypatch):
    monkeypatch.chdir(REPO)
    sft_data = load_recipe(DPO, {"data": {"train_dataset": {"dataset_name": "resources/demo/data/arith_train.jsonl"}}})
    with pytest.raises(
        ConfigError, match=r"training\.trainer_type dpo needs preference rows .* prompt_completion format"
    ):
        check_local_data(sft_data, DPO)
    preference_for_sft = load_recipe(
        "config/recipes/demo_lora.yaml", {"data": {"train_dataset": {"dataset_name": PREFERENCES}}}
    )
    with pytest.raises(
        ConfigError,
        match=r"the data holds preference rows \(prompt, chosen, rejected\): set training.trainer_type: dpo",
    ):
        check_local_data(preference_for_sft, "r.yaml")
    assert check_local_data(load_recipe(DPO), DPO) == ["preference"]


def test_dpo_keys_only_with_dpo(monkeypatch):
    monkeypatch.chdir(REPO)
    with pytest.raises(ConfigError, match=r"training.beta: only used with training.trainer_type: dpo"):
        load_recipe("config/recipes/demo_lora.yaml", {"training": {"beta": 0.2}})
    with pytest.raises(ConfigError, match=r"training.packing: packs SFT rows only"):
        load_recipe(DPO, {"training": {"packing": True}})
    with pytest.raises(
        ConfigError, match=r"training.loss_type: 'sigmod' is not a dpo loss_type; did you mean 'sigmoid'?"
    ):
        load_recipe(DPO, {"training": {"loss_type": "sigmod"}})


def test_dpo_config_takes_beta_and_loss_type(monkeypatch, tmp_path):
    from trl import DPOConfig

    from koaml.trl_args import trl_config_kwargs

    monkeypatch.chdir(REPO)
    recipe = load_recipe(DPO, {"training": {"beta": 0.25, "loss_type": "ipo"}})
    args = DPOConfig(**trl_config_kwargs(recipe, str(tmp_path), has_eval=True, on_gpu=False))
    assert args.beta == 0.25 and args.loss_type == ["ipo"] and args.max_length == 64
    assert args.eval_strategy == "steps" and args.learning_rate == 1.0e-3


def test_dpo_sizing_counts_both_answers_and_the_full_reference_copy(monkeypatch):
    from koaml.memory import estimate_training_memory
    from koaml.shapes import shape_from_config

    monkeypatch.chdir(REPO)
    shape = shape_from_config(
        {"hidden_size": 2048, "num_hidden_layers": 16, "vocab_size": 32000, "intermediate_size": 8192,
         "num_attention_heads": 32, "model_type": "llama"}
    )  # fmt: skip
    sft = load_recipe("config/recipes/demo_lora.yaml")
    dpo = load_recipe(DPO, {"training": {"per_device_train_batch_size": 32}})
    lora_sft, lora_dpo = estimate_training_memory(sft, shape), estimate_training_memory(dpo, shape)
    assert lora_dpo.activations_gb == pytest.approx(2 * lora_sft.activations_gb)
    assert lora_dpo.weights_gb == pytest.approx(lora_sft.weights_gb)  # the reference is the adapter-less model
    full = {"peft": {"type": "none"}}
    full_sft, full_dpo = (estimate_training_memory(r.replace(**full), shape) for r in (sft, dpo))
    assert full_dpo.weights_gb == pytest.approx(2 * full_sft.weights_gb)  # a frozen copy of the weights


def test_sft_then_dpo_plans_as_a_second_stage(workflow_dir):
    proc = dry_run(workflow_dir, "--configfile", "config/examples/dpo.yaml")
    jobs = planned_jobs(proc.stdout)
    assert ("train", "run=sft-dpo") in jobs and ("merge", "run=sft-dpo") in jobs


@pytest.fixture(scope="module")
def dpo_trained(tmp_path_factory, tiny_model) -> dict:
    """DPO with LoRA, QLoRA and full fine-tuning on the tiny model, 6 steps each: method -> trained folder."""
    from conftest import train_here

    root, trained = tmp_path_factory.mktemp("dpo"), {}
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(REPO)
        for method in ("lora", "qlora", "none"):
            recipe = load_recipe(DPO, {"training": {"max_steps": 6, "logging_steps": 2}})
            recipe = recipe.replace(peft=recipe.peft.replace(type=method) if method != "none" else {"type": "none"})
            trained[method] = train_here(recipe, tiny_model, root / method)
    return trained


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora", "none"], ids=["lora", "qlora", "full"])
def test_dpo_trains_and_logs_preference_metrics(dpo_trained, method):
    trained = dpo_trained[method]
    assert json.loads((trained.parent / "data/stats.json").read_text())["format"] == "preference"
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["trainer_type"] == "dpo" and summary["global_step"] == 6
    assert summary["method"] == {"none": "full"}.get(method, method)
    history = json.loads((trained / "log_history.json").read_text())
    logged = {key for entry in history for key in entry}
    assert {"rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracies"} <= logged
    weights = "model.safetensors" if method == "none" else "adapter_model.safetensors"
    assert (trained / weights).exists()
