"""Every evaluated model's own scores, with confidence intervals over items, ranked: the leaderboard.

A score's interval is the percentile bootstrap of the mean over the benchmark's items (lm-eval's per-sample
logs); without them, score +- z x lm-eval's stderr. Within a benchmark/task/metric, a model's rank is 1 plus the
number of models whose interval lies wholly above its own: models whose intervals overlap share a rank, so a
rank says what the items can tell apart, not the order of point estimates.
"""

from __future__ import annotations

import json
from pathlib import Path
from statistics import NormalDist

import numpy as np
import pandas as pd

from koaml.compare import KEYS, problem, sample_scores, scores
from koaml.io import write_text_atomic
from koaml.stats import ALPHA, bootstrap_ci

COLUMNS = ["model", "benchmark", *KEYS, "score", "ci_low", "ci_high", "ci", "n", "rank", "protocol", "status"]
CI_FROM = {"bootstrap": "bootstrap over items", "stderr": "normal, from lm-eval's stderr"}


def protocol_text(folder: str | Path | None, task: str) -> str:
    """The settings a task's number comes from, in a few words (the evaluation's ``protocol.json``)."""
    path = Path(folder) / "protocol.json" if folder else None
    if path is None or not path.is_file():
        return ""
    p = json.loads(path.read_text()).get(task)
    if not p:
        return ""
    shots = f"{p.get('num_fewshot') or 0}-shot"
    gen = p.get("generation_kwargs")
    how = "log-likelihood" if not gen else ", ".join(f"{k}={v}" for k, v in gen.items() if k != "until")
    chat = ", chat template" if p.get("apply_chat_template") else ""
    return f"{shots}, {how}{chat}"


def model_rows(model: str, benchmark: str, folder: str | Path | None, alpha: float = ALPHA) -> list[dict]:
    """One row per task/metric/filter of one model's evaluation on one benchmark: its score and interval."""
    if folder is not None and (why := problem(folder)):
        return [{"model": model, "benchmark": benchmark, "status": "damaged", "protocol": why}]
    table = scores(folder)
    if table.empty:
        return [{"model": model, "benchmark": benchmark, "status": "missing"}]
    rows = []
    for r in table.itertuples(index=False):
        values = np.array(list(sample_scores(folder, r.task, r.metric, r.filter).values()))
        if len(values):
            (low, high), ci, n = bootstrap_ci(values, alpha=alpha), "bootstrap", len(values)
        elif pd.notna(r.stderr):
            z = NormalDist().inv_cdf(1 - alpha / 2)
            low, high, ci, n = r.score - z * r.stderr, r.score + z * r.stderr, "stderr", r.n
        else:
            low = high = ci = None
            n = r.n
        rows.append(
            {"model": model, "benchmark": benchmark, "task": r.task, "metric": r.metric, "filter": r.filter,
             "score": r.score, "ci_low": low, "ci_high": high, "ci": ci, "n": n,
             "protocol": protocol_text(folder, r.task), "status": "ok"}
        )  # fmt: skip
    return rows


def scores_text(model: str, benchmark: str, folder: str | Path, alpha: float = ALPHA) -> str:
    """One evaluation's scores as the table ``koaml evaluate`` prints when it finishes (lm-eval prints one too):
    each task's metric and filter, its value with the (1 - alpha) interval over items, n and the protocol."""
    rows = model_rows(model, benchmark, folder, alpha)
    if rows[0]["status"] != "ok":
        return f"{model} on {benchmark}: {rows[0]['status']} {rows[0].get('protocol') or ''}".rstrip() + "\n"
    level = f"{100 * (1 - alpha):g}% CI"
    frame = pd.DataFrame(
        {
            "task": [r["task"] for r in rows],
            "metric": [r["metric"] if r["filter"] == "none" else f"{r['metric']} ({r['filter']})" for r in rows],
            "value": [f"{r['score']:.4f}" for r in rows],
            level: ["" if r["ci_low"] is None else f"[{r['ci_low']:.4f}, {r['ci_high']:.4f}]" for r in rows],
            "n": [_number(r["n"], "{:.0f}") for r in rows],
            "protocol": [r["protocol"] for r in rows],
        }
    )
    return f"{model} on {benchmark} ({folder}):\n" + "\n".join(_markdown_table(frame)) + "\n"


def rank(table: pd.DataFrame) -> pd.Series:
    """1 + the number of models of the same benchmark/task/metric/filter whose interval lies wholly above this
    one's (overlapping intervals share a rank); empty where there is no interval."""
    ranks = pd.Series([None] * len(table), index=table.index, dtype=object)
    keyed = table[table.ci_low.notna()]
    for _, group in keyed.groupby(["benchmark", *KEYS], sort=False, dropna=False):
        for i, row in group.iterrows():
            ranks[i] = 1 + int((group.ci_low > row.ci_high).sum())
    return ranks


def leaderboard(evaluations: dict[str, dict[str, str]], alpha: float = ALPHA) -> pd.DataFrame:
    """The long table of every model's scores: ``evaluations`` maps model -> benchmark -> evaluation folder."""
    rows = [
        row
        for model, by_bench in evaluations.items()
        for bench, folder in by_bench.items()
        for row in model_rows(model, bench, folder, alpha)
    ]
    table = pd.DataFrame(rows).reindex(columns=COLUMNS)
    table["rank"] = rank(table)
    return table


