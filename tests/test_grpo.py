"""GRPO (trainer_type: grpo): rewards, prompt data, recipe checks, the trainer's config, sizing, and real training."""

import json
import subprocess
import sys

import pytest
from conftest import REPO, dry_run, planned_jobs

from koaml import rewards
from koaml.configfiles import ConfigError
from koaml.datafiles import check_local_data
from koaml.formats import detect_format, to_training_row
from koaml.recipe import load_recipe

GRPO = "config/recipes/demo_grpo_lora.yaml"
PROMPTS = "resources/demo/data/arith_prompts_train.jsonl"
CHAT = [{"role": "assistant", "content": "The answer is 42."}]


def score(name, completions, **kwargs):
    spec = {"function": name, "weight": 1.0, **kwargs.pop("params", {})}
    (function,) = rewards.reward_functions([spec])
    return function(completions=completions, prompts=["p"] * len(completions), trainer_state=None, **kwargs)


def test_exact_match_compares_the_extracted_answer():
    answers = {"answer": ["94", "94", "94"]}
    assert score("exact_match", [" 94", " 94\n", " 95"], **answers) == [1.0, 1.0, 0.0]
    first_number = {"pattern": r"^\s*(-?\d+)"}
    assert score("exact_match", [" 94 Question", "x 94", " 940"], params=first_number, **answers) == [1.0, 0.0, 0.0]
    boxed = {"pattern": r"\\boxed\{(.+?)\}", "column": "solution"}
    assert score("exact_match", [r"\boxed{1} so \boxed{94}"], params=boxed, solution=["94"]) == [1.0]
    assert score("exact_match", [CHAT], params={"pattern": r"is (\d+)"}, answer=[42]) == [1.0]  # chat completions


def test_numeric_match_takes_the_last_number_within_tolerance():
    assert score("numeric_match", ["so 3 then 42.0", "1,234", "x"], answer=["42", "1234", "1"]) == [1.0, 1.0, 0.0]
    near = {"tolerance": 0.01}
    assert score("numeric_match", ["3.141", "3.2"], params=near, answer=["3.14", "3.14"]) == [1.0, 0.0]
    assert score("numeric_match", ["-0.5e1"], answer=["-5"]) == [1.0]


def test_regex_and_length_penalty():
    tags = {"pattern": r"^<think>.*</think>\s*<answer>.*</answer>$"}
    good, bad = "<think>a\nb</think> <answer>4</answer>", "<answer>4</answer>"
    assert score("regex", [good, bad], params=tags) == [1.0, 0.0]
    lengths = [[1] * 4, [1] * 6, [1] * 20]
    assert score("length_penalty", ["", "", ""], params={"max_tokens": 4}, completion_ids=lengths) == [0.0, -0.5, -1.0]


