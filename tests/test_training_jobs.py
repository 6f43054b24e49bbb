"""Real training on the tiny model: SIGTERM and the watchdogs, torchrun, a non-finite loss, packing and tracking, and
merge equivalence (on the demo's trained runs). Resuming after SIGKILL: tests/test_demo.py."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, poisoned_copy, train_here

from koaml.data import prepare
from koaml.io import write_yaml
from koaml.recipe import load_recipe

pytestmark = pytest.mark.slow


def setup_run(tmp_path, tiny_model, recipe_name="demo_full.yaml", **training):
    overrides = {
        "training": {"max_steps": 40, "save_steps": 10, "logging_steps": 5, **training},
        "data": {"max_samples": 400},
    }
    os.chdir(REPO)
    recipe = load_recipe(f"config/recipes/{recipe_name}", overrides)
    config = tmp_path / "config.yaml"
    write_yaml(config, recipe)
    prepare(recipe, str(tiny_model), tmp_path / "data")
    return config, tmp_path / "checkpoints" / recipe.config_hash


def train_cmd(tmp_path, tiny_model, config):
    return [
        sys.executable,
        "-m",
        "koaml.cli",
        "train",
        "--config",
        str(config),
        "--model",
        str(tiny_model),
        "--data",
        str(tmp_path / "data"),
        "--out",
        str(tmp_path / "trained"),
        "--checkpoints",
        str(tmp_path / "checkpoints"),
        "--threads",
        "1",
    ]


def test_sigterm_saves_a_checkpoint_and_exits(tmp_path, tiny_model):
    config, checkpoints = setup_run(tmp_path, tiny_model, save_steps=1000, max_steps=2000)
    cmd = train_cmd(tmp_path, tiny_model, config)
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.time() + 300
        while "'loss'" not in (tmp_path / "log").read_text() and "loss" not in (tmp_path / "log").read_text():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.2)
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    saved = sorted(checkpoints.glob("checkpoint-*"))
    assert saved, "SIGTERM must leave a checkpoint although save_steps was not reached"
    assert int(saved[-1].name.split("-")[1]) < 1000
    assert not (tmp_path / "trained").exists()


def wait_for_log(proc, log_path: Path, text: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while text not in log_path.read_text():
        assert proc.poll() is None, f"training ended early:\n{log_path.read_text()[-3000:]}"
        assert time.time() < deadline, f"no {text!r} in the log within {timeout} s"
        time.sleep(0.2)


def test_sigterm_in_a_long_step_exits_within_the_grace_period(tmp_path, tiny_model):
    """A step that does not end soon after SIGTERM (a long optimizer step) is abandoned after the grace period:
    the process exits in seconds, before SLURM's SIGKILL, keeping its last checkpoint to resume from."""
    config, checkpoints = setup_run(
        tmp_path, tiny_model, max_steps=100, save_steps=1, per_device_train_batch_size=1,
        gradient_accumulation_steps=400,  # one step: 400 forward/backward passes, seconds on two cores
    )  # fmt: skip
    cmd = train_cmd(tmp_path, tiny_model, config)
    env = dict(os.environ, KOAML_SIGTERM_GRACE_S="0.05")
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
        deadline = time.time() + 300
        while not (checkpoints / "checkpoint-1" / "trainer_state.json").exists():
            assert proc.poll() is None and time.time() < deadline
            time.sleep(0.1)
        time.sleep(0.5)  # inside the next step
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=60) == 143
    assert time.monotonic() - sent < 10
    assert "the step did not end within the grace period after SIGTERM" in (tmp_path / "log").read_text()
    assert (checkpoints / "checkpoint-1" / "trainer_state.json").exists()


def test_training_stops_when_the_workflow_process_is_gone(tmp_path, tiny_model):
    """No training outlives the workflow that started it: the Snakefile names its process, and training saves
    a checkpoint and stops once that process has died (here a stand-in, killed with SIGKILL)."""
    config, checkpoints = setup_run(tmp_path, tiny_model, save_steps=1000, max_steps=100000)
    controller = subprocess.Popen(["sleep", "600"])
    env = dict(os.environ, KOAML_CONTROLLER_PID=str(controller.pid))
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(train_cmd(tmp_path, tiny_model, config), stdout=log, stderr=subprocess.STDOUT, env=env)
        wait_for_log(proc, tmp_path / "log", "'loss'")
        controller.kill()
        controller.wait()
        assert proc.wait(timeout=60) == 143
    assert (
        f"the workflow process (pid {controller.pid}) that started this job is gone" in (tmp_path / "log").read_text()
    )
    assert list(checkpoints.glob("checkpoint-*"))


