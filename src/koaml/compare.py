"""Base-versus-fine-tuned comparison tables from lm-eval results, with paired statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from koaml.evaluate import metric_rows
from koaml.integrity import damage
from koaml.io import write_text_atomic
from koaml.stats import paired

KEYS = ["task", "metric", "filter"]
COLUMNS = [
    "run", "base_model", "benchmark", "task", "metric", "filter", "base_score", "score", "delta",
    "ci_low", "ci_high", "p_value", "test", "significant", "base_stderr", "stderr", "n", "status", "reason", "complete",
]  # fmt: skip


def results_file(location: str | Path) -> Path | None:
    """The results JSON of an evaluation: ours (``results.json``) or lm-eval's (newest ``results_*.json``)."""
    location = Path(location)
    if location.is_file():
        return location
    if (location / "results.json").is_file():
        return location / "results.json"
    found = sorted(location.rglob("results*.json"), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def sample_scores(location: str | Path, task: str, metric: str, filter_name: str) -> dict[int, float]:
    """Per-document scores of one task/metric/filter from lm-eval's per-sample logs (doc_id -> score)."""
    location = Path(location)
    folder = location.parent if location.is_file() else location
    files = sorted(folder.rglob(f"samples_{task}.jsonl")) or sorted(folder.rglob(f"samples_{task}_*.jsonl"))
    out = {}
    for path in files[-1:]:
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("filter", "none") == filter_name and isinstance(row.get(metric), (int, float)):
                out[row["doc_id"]] = float(row[metric])
    return out


def scores(location: str | Path | None) -> pd.DataFrame:
    """One row per (task, metric, filter) of an evaluation; empty when it is missing."""
    path = results_file(location) if location else None
    rows = metric_rows(json.loads(path.read_text())) if path else []
    return pd.DataFrame(rows, columns=[*KEYS, "score", "stderr", "n"])


def problem(location: str | Path | None) -> str | None:
    """Why an evaluation's results cannot be used (``<file>: what is wrong``), or None: files changed or
    deleted since the evaluation wrote them (``koaml.integrity``), or results that are not valid JSON."""
    if location is None:
        return None
    if why := damage(location, thorough=True):
        return f"{location}: {why}"
    path = results_file(location)
    try:
        if path is not None:
            json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        return f"{path}: not valid JSON ({exc})"
    return None


def _paired_columns(row, run_location, base_location) -> dict:
    if base_location is None or pd.isna(row.base_score) or pd.isna(row.score):
        return {}
    base = sample_scores(base_location, row.task, row.metric, row["filter"])
    tuned = sample_scores(run_location, row.task, row.metric, row["filter"])
    docs = sorted(set(base) & set(tuned))
    if not docs:
        return {}
    result = paired([base[d] for d in docs], [tuned[d] for d in docs])
    return {
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "p_value": result.p_value,
        "test": result.test,
        "significant": result.significant,
    }


def compare(
    run_location, base_location, run: str = "fine-tuned", base_model: str = "base", benchmark: str = ""
) -> pd.DataFrame:
    """Rows comparing one evaluation with its base's on the same benchmark. Statistics come only from two
    intact evaluations; a damaged one is shown as ``damaged``, with what is wrong, and not used."""
    run_problem, base_problem = problem(run_location), problem(base_location)
    problems = [why for why in (run_problem, base_problem) if why]
    run_location = None if run_problem else run_location
    base_location = None if base_problem else base_location
    tuned = scores(run_location)
    base = scores(base_location)[[*KEYS, "score", "stderr"]].rename(
        columns={"score": "base_score", "stderr": "base_stderr"}
    )
    table = tuned.merge(base, on=KEYS, how="left")
    base_only = base.merge(tuned[KEYS], on=KEYS, how="left", indicator=True).query("_merge == 'left_only'")
    table = pd.concat([table, base_only.drop(columns="_merge")], ignore_index=True)  # lm-eval order, then gaps
    if table.empty:  # the evaluation is missing: keep a row that says so
        table = pd.DataFrame([{k: None for k in KEYS}])
    table["delta"] = table["score"] - table["base_score"]
    stats = [_paired_columns(row, run_location, base_location) for _, row in table.iterrows()]
    table = pd.concat([table.reset_index(drop=True), pd.DataFrame(stats, index=table.index)], axis=1)
    table["status"] = [
        "damaged"
        if problems
        else ("missing" if pd.isna(row.score) else ("no base" if pd.isna(row.base_score) else "ok"))
        for _, row in table.iterrows()
    ]
    table["reason"] = "; ".join(problems) or None
    table["run"], table["base_model"], table["benchmark"], table["complete"] = run, base_model, benchmark, True
    return table.reindex(columns=COLUMNS)


def summarize(pairs: list[dict]) -> pd.DataFrame:
    """Compare each run with its base.

    ``pairs`` holds one dict per (run, benchmark): ``run``, ``base_model``, ``benchmark``,
    ``run_results`` and ``base_results`` (evaluation folders; ``None`` when the base is not evaluated).
    """
    frames = [compare(p["run_results"], p["base_results"], p["run"], p["base_model"], p["benchmark"]) for p in pairs]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=COLUMNS)


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table: scores and CIs in percent, delta in points."""
    shown = pd.DataFrame(
        {
            "run": table.run,
            "base model": table.base_model,
            "benchmark": table.benchmark,
            "task": table.task,
            "metric": [m if f == "none" else f"{m} ({f})" for m, f in zip(table.metric, table["filter"], strict=True)],
            "base": table.base_score.map(_pct),
            "score": table.score.map(_pct),
            "delta": table.delta.map(lambda v: "" if pd.isna(v) else f"{100 * v:+.1f}"),
            "95% CI": [
                "" if pd.isna(lo) else f"[{100 * lo:+.1f}, {100 * hi:+.1f}]"
                for lo, hi in zip(table.ci_low, table.ci_high, strict=True)
            ],
            "p": table.p_value.map(lambda v: "" if pd.isna(v) else f"{v:.3g}"),
            "sig.": table.significant.map(lambda v: "yes" if v is True else ("no" if v is False else "")),
            "n": table.n.map(lambda v: "" if pd.isna(v) else str(int(v))),
            "status": table.status,
            "reason": table.reason.fillna(""),
        }
    )
    if not (shown.reason != "").any():
        shown = shown.drop(columns="reason")
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = [
        "| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in shown.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body]) + "\n"


def _pct(value) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}"


NOTE = (
    "Scores in percent; delta = fine-tuned minus base, in points. 95% CI: paired bootstrap over the "
    "same items; p: McNemar's exact test (0/1 scores) or a paired permutation test; sig.: p < 0.05.\n\n"
)


def write_summary(pairs: list[dict], csv_path: str | Path, md_path: str | Path) -> pd.DataFrame:
    table = summarize(pairs)
    write_text_atomic(csv_path, table.to_csv(index=False))
    write_text_atomic(md_path, "# Base vs fine-tuned\n\n" + NOTE + to_markdown(table))
    return table


def partial_banner(table: pd.DataFrame) -> str:
    missing = int((table.status.isin(["failed", "pending"])).sum())
    return (
        f"PARTIAL RESULTS: {missing} of {len(table)} rows are not finished (failed or pending, see status and reason). "
        "The final table is results/compare/summary.csv, written when every job has finished; rerun snakemake."
    )


def write_partial(
    pairs: list[dict], reasons: dict[str, tuple[str, str]], csv_path: str | Path, md_path: str | Path
) -> pd.DataFrame:
    """The summary of what has finished while other jobs failed or never ran: rows of missing evaluations get
    ``failed`` or ``pending`` and a reason (``reasons``: evaluation folder -> (status, reason)), every row
    ``complete`` False, and the Markdown a banner: it is never mistaken for the final table."""
    table = summarize(pairs)
    table["reason"] = table["reason"].astype(object)
    for pair in pairs:
        folders = [pair["run_results"], pair["base_results"]]
        why = next((reasons[f] for f in folders if f in reasons), None)
        rows = (
            (table.run == pair["run"])
            & (table.base_model == pair["base_model"])
            & (table.benchmark == pair["benchmark"])
        )
        if why and (table.loc[rows, "status"] != "ok").any():
            table.loc[rows & (table.status != "ok"), ["status", "reason"]] = why
    table["complete"] = False
    write_text_atomic(csv_path, table.to_csv(index=False))
    write_text_atomic(
        md_path, f"# Base vs fine-tuned (partial)\n\n**{partial_banner(table)}**\n\n" + NOTE + to_markdown(table)
    )
    return table
