"""Checkpoints kept for evaluation (``checkpoint_eval``): the model files of chosen training steps, saved beside
the rolling checkpoints (which ``save_total_limit`` prunes and a finished run deletes) and handed over with the
trained model as ``<trained>/steps/<step>/``."""

from __future__ import annotations

import shutil
from pathlib import Path

STEPS_DIR = "steps"  # in a trained model's folder: one folder per kept step
# What a checkpoint holds besides the model (resuming needs them; evaluating does not).
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "global_step*", "zero_to_fp32.py")


def keeper(steps: list[int], folder: Path):
    """A TrainerCallback that saves a checkpoint at each of ``steps`` (whatever ``save_steps`` is) and copies its
    model files to ``folder/<step>``, where they outlive the rolling checkpoints. A resumed run keeps the steps
    copied before it was stopped."""
    from transformers import TrainerCallback

    wanted = set(steps)

    class Keeper(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step in wanted:
                control.should_save = True

        def on_save(self, args, state, control, **kwargs):
            if state.global_step not in wanted or not state.is_world_process_zero:
                return
            source = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            target = folder / str(state.global_step)
            partial = target.with_name(f".{target.name}.partial")
            shutil.rmtree(partial, ignore_errors=True)
            shutil.copytree(source, partial, ignore=shutil.ignore_patterns(*TRAINING_STATE))
            shutil.rmtree(target, ignore_errors=True)
            partial.rename(target)

    return Keeper()


def hand_over(folder: Path, trained: Path, steps: list[int]) -> None:
    """Move the kept steps into the trained model's folder (``trained/steps/<step>``); every step asked for must
    be there (a step past the end of training is an error naming it)."""
    missing = [step for step in steps if not (folder / str(step)).is_dir()]
    if missing:
        raise SystemExit(
            f"checkpoint_eval: training ended before step {', '.join(map(str, missing))}; evaluate steps up to "
            "the run's last one (training.max_steps, or the steps its epochs make)"
        )
    (trained / STEPS_DIR).mkdir(parents=True, exist_ok=True)
    for step in steps:
        shutil.move(str(folder / str(step)), trained / STEPS_DIR / str(step))