def test_sigterm_to_the_launcher_reaches_every_training_process(tmp_path, tiny_model):
    """`koaml train` with num_processes: 2 starts torchrun; SIGTERM to it (not to its process group) reaches the
    workers through torchrun: they checkpoint and stop, and no process is left."""
    config, checkpoints = setup_run(
        tmp_path, tiny_model, "demo_lora.yaml", save_steps=1000, max_steps=100000, num_processes=2
    )
    with open(tmp_path / "log", "w") as log:
        proc = subprocess.Popen(
            train_cmd(tmp_path, tiny_model, config), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_log(proc, tmp_path / "log", "'loss'")
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=120) != 0
    time.sleep(1)
    left = subprocess.run(["pgrep", "-g", str(proc.pid)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes left in the job's group: {left}"
    assert list(checkpoints.glob("checkpoint-*")), "the workers must have saved a checkpoint"


@pytest.mark.parametrize("recipe_name", ["demo_full.yaml", "demo_dpo_lora.yaml"], ids=["sft", "dpo"])
def test_non_finite_loss_stops_with_the_step(tmp_path, tiny_model, recipe_name):
    """A model whose forward pass gives NaN (a damaged checkpoint's weights) stops at the first logged step with a
    NonFiniteLossError, SFT and DPO alike: the fault is injected, not hoped for from a huge learning rate (which
    collapses a DPO model with a finite loss, and a NaN gradient norm only on some CPUs)."""
    from koaml.lifecycle import NonFiniteLossError

    model = poisoned_copy(tiny_model, tmp_path / "poisoned")
    os.chdir(REPO)
    recipe = load_recipe(f"config/recipes/{recipe_name}", {"training": {"max_steps": 40, "logging_steps": 10}})
    with pytest.raises(NonFiniteLossError, match=r"^loss is nan(, grad_norm is nan)? at step 1: lower training"):
        train_here(recipe, model, tmp_path)
    assert not (tmp_path / "trained").exists()


@pytest.mark.parametrize("run", ["tiny-lora", "tiny-qlora"])
def test_merged_model_matches_the_adapter_model(demo_workflow, run):
    """The demo's merge jobs: the merged model computes what the trained adapter on its base computes."""
    import torch
    from peft import PeftModel

    from koaml.merge import load_merge_base
    from koaml.modeling import load_causal_lm
    from koaml.recipe import read_recipe

    folder, base = demo_workflow / "results/runs" / run, str(demo_workflow / "results/base/tiny/model")
    recipe = read_recipe(folder / "config.yaml")
    adapter_model = PeftModel.from_pretrained(load_merge_base(base, recipe), folder / "trained")
    merged = load_causal_lm(str(folder / "merged"), recipe.model)
    untouched = load_merge_base(base, recipe)
    ids = torch.tensor([[1, 40, 41, 42, 43, 44, 45, 46]])
    with torch.no_grad():
        expected, got, before = adapter_model(ids).logits, merged(ids).logits, untouched(ids).logits
    assert (expected - before).abs().max() > 1e-3, "the adapter must have changed the model"
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if recipe.peft.type == "qlora":
        # what training saw: the 4-bit base (bitsandbytes' CPU kernels compute in lower precision)
        trained = PeftModel.from_pretrained(load_causal_lm(base, recipe.model, recipe.peft), folder / "trained")
        with torch.no_grad():
            seen = trained(ids).logits
        assert (seen - got).abs().max() < 0.05 * seen.abs().max()
    card = (folder / "merged/README.md").read_text()
    assert "Fine-tuned with koa-ml" in card and "final eval loss" in card and "lora_r" in card


def test_two_process_data_parallel_training(tmp_path, tiny_model):
    config, _ = setup_run(tmp_path, tiny_model, "demo_lora.yaml", max_steps=10, num_processes=2)
    proc = subprocess.run(train_cmd(tmp_path, tiny_model, config), capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "trained/train_summary.json").read_text())
    assert summary["world_size"] == 2 and summary["global_step"] == 10
    assert (tmp_path / "trained/adapter_model.safetensors").exists()


def test_packed_training_counts_real_tokens_and_tracks_to_local_tensorboard_files(tmp_path, tiny_model):
    os.chdir(REPO)
    training = {"max_steps": 5, "logging_steps": 1, "packing": True, "report_to": ["tensorboard"]}
    recipe = load_recipe("config/recipes/demo_full.yaml", {"training": training, "data": {"max_samples": 400}})
    trained = train_here(recipe, tiny_model, tmp_path)
    summary = json.loads((trained / "train_summary.json").read_text())
    assert summary["global_step"] == 5 and summary["packing"] is True
    # num_tokens counts every packed row of a batch (TRL alone would count one row per mask-less batch)
    history = json.loads((trained / "log_history.json").read_text())
    num_tokens = [e["num_tokens"] for e in history if "num_tokens" in e][-1]
    assert num_tokens > 5 * recipe.model.model_max_length * 8
    assert list((tmp_path / "tracking/tensorboard").rglob("events.out.tfevents.*"))
