"""Checkpoints kept for evaluation (``checkpoint_eval``): the model files of chosen training steps, saved beside
the rolling checkpoints (which ``save_total_limit`` prunes and a finished run deletes) and handed over with the
trained model as ``<trained>/steps/<step>/``.

A step past the end of training (a run of epochs makes fewer steps than planned; with ``max_steps`` the config
check refuses it) is handed over as a folder holding only ``not_reached.json``: the trained model is kept, and what
is made of that step (its merge, its evaluations) is the same marker, which the curves and select_checkpoint skip.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from koaml.io import atomic_dir, write_json

log = logging.getLogger(__name__)

STEPS_DIR = "steps"  # in a trained model's folder: one folder per kept step
NOT_REACHED = "not_reached.json"  # a kept step's folder (and its merge, its evaluations) when training ended before it
# What a checkpoint holds besides the model (resuming needs them; evaluating does not).
TRAINING_STATE = ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state*.pth", "global_step*", "zero_to_fp32.py")


def keeper(steps: list[int], folder: Path):
    """A TrainerCallback that saves a checkpoint at each of ``steps`` (whatever ``save_steps`` is) and copies its
    model files to ``folder/<step>``, where they outlive the rolling checkpoints. A resumed run keeps the steps
    copied before it was stopped; one asked for since (checkpoint_eval edited) but already passed is an error
    before training goes on."""
    from transformers import TrainerCallback

    wanted = set(steps)

    class Keeper(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            passed = sorted(s for s in wanted if s <= state.global_step and not (folder / str(s)).is_dir())
            if passed:
                raise SystemExit(
                    f"checkpoint_eval: step {', '.join(map(str, passed))} was passed before this run resumed at step "
                    f"{state.global_step} (its checkpoint_eval changed since it started), so it cannot be kept; "
                    f"delete {Path(args.output_dir)} to train again from the start and keep it, or drop it from steps"
                )

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


def hand_over(folder: Path, trained: Path, steps: list[int], last_step: int) -> None:
    """Move the kept steps into the trained model's folder (``trained/steps/<step>``). A step after ``last_step``
    (training ended before it) becomes a folder holding only ``not_reached.json``, with a warning."""
    missing = [step for step in steps if step <= last_step and not (folder / str(step)).is_dir()]
    if missing:  # the keeper saves every step it passes
        raise SystemExit(f"checkpoint_eval: step {', '.join(map(str, missing))} was passed but not kept")
    (trained / STEPS_DIR).mkdir(parents=True, exist_ok=True)
    unreached = [step for step in steps if step > last_step]
    for step in steps:
        target = trained / STEPS_DIR / str(step)
        if step in unreached:
            target.mkdir()
            write_json(target / NOT_REACHED, {"step": step, "last_step": last_step})
        else:
            shutil.move(str(folder / str(step)), target)
    if unreached:
        log.warning(
            "checkpoint_eval: training ended at step %d, before step %s: the trained model is kept and the "
            "evaluation of %s is skipped (it needs no edit: editing checkpoint_eval's steps trains the run again)",
            last_step, ", ".join(map(str, unreached)), "that step" if len(unreached) == 1 else "those steps",
        )  # fmt: skip


def not_reached(folder: str | Path) -> dict | None:
    """What ``not_reached.json`` in ``folder`` says ({step, last_step}): the folder stands for a step training
    ended before; None for any other folder."""
    marker = Path(folder) / NOT_REACHED
    return json.loads(marker.read_text()) if marker.is_file() else None


def pass_on_not_reached(source: str | Path, out_dir: str | Path) -> bool:
    """When ``source`` stands for a step training ended before, make ``out_dir`` (a merge or an evaluation of that
    step) stand for it too, log why, and return True: there is nothing to merge or evaluate."""
    marker = not_reached(source)
    if marker is None:
        return False
    log.warning(
        "%s: training ended at step %s, before step %s: nothing to do", source, marker["last_step"], marker["step"]
    )
    with atomic_dir(out_dir) as tmp:
        write_json(tmp / NOT_REACHED, marker)
    return True
