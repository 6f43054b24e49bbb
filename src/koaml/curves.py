"""Benchmark curves over training (``checkpoint_eval``): each run's scores at its kept steps, with the base model
as step 0 and the finished run as its last step, each with its interval over items (the leaderboard's), and the
step select_checkpoint chose marked. Written to ``results/compare/curves.csv`` and drawn in the report next to the
training and eval losses."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from koaml.io import write_text_atomic
from koaml.leaderboard import model_rows
from koaml.snapshots import not_reached
from koaml.stats import ALPHA

NOT_REACHED_STATUS = "not reached"  # a kept step that training ended before (koaml.snapshots): no scores
COLUMNS = [
    "run", "benchmark", "task", "metric", "filter", "step", "point", "score", "ci_low", "ci_high", "n", "status",
    "selected",
]  # fmt: skip


def curve_rows(points: list[dict], alpha: float = ALPHA) -> pd.DataFrame:
    """One row per (run, step, benchmark, task, metric): ``points`` are {run, step (None: the last, read from the
    training ``summary``), point (base, checkpoint or final), benchmark, folder, selection (the run's
    selection.json, or None)} of evaluation folders; a folder not there yet gives a ``missing`` row, a step that
    training ended before a ``not reached`` one."""
    rows = []
    for p in points:
        folder = p["folder"] if Path(p["folder"]).is_dir() else None
        step = p["step"] if p["step"] is not None else _json(p["summary"]).get("global_step")
        selected = _json(p["selection"]).get("step") if p.get("selection") else None
        if folder is not None and not_reached(folder):
            rows.append({"run": p["run"], "benchmark": p["benchmark"], "step": step, "point": p["point"],
                         "status": NOT_REACHED_STATUS, "selected": False})  # fmt: skip
            continue
        for row in model_rows(p["run"], p["benchmark"], folder, alpha):
            rows.append({**row, "run": p["run"], "step": step, "point": p["point"], "selected": step == selected})
    table = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in table:
            table[column] = None
    return table[COLUMNS].sort_values(["run", "benchmark", "task", "metric", "step"], kind="stable")


def _json(path: str | None) -> dict:
    return json.loads(Path(path).read_text()) if path and Path(path).is_file() else {}


def write_curves(points: list[dict], out_csv: str | Path, alpha: float = ALPHA) -> pd.DataFrame:
    table = curve_rows(points, alpha)
    write_text_atomic(out_csv, table.to_csv(index=False))
    return table
