"""Choosing a run's checkpoint (``select_checkpoint``): each candidate step (the kept steps and the last) scored on
the validation benchmark, the best one's model put in ``results/runs/<run>/selected`` (linked, or merged again from
its kept adapter), with ``selection.json`` saying which step was chosen and why."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

from koaml.experiment import FINAL_STEP, Objective
from koaml.io import write_text_atomic
from koaml.search import benchmark_score
from koaml.snapshots import not_reached

SELECTION_FILE = "selection.json"


def choose(objective: Objective, scores: dict[int, float]) -> int:
    """The step with the best finite score (ties: the earliest, the least trained)."""
    finite = {step: score for step, score in scores.items() if score is not None and math.isfinite(score)}
    if not finite:
        raise SystemExit(f"select_checkpoint: no step has a finite {objective.label}: {scores}")
    sign = 1 if objective.direction == "maximize" else -1
    return min(finite, key=lambda step: (-sign * finite[step], step))


def select(objective: Objective, candidates: list[dict], train_summary: str | Path, out_dir: str | Path,
           reported: bool, merge_with: tuple[str, str] | None = None) -> dict:  # fmt: skip
    """Score each candidate ({step (a number, or ``final``), evaluation, model (a folder to link; None for a kept
    LoRA step, merged again from its adapter with ``merge_with``: (recipe, base))}, adapter}), put the best one's
    model files in ``out_dir`` with ``selection.json``; ``reported``: the validation benchmark is also a reported
    one (the choice then inflates its score there)."""
    last = json.loads(Path(train_summary).read_text())["global_step"]
    by_step = {last if c["step"] == FINAL_STEP else int(c["step"]): c for c in candidates}
    unreached = sorted(step for step, c in by_step.items() if not_reached(c["evaluation"]))
    by_step = {step: c for step, c in by_step.items() if step not in unreached}
    scores = {step: benchmark_score(objective, c["evaluation"]) for step, c in by_step.items()}
    best = choose(objective, scores)
    chosen = by_step[best]
    listed = ", ".join(f"{step}: {score:.4g}" for step, score in sorted(scores.items()))
    record = {
        "step": best,
        "last_step": last,
        "adapter": chosen["adapter"],
        "chosen_by": objective.label,
        "direction": objective.direction,
        "scores": {str(step): score for step, score in sorted(scores.items())},
        "biased": reported,
        "why": f"step {best} has the {'highest' if objective.direction == 'maximize' else 'lowest'} "
        f"{objective.label} of the {len(scores)} steps evaluated ({listed})"
        + (f"; training ended before step {', '.join(map(str, unreached))}" if unreached else "")
        + (
            "; the benchmark is also reported, so its reported score is inflated (selection bias)"
            if reported
            else "; the benchmark is a validation benchmark, so choosing by it does not inflate the reported ones"
        ),
    }
    out = Path(out_dir)
    partial = out.with_name(f".{out.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    if chosen["model"] is None:  # a kept LoRA step: merged evaluation copies are deleted once evaluated
        from koaml.merge import merge

        merge(merge_with[0], merge_with[1], chosen["adapter"], str(partial))
    else:
        shutil.copytree(chosen["model"], partial, copy_function=_link_or_copy)
    write_text_atomic(partial / SELECTION_FILE, json.dumps(record, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)
    return record


def chosen_adapter(folder: str | None) -> str | None:
    """The LoRA adapter to evaluate for ``folder``: the adapter of the step a run's selected model is
    (``selection.json``, written by :func:`select`), else ``folder`` itself."""
    record = Path(folder or "") / SELECTION_FILE
    return json.loads(record.read_text())["adapter"] if folder and record.is_file() else folder


def _link_or_copy(source: str, target: str) -> None:
    """A hard link (no extra disk), else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copy2(source, target)