def test_user_reward_is_loaded_and_named(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("def brevity(completions, answer, **kwargs):\n    return [-len(c) for c in completions]\n")
    spec = {"function": f"{path}:brevity", "weight": 0.5}
    assert rewards.problems([spec]) == []
    assert rewards.required_columns([spec]) == {"answer": f"training.rewards[0] ({path}:brevity)"}
    same_twice = rewards.reward_functions([spec, spec])
    assert [f.__name__ for f in same_twice] == ["brevity", "brevity_2"]  # distinct names in TRL's logs
    assert same_twice[0](completions=["ab", "c"], answer=["x", "y"], prompts=None) == [-2, -1]


def test_async_rewards_and_their_helper_modules(tmp_path):
    """An ``async def`` reward is awaited; a module next to the reward file imports by name (and is an input of
    training), a missing one is named when the workflow is parsed, one imported in ``try`` is taken as optional."""
    (tmp_path / "helpers.py").write_text("def length(text):\n    return len(text)\n")
    path = tmp_path / "mine.py"
    path.write_text(
        "import asyncio\nimport helpers\ntry:\n    import not_installed_xyz\nexcept ImportError:\n    pass\n\n\n"
        "async def brevity(completions, **kwargs):\n    await asyncio.sleep(0)\n"
        "    return [-helpers.length(c) for c in completions]\n"
    )
    spec = {"function": f"{path}:brevity"}
    assert rewards.problems([spec]) == []
    assert rewards.user_files([spec]) == sorted([str(path), str(tmp_path / "helpers.py")])  # both train inputs
    (function,) = rewards.reward_functions([spec])
    assert function(completions=["ab", "c"], prompts=None) == [-2, -1]
    assert function(completions=["abc"], prompts=None) == [-3]  # batch after batch, on the same event loop
    path.write_text(path.read_text().replace("import helpers", "from . import helpers\nimport helperz"))
    assert rewards.problems([spec]) == [
        f"training.rewards[0].function: {path}:2: a relative import; the file is loaded on its own: import its "
        "neighbours by name",
        f"training.rewards[0].function: {path}:3: imports 'helperz', which is not installed in this environment, "
        "where the training job runs; pip install it, or put helperz.py next to mine.py",
    ]


def test_a_lambda_reward_is_checked_like_a_def_and_a_neighbours_names_are_read(tmp_path):
    """``score = lambda ...`` is a reward whose parameters are read (its columns too); a name imported from a
    neighbour module must be bound there (at the top level, under if/try too); ``*`` imports are not checked. (The
    helper module's name is this test's own: an earlier test's ``helpers`` stays imported in this process.)"""
    (tmp_path / "scale_helpers.py").write_text(
        "try:\n    import json\nexcept ImportError:\n    json = None\nSCALE = 2\n"
    )
    path = tmp_path / "mine.py"
    path.write_text(
        "from scale_helpers import SCALE, json\nscore = lambda completions, answer, **kwargs: [0.0] * SCALE\n"
    )
    spec = {"function": f"{path}:score"}
    assert rewards.problems([spec]) == []
    assert rewards.required_columns([spec]) == {"answer": f"training.rewards[0] ({path}:score)"}
    (function,) = rewards.reward_functions([spec])
    assert function(completions=["a"], answer=["1"], prompts=None) == [0.0, 0.0]
    path.write_text("from scale_helpers import scale\nscore = lambda completions: []\n")
    assert rewards.problems([spec]) == [
        f"training.rewards[0].function: {path}:2: score(...) must accept **kwargs: TRL passes prompts, completions, "
        "completion_ids, trainer_state and every data column as keywords",
        f"training.rewards[0].function: {path}:1: imports 'scale' from scale_helpers.py, which does not define it (it "
        "defines: SCALE, json)",
    ]
    (tmp_path / "scale_helpers.py").write_text("from os.path import *\n")
    path.write_text("from scale_helpers import anything\nscore = lambda completions, **kwargs: []\n")
    assert rewards.problems([spec]) == []
    assert (
        rewards.problems(
            [{"function": "exact_match", "weight": 0}, {"function": "regex", "pattern": "x", "weight": 0.5}]
        )
        == []
    )


def test_user_reward_signature_is_checked_without_running_it(tmp_path):
    path = tmp_path / "mine.py"
    path.write_text("raise SystemExit('ran')\ndef score(completions, /, **kwargs):\n    return []\n")
    (problem,) = rewards.problems([{"function": f"{path}:score"}])
    assert problem == (
        f"training.rewards[0].function: {path}:2: score(...): TRL passes everything by keyword; remove the '/' "
        "(positional-only parameters)"
    )
    with pytest.raises(ValueError, match=r"must accept \*\*kwargs"):
        path.write_text("def score(completions):\n    return []\n")
        rewards.load_user_function(f"{path}:score")
    assert rewards.problems([{"function": "f.py:score", "column": "a"}]) == [
        "training.rewards[0].column: only built-in rewards take parameters; read data columns in your function instead"
    ]


def rows(*dicts):
    return [dict(d, _source=f"f.jsonl:{i + 1}") for i, d in enumerate(dicts)]


def test_prompt_rows_keep_their_columns_and_take_the_template():
    plain = rows({"prompt": "Q: 1+1?\nA:", "answer": "2", "meta": {"id": 7}})
    assert detect_format(plain, "text") == "prompt"
    assert to_training_row(plain[0], "prompt", "none", "text") == {
        "prompt": "Q: 1+1?\nA:",
        "answer": "2",
        "meta": {"id": 7},
    }
    assert to_training_row(plain[0], "prompt", "model", "text")["prompt"] == [
        {"role": "user", "content": "Q: 1+1?\nA:"}
    ]
    assert to_training_row(plain[0], "prompt", "chatml", "text")["prompt"] == (
        "<|im_start|>user\nQ: 1+1?\nA:<|im_end|>\n<|im_start|>assistant\n"
    )
    chat = rows({"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "1+1?"}]})
    assert detect_format(chat, "text") == "prompt"
    with pytest.raises(ConfigError, match=r"f\.jsonl:1: chat messages need a template"):
        to_training_row(chat[0], "prompt", "none", "text")


def test_recipe_defaults_follow_the_trainer(monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)
    grpo = load_recipe(GRPO, {"training": {"beta": 0.04}})
    assert grpo.training.beta == 0.04 and grpo.training.rewards[0]["weight"] == 1.0
    defaults = load_recipe(GRPO).training
    assert (defaults.use_vllm, defaults.scale_rewards, defaults.epsilon) == (False, "group", 0.2)
    minimal = tmp_path / "dpo.yaml"
    minimal.write_text(
        "data: {train_dataset: {dataset_name: resources/demo/data/arith_preference_train.jsonl}}\n"
        "training: {trainer_type: dpo}\n"
    )
    dpo = load_recipe(minimal).training
    assert (dpo.beta, dpo.loss_type) == (0.1, "sigmoid")
    sft = load_recipe("config/recipes/demo_lora.yaml")
    assert (sft.training.beta, sft.training.loss_type, sft.training.num_generations, sft.training.rewards) == (
        None,
    ) * 4
    assert not {"beta", "loss_type", "num_generations", "rewards"} & set(sft.as_dict()["training"])  # same hash
    with pytest.raises(ConfigError, match=r"training.beta: must be > 0 with trainer_type dpo"):
        load_recipe("config/recipes/demo_dpo_lora.yaml", {"training": {"beta": 0}})
    with pytest.raises(ConfigError, match=r"training.packing: packs SFT rows only; remove it with trainer_type: grpo"):
        load_recipe(GRPO, {"training": {"packing": True}})


def test_completion_only_loss_is_reported_as_ignored(monkeypatch, caplog):
    monkeypatch.chdir(REPO)
    load_recipe(GRPO, {"training": {"completion_only_loss": False}})
    assert "training.completion_only_loss: ignored with trainer_type grpo (an SFT setting)" in caplog.text


def test_reward_columns_checked_at_parse(monkeypatch):
    monkeypatch.chdir(REPO)
    recipe = load_recipe(GRPO)
    assert check_local_data(recipe, GRPO) == ["prompt"]
    solution = [{"function": "numeric_match", "column": "solution", "weight": 1.0}]
    with pytest.raises(ConfigError, match=rf"{PROMPTS}:1: no 'solution' column, .* found: prompt, answer"):
        check_local_data(recipe.replace(training=recipe.training.replace(rewards=solution)), GRPO)


def test_grpo_config_takes_the_recipe(monkeypatch, tmp_path):
    from trl import GRPOConfig

    from koaml.trl_args import trl_config_kwargs

    monkeypatch.chdir(REPO)
    two = [{"function": "exact_match", "weight": 2.0}, {"function": "length_penalty", "max_tokens": 4, "weight": 0.5}]
    recipe = load_recipe(GRPO, {"training": {"rewards": two, "beta": 0.04, "num_generations": 4, "temperature": 0.7}})
    args = GRPOConfig(**trl_config_kwargs(recipe, str(tmp_path), has_eval=False, on_gpu=False))
    assert args.reward_weights == [2.0, 0.5] and args.beta == 0.04 and args.num_generations == 4
    assert args.temperature == 0.7 and args.max_completion_length == 6 and args.loss_type == "dapo"
    assert args.use_vllm is False and args.scale_rewards == "group"


def test_grpo_sizing_counts_generation_reference_and_vllm(monkeypatch):
    from koaml.memory import estimate_training_memory
    from koaml.shapes import shape_from_config

    monkeypatch.chdir(REPO)
    shape = shape_from_config(
        {"hidden_size": 2048, "num_hidden_layers": 16, "vocab_size": 32000, "intermediate_size": 8192,
         "num_attention_heads": 32, "num_key_value_heads": 8, "model_type": "llama"}
    )  # fmt: skip
    base = {"model_max_length": 4096, "dtype": "bfloat16", "attn_implementation": "sdpa"}
    grpo = load_recipe(GRPO).replace(model=base)
    sft = load_recipe("config/recipes/demo_lora.yaml").replace(
        model=base, training=grpo.training.replace(trainer_type="sft")
    )
    assert estimate_training_memory(grpo, shape).total_gb == pytest.approx(
        estimate_training_memory(sft, shape).total_gb
    )
    many = grpo.replace(
        training=grpo.training.replace(gradient_accumulation_steps=64, gradient_checkpointing=True)
    )  # 2048 completions at once
    kv = 2 * 16 * 8 * 64 * 4096 * 2048 * 2 / 2**30
    assert estimate_training_memory(many, shape).activations_gb == pytest.approx(kv)
    full, full_ref = (grpo.replace(peft={"type": "none"}, training=grpo.training.replace(beta=b)) for b in (0.0, 0.04))
    assert estimate_training_memory(full_ref, shape).weights_gb == pytest.approx(
        2 * estimate_training_memory(full, shape).weights_gb
    )
    vllm = grpo.replace(training=grpo.training.replace(use_vllm=True))
    without, with_vllm = estimate_training_memory(grpo, shape), estimate_training_memory(vllm, shape)
    assert with_vllm.total_gb == pytest.approx(without.total_gb / 0.7) and "vLLM" in with_vllm.describe()


def test_sft_then_grpo_plans_a_second_stage_with_the_reward_file(workflow_dir):
    (workflow_dir / "my_rewards.py").write_text(
        "def short(completions, **kwargs):\n    return [0.0] * len(completions)\n"
    )
    recipe = (workflow_dir / GRPO).read_text()
    (workflow_dir / GRPO).write_text(recipe.replace("rewards:\n", "rewards:\n    - function: my_rewards.py:short\n"))
    proc = dry_run(workflow_dir, "--configfile", "config/examples/grpo.yaml")
    assert ("train", "run=sft-grpo") in planned_jobs(proc.stdout)
    (train_job,) = [b for b in proc.stdout.split("\n\n") if "rule train:" in b and "run=sft-grpo" in b]
    assert "my_rewards.py" in train_job  # an input: editing the reward file reruns the training


@pytest.fixture(scope="module")
def grpo_trained(tmp_path_factory, tiny_model) -> dict:
    """GRPO with LoRA, QLoRA and full fine-tuning on the tiny model, 4 steps each, a built-in and a user reward:
    method -> trained folder."""
    from conftest import train_here

    root = tmp_path_factory.mktemp("grpo")
    (root / "mine.py").write_text(
        "def digits_only(completions, answer, **kwargs):\n"
        "    return [float(c.strip().isdigit()) for c in completions]\n"
    )
    user = {"function": f"{root}/mine.py:digits_only", "weight": 0.5}
    trained = {}
    for method in ("lora", "qlora", "none"):
        recipe = load_recipe(
            REPO / GRPO,
            {
                "data": {"train_dataset": {"dataset_name": str(REPO / PROMPTS)}},
                "training": {
                    "max_steps": 4,
                    "logging_steps": 2,
                    "per_device_train_batch_size": 8,
                    "num_generations": 4,
                    "beta": 0.04 if method == "none" else 0.0,
                    "rewards": [{"function": "exact_match", "pattern": r"^\s*(-?\d+)"}, user],
                },
            },
        )
        recipe = recipe.replace(peft=recipe.peft.replace(type=method) if method != "none" else {"type": "none"})
        trained[method] = train_here(recipe, tiny_model, root / method)
    return trained


@pytest.mark.slow
@pytest.mark.parametrize("method", ["lora", "qlora", "none"])
def test_grpo_trains_and_logs_rewards(grpo_trained, method):
    trained = grpo_trained[method]
    assert json.loads((trained.parent / "data/stats.json").read_text())["format"] == "prompt"
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["trainer_type"] == "grpo" and summary["global_step"] == 4
    assert summary["method"] == {"none": "full"}.get(method, method)
    history = json.loads((trained / "log_history.json").read_text())
    logged = {key for entry in history for key in entry}
    assert {"reward", "reward_std", "rewards/exact_match/mean", "rewards/digits_only/mean"} <= logged
    if method == "none":
        assert "kl" in logged  # beta > 0: the KL to the reference copy
    weights = "model.safetensors" if method == "none" else "adapter_model.safetensors"
    assert (trained / weights).exists()


def test_use_vllm_needs_vllm_and_a_gpu():
    from koaml.train import require_vllm

    with pytest.raises(SystemExit, match=r"training.use_vllm: needs the vllm package and a GPU"):
        require_vllm()  # this machine has neither


def test_grpo_typos_get_did_you_mean(monkeypatch):
    monkeypatch.chdir(REPO)
    typos = {"training": {"num_generation": 4, "rewards": [{"function": "exact_match", "weigth": 2}]}}
    with pytest.raises(ConfigError) as error:
        load_recipe(GRPO, typos)
    assert "training.num_generation: unknown key; did you mean 'num_generations'?" in str(error.value)
    assert "training.rewards.0.weigth: unknown key; did you mean 'weight'?" in str(error.value)


@pytest.mark.slow
def test_grpo_resumes_after_sigterm(tmp_path, tiny_model):
    """What SFT training has holds for GRPO (the slowest trainer per step): SIGTERM saves a checkpoint and exits
    143, and the next run resumes from it. (A non-finite loss stops DPO as it stops SFT: tests/test_training_jobs.py.)"""
    import os
    import signal

    from conftest import start_and_wait_for_checkpoint

    from koaml.data import prepare
    from koaml.io import write_yaml

    training = {"max_steps": 8, "save_steps": 2, "per_device_train_batch_size": 8, "num_generations": 4}
    recipe = load_recipe(
        REPO / GRPO, {"training": training, "data": {"train_dataset": {"dataset_name": str(REPO / PROMPTS)}}}
    )
    write_yaml(tmp_path / "config.yaml", recipe)
    prepare(recipe, str(tiny_model), tmp_path / "data")
    cmd = [sys.executable, "-m", "koaml.cli", "train", "--config", str(tmp_path / "config.yaml"), "--model",
           str(tiny_model), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "trained"), "--checkpoints",
           str(tmp_path / "ckpt"), "--threads", "1"]  # fmt: skip
    with open(tmp_path / "log", "w") as log:
        proc = start_and_wait_for_checkpoint(cmd, tmp_path / "ckpt" / recipe.config_hash, 2, log)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    assert not (tmp_path / "trained").exists()
    subprocess.run(cmd, check=True, capture_output=True)
    summary = json.loads((tmp_path / "trained/train_summary.json").read_text())
    assert summary["resumed_from"] and summary["global_step"] == 8 and summary["trainer_type"] == "grpo"


def test_editing_a_reward_file_changes_the_checkpoint_key(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    path = tmp_path / "mine.py"
    path.write_text("def score(completions, **kwargs):\n    return [0.0] * len(completions)\n")
    recipe = load_recipe(GRPO, {"training": {"rewards": [{"function": f"{path}:score"}]}})
    before = recipe.config_hash
    path.write_text("def score(completions, **kwargs):\n    return [1.0] * len(completions)\n")
    assert recipe.config_hash != before  # a rerun trains afresh instead of resuming the old reward's checkpoints
    assert load_recipe(GRPO).config_hash == load_recipe(GRPO).config_hash  # built-in rewards: the recipe alone
