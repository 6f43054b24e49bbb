"""Benchmark curves over training (``checkpoint_eval``): each run's scores at its kept steps, with the base model
as step 0 and the finished run as its last step, each with its interval over items (the leaderboard's).
Written to ``results/compare/curves.csv`` and drawn in the report next to the training and eval losses."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from koaml.io import write_text_atomic
from koaml.leaderboard import model_rows
from koaml.stats import ALPHA

COLUMNS = ["run", "benchmark", "task", "metric", "filter", "step", "point", "score", "ci_low", "ci_high", "n", "status"]


def curve_rows(points: list[dict], alpha: float = ALPHA) -> pd.DataFrame:
    """One row per (run, step, benchmark, task, metric): ``points`` are {run, step, point (base, checkpoint or
    final), benchmark, folder} of evaluation folders; a folder not there yet gives a ``missing`` row."""
    rows = []
    for p in points:
        folder = p["folder"] if Path(p["folder"]).is_dir() else None
        for row in model_rows(p["run"], p["benchmark"], folder, alpha):
            rows.append({**row, "run": p["run"], "step": p["step"], "point": p["point"]})
    table = pd.DataFrame(rows)
    for column in COLUMNS:
        if column not in table:
            table[column] = None
    return table[COLUMNS].sort_values(["run", "benchmark", "task", "metric", "step"], kind="stable")


def write_curves(points: list[dict], out_csv: str | Path, alpha: float = ALPHA) -> pd.DataFrame:
    table = curve_rows(points, alpha)
    write_text_atomic(out_csv, table.to_csv(index=False))
    return table