def column_name(row) -> str:
    """A matrix column: benchmark / task metric (filter); the task is left out where it is the benchmark's name."""
    plain = row["filter"] == "none" or pd.isna(row["filter"])
    metric = row.metric if plain else f"{row.metric} ({row['filter']})"
    return f"{row.benchmark} {metric}" if row.task == row.benchmark else f"{row.benchmark} / {row.task} {metric}"


def _finished(table: pd.DataFrame) -> pd.DataFrame:
    """The rows with a score (none of an empty table), each with its matrix column and a numeric rank."""
    if table.empty:
        return pd.DataFrame(columns=[*COLUMNS, "column"])
    ok = table[table.status == "ok"].copy()
    ok["column"] = [column_name(r) for _, r in ok.iterrows()]
    ok["rank"] = pd.to_numeric(ok["rank"])
    return ok


def matrix(table: pd.DataFrame) -> pd.DataFrame:
    """Models as rows (best mean rank first), one column per benchmark/task/metric: the scores (0-1)."""
    ok = _finished(table)
    if ok.empty:
        return pd.DataFrame()
    wide = ok.pivot_table(index="model", columns="column", values="score", sort=False)
    order = pd.DataFrame(
        {"rank": ok.groupby("model")["rank"].mean(), "score": -ok.groupby("model")["score"].mean()}
    ).reindex(wide.index)
    return wide.loc[order.sort_values(["rank", "score"], kind="stable").index]


def shown_matrix(table: pd.DataFrame) -> pd.DataFrame:
    """The matrix as text: the mean rank, then each cell's score and interval in percent."""
    ok, wide = _finished(table), matrix(table)
    if wide.empty:
        return pd.DataFrame()
    cells = {(r.model, r.column): _cell(r.score, r.ci_low, r.ci_high) for r in ok.itertuples(index=False)}
    mean_rank = ok.groupby("model")["rank"].mean()
    shown = pd.DataFrame(
        {c: [cells.get((m, c), "") for m in wide.index] for c in wide.columns}, index=wide.index.rename("model")
    )
    shown.insert(0, "mean rank", [_number(mean_rank.get(m), "{:.1f}") for m in wide.index])
    return shown.reset_index()


def shown_scores(table: pd.DataFrame) -> pd.DataFrame:
    """The long table as text: scores and intervals in percent."""
    return pd.DataFrame(
        {
            "model": table.model,
            "benchmark": table.benchmark,
            "task": table.task.fillna(""),
            "metric": [
                "" if pd.isna(m) else (m if f == "none" else f"{m} ({f})")
                for m, f in zip(table.metric, table["filter"], strict=True)
            ],
            "score": table.score.map(lambda v: _number(v, "{:.1f}", 100)),
            "CI": [
                "" if pd.isna(lo) else f"[{100 * lo:.1f}, {100 * hi:.1f}]"
                for lo, hi in zip(table.ci_low, table.ci_high, strict=True)
            ],
            "n": table.n.map(lambda v: _number(v, "{:.0f}")),
            "rank": pd.to_numeric(table["rank"]).map(lambda v: _number(v, "{:.0f}")),
            "protocol": table.protocol.fillna(""),
            "status": table.status,
        }
    )


def _number(value, fmt: str, scale: float = 1) -> str:
    return "" if value is None or pd.isna(value) else fmt.format(scale * value)


def _cell(score, low, high) -> str:
    if pd.isna(score):
        return ""
    interval = "" if pd.isna(low) else f" [{100 * low:.1f}, {100 * high:.1f}]"
    return f"{100 * score:.1f}{interval}"


def note(alpha: float = ALPHA) -> str:
    """How the leaderboard's intervals and ranks are made."""
    return (
        f"Scores in percent, with the {100 * (1 - alpha):g}% interval over items (a bootstrap of the per-item scores; "
        "normal, from lm-eval's stderr, where there are no per-item logs). Rank: 1 + the number of models whose "
        "interval lies wholly above this one's, within the same benchmark, task and metric; models whose intervals "
        "overlap share a rank. Models are ordered by their mean rank, then their mean score."
    )


def _markdown_table(frame: pd.DataFrame) -> list[str]:
    return [
        "| " + " | ".join(frame.columns) + " |",
        "|" + "---|" * len(frame.columns),
        *("| " + " | ".join(str(v) for v in row) + " |" for row in frame.itertuples(index=False)),
    ]


def to_markdown(table: pd.DataFrame, alpha: float = ALPHA) -> str:
    """The leaderboard matrix (score and interval per cell, the mean rank per model), then every score."""
    wide = shown_matrix(table)
    out = [note(alpha), ""]
    out += [*_markdown_table(wide), ""] if not wide.empty else ["No model has finished evaluating.", ""]
    out += ["## Every score", "", *_markdown_table(shown_scores(table))]
    return "\n".join(out) + "\n"


def write_leaderboard(
    evaluations: dict[str, dict[str, str]], csv_path: str | Path, md_path: str | Path, alpha: float = ALPHA
) -> pd.DataFrame:
    """Write the long table (CSV) and the leaderboard (Markdown: the matrix, then every score)."""
    table = leaderboard(evaluations, alpha)
    write_text_atomic(csv_path, table.to_csv(index=False))
    write_text_atomic(md_path, "# Scores and leaderboard\n\n" + to_markdown(table, alpha))
    return table
