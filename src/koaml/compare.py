"""Base-versus-fine-tuned comparison tables from lm-eval results."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from koaml.evaluate import load_results, metric_rows
from koaml.io import write_text_atomic

COLUMNS = ["run", "base_model", "benchmark", "task", "metric", "filter", "base_score", "score", "delta", "base_stderr", "stderr", "n"]


def scores(result_dir: str | Path) -> pd.DataFrame:
    """One row per (task, metric, filter) of an evaluation folder."""
    return pd.DataFrame(metric_rows(load_results(result_dir)), columns=["task", "metric", "filter", "score", "stderr", "n"])


def summarize(pairs: list[dict]) -> pd.DataFrame:
    """Compare each run with its base.

    ``pairs`` holds one dict per (run, benchmark): ``run``, ``base_model``, ``benchmark``,
    ``run_results`` and ``base_results`` (evaluation folders; ``None`` when the base is not evaluated).
    """
    frames = []
    keys = ["task", "metric", "filter"]
    for pair in pairs:
        run = scores(pair["run_results"])
        base = scores(pair["base_results"]) if pair["base_results"] else pd.DataFrame(columns=keys + ["score", "stderr"])
        base = base[keys + ["score", "stderr"]].rename(columns={"score": "base_score", "stderr": "base_stderr"})
        table = run.merge(base, on=keys, how="left")
        table["delta"] = table["score"] - table["base_score"]
        table.insert(0, "run", pair["run"])
        table.insert(1, "base_model", pair["base_model"])
        table.insert(2, "benchmark", pair["benchmark"])
        frames.append(table)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    return pd.concat(frames, ignore_index=True)[COLUMNS]


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table (scores as percentages)."""
    shown = table.copy()
    for col in ("base_score", "score", "base_stderr", "stderr"):
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}")
    shown["delta"] = shown["delta"].map(lambda v: "" if pd.isna(v) else f"{100 * v:+.1f}")
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in shown.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def write_summary(pairs: list[dict], csv_path: str | Path, md_path: str | Path) -> pd.DataFrame:
    table = summarize(pairs)
    write_text_atomic(csv_path, table.to_csv(index=False))
    note = "Scores and stderr in percent; delta = fine-tuned minus base, in points.\n\n"
    write_text_atomic(md_path, "# Base vs fine-tuned\n\n" + note + to_markdown(table))
    return table
