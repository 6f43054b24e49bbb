"""Base-versus-fine-tuned comparison tables from lm-eval results, with paired statistics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd

from koaml.integrity import damage
from koaml.io import write_text_atomic
from koaml.results import metric_rows, results_file
from koaml.stats import ALPHA, POWER, adjust_p_values, paired, replicated

KEYS = ["task", "metric", "filter"]
COLUMNS = [
    "run", "base_model", "benchmark", "task", "metric", "filter", "base_score", "score", "delta",
    "ci_low", "ci_high", "p_value", "p_adjusted", "test", "significant", "mde", "underpowered",
    "base_stderr", "stderr", "n", "seeds", "seed_sd", "seed_deltas", "train_hours", "gpu_hours",
    "replicate_of", "chosen_on", "status", "reason", "complete",
]  # fmt: skip
TWO_LEVEL = "two-level bootstrap"  # the test of a replicate group's row
# The experiment's `statistics` section when none is given (the schema holds the same defaults).
DEFAULT_STATISTICS = {"correction": "bh", "alpha": ALPHA, "power": POWER}


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


def _paired_columns(row, run_location, base_location, statistics: dict) -> dict:
    if base_location is None or pd.isna(row.base_score) or pd.isna(row.score):
        return {}
    base = sample_scores(base_location, row.task, row.metric, row["filter"])
    tuned = sample_scores(run_location, row.task, row.metric, row["filter"])
    docs = sorted(set(base) & set(tuned))
    if not docs:
        return {}
    result = paired(
        [base[d] for d in docs], [tuned[d] for d in docs], alpha=statistics["alpha"], power=statistics["power"]
    )
    return {
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "p_value": result.p_value,
        "test": result.test,
        "mde": result.mde,
    }


def training_cost(train_summary: str | Path | None) -> dict:
    """Hours of training (wall clock) and GPU-hours of a run, from its ``train_summary.json``."""
    path = Path(train_summary) if train_summary else None
    if path is None or not path.is_file():
        return {}
    summary = json.loads(path.read_text())
    wall = summary.get("wall_time_s")
    return {"train_hours": None if wall is None else wall / 3600, "gpu_hours": summary.get("gpu_hours")}


def compare(
    run_location,
    base_location,
    run: str = "fine-tuned",
    base_model: str = "base",
    benchmark: str = "",
    statistics: dict | None = None,
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
    statistics = statistics or DEFAULT_STATISTICS
    stats = [_paired_columns(row, run_location, base_location, statistics) for _, row in table.iterrows()]
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


def summarize(pairs: list[dict], statistics: dict | None = None) -> pd.DataFrame:
    """Compare each run with its base, add a row per group of seed replicates, then decide significance
    across the whole table.

    ``pairs`` holds one dict per (run, benchmark): ``run``, ``base_model``, ``benchmark``,
    ``run_results`` and ``base_results`` (evaluation folders; ``None`` when the base is not evaluated),
    ``train_summary`` (the run's ``train_summary.json``, for its cost; None for models not trained here), and for
    seed replicates ``replicate_of`` (the group) and ``base_group`` (the reference's group, or the reference);
    ``chosen_on``: the task of this benchmark the model was chosen by (a search's objective, a select_checkpoint),
    whose rows are then marked: their score is inflated by the choice.
    ``statistics``: the experiment's ``correction``, ``alpha`` and ``power``.
    """
    statistics = statistics or DEFAULT_STATISTICS
    frames, groups = [], {}
    for p in pairs:
        frame = compare(p["run_results"], p["base_results"], p["run"], p["base_model"], p["benchmark"], statistics)
        for column, value in training_cost(p.get("train_summary")).items():
            frame[column] = value
        frame["replicate_of"] = p.get("replicate_of")
        frame["chosen_on"] = frame.task == p["chosen_on"] if p.get("chosen_on") else False
        frames.append(frame)
        if p.get("replicate_of"):
            groups.setdefault((p["replicate_of"], p.get("base_group") or p["base_model"], p["benchmark"]), []).append(p)
    if not frames:
        return pd.DataFrame(columns=COLUMNS)
    table = pd.concat(frames, ignore_index=True)
    rows = [row for key, members in groups.items() for row in replicate_rows(key, members, table, statistics)]
    if rows:
        table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    return decide(table, statistics)


def replicate_rows(key: tuple[str, str, str], members: list[dict], table: pd.DataFrame, statistics: dict) -> list:
    """One row per task/metric/filter of a replicate group on a benchmark: the mean of the seeds' scores and
    deltas, the two-level bootstrap interval and p-value (seeds x items), the seeds' standard deviation and
    each seed's delta, and the summed training cost."""
    group, base_group, benchmark = key
    seeds = table[(table.replicate_of == group) & (table.benchmark == benchmark)]
    rows = []
    for (task, metric, filter_name), sub in seeds.groupby(KEYS, sort=False, dropna=False):
        row = {"run": group, "base_model": base_group, "benchmark": benchmark, "task": task, "metric": metric,
               "filter": filter_name, "seeds": len(sub), "complete": True,
               "chosen_on": bool(sub.chosen_on.any())}  # fmt: skip
        if (sub.status != "ok").any():
            bad = sub[sub.status != "ok"]
            row.update(status=bad.status.iloc[0], reason=f"{', '.join(bad.run)}: {bad.status.iloc[0]}")
            rows.append(row)
            continue
        diffs = []
        for member in members:
            base = sample_scores(member["base_results"], task, metric, filter_name)
            tuned = sample_scores(member["run_results"], task, metric, filter_name)
            docs = sorted(set(base) & set(tuned))
            diffs.append([tuned[d] - base[d] for d in docs])
        row.update(
            base_score=sub.base_score.mean(),
            score=sub.score.mean(),
            delta=sub.delta.mean(),
            seed_sd=sub.delta.std(ddof=1),
            seed_deltas=" ".join(f"{d:+.4f}" for d in sub.delta),
            train_hours=sub.train_hours.sum(min_count=1),
            gpu_hours=sub.gpu_hours.sum(min_count=1),
            n=sub.n.min(),
            status="ok",
        )
        if diffs and len({len(d) for d in diffs}) == 1 and diffs[0]:
            result = replicated(np.array(diffs), alpha=statistics["alpha"], power=statistics["power"])
            row.update(ci_low=result.ci_low, ci_high=result.ci_high, p_value=result.p_value, mde=result.mde,
                       test=TWO_LEVEL)  # fmt: skip
        rows.append(row)
    return rows


def decide(table: pd.DataFrame, statistics: dict) -> pd.DataFrame:
    """``p_adjusted`` over every tested row of the table (the experiment's correction), ``significant`` from it,
    and ``underpowered``: not significant, with an observed delta smaller than the minimum detectable effect.
    The rows of single seed replicates are not tested: their group's row is."""
    table = table.copy()
    single_seed = table.replicate_of.notna() if "replicate_of" in table else pd.Series(False, index=table.index)
    table["p_adjusted"] = adjust_p_values(table.p_value.astype(float).where(~single_seed), statistics["correction"])
    tested = table.p_adjusted.notna()
    table["significant"] = [
        bool(p < statistics["alpha"]) if t else None for p, t in zip(table.p_adjusted, tested, strict=True)
    ]
    table["underpowered"] = [
        bool(not sig and abs(delta) < mde) if t else None
        for sig, delta, mde, t in zip(table.significant, table.delta, table.mde.astype(float), tested, strict=True)
    ]
    return table.reindex(columns=COLUMNS)


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
            "p": table.p_value.map(_p),
            "p adj.": table.p_adjusted.map(_p),
            "sig.": table.significant.map(_yes_no),
            "MDE": table.mde.map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}"),
            "underpowered": table.underpowered.map(lambda v: "yes" if v is True else ""),
            "n": table.n.map(lambda v: "" if pd.isna(v) else str(int(v))),
            "seeds": table.seeds.map(lambda v: "" if pd.isna(v) else str(int(v))),
            "seed SD": table.seed_sd.map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}"),
            "train h": table.train_hours.map(lambda v: "" if pd.isna(v) else f"{v:.2f}"),
            "GPU-h": table.gpu_hours.map(lambda v: "" if pd.isna(v) else f"{v:.2f}"),
            "chosen on": table.chosen_on.map(lambda v: "yes (biased)" if v is True else ""),
            "status": table.status,
            "reason": table.reason.fillna(""),
        }
    )
    if not (shown.reason != "").any():
        shown = shown.drop(columns="reason")
    if not (shown["chosen on"] != "").any():
        shown = shown.drop(columns="chosen on")
    if not (shown.seeds != "").any():
        shown = shown.drop(columns=["seeds", "seed SD"])
    header = "| " + " | ".join(shown.columns) + " |"
    rule = "|" + "|".join("---" for _ in shown.columns) + "|"
    body = [
        "| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in shown.itertuples(index=False)
    ]
    return "\n".join([header, rule, *body]) + "\n"


def _pct(value) -> str:
    return "" if pd.isna(value) else f"{100 * value:.1f}"


def _p(value) -> str:
    return "" if pd.isna(value) else f"{value:.3g}"


def _yes_no(value) -> str:
    return "yes" if value is True else ("no" if value is False else "")


CORRECTION_NAMES = {"bh": "Benjamini-Hochberg (false discovery rate)", "holm": "Holm (family-wise error)"}


def note(table: pd.DataFrame, statistics: dict | None = None) -> str:
    """What the columns mean, with this table's correction, number of tests, alpha and power."""
    statistics = statistics or DEFAULT_STATISTICS
    alpha, power, correction = statistics["alpha"], statistics["power"], statistics["correction"]
    tests = int(table.p_adjusted.notna().sum()) if "p_adjusted" in table else 0
    adjusted = (
        f"p adj.: adjusted for the {tests} tests of this table ({CORRECTION_NAMES[correction]}); "
        if correction != "none"
        else f"p adj.: not adjusted (correction: none) for the {tests} tests of this table; "
    )
    return (
        f"Scores in percent; delta = fine-tuned minus base, in points. {100 * (1 - alpha):g}% CI: paired bootstrap "
        "over the same items; p: McNemar's exact test (0/1 scores) or a paired permutation test; "
        f"{adjusted}sig.: p adj. < {alpha:g}. MDE: the smallest true delta these items detect with "
        f"{100 * power:g}% power (underpowered: not significant and |delta| < MDE, so a real effect of this size "
        "would likely be missed: evaluate more items). Cost: hours of the run's training, and GPU-hours. Seed "
        "replicates: a row per replicate (not tested) and one for the group: the mean delta, a two-level bootstrap "
        "(seeds x items) interval and p-value, the seeds' standard deviation (seed SD, points)."
        + (
            " Chosen on: the model was chosen by this task's score (a search's objective or select_checkpoint on a "
            "reported benchmark), so its score here is inflated (selection bias)."
            if "chosen_on" in table and (table.chosen_on.astype(str) == "True").any()
            else ""
        )
        + "\n\n"
    )


def write_summary(
    pairs: list[dict], csv_path: str | Path, md_path: str | Path, statistics: dict | None = None
) -> pd.DataFrame:
    table = summarize(pairs, statistics)
    write_text_atomic(csv_path, table.to_csv(index=False))
    write_text_atomic(md_path, "# Base vs fine-tuned\n\n" + note(table, statistics) + to_markdown(table))
    return table


def partial_banner(table: pd.DataFrame) -> str:
    missing = int((table.status.isin(["failed", "pending"])).sum())
    return (
        f"PARTIAL RESULTS: {missing} of {len(table)} rows are not finished (failed or pending, see status and reason). "
        "The final table is results/compare/summary.csv, written when every job has finished; rerun snakemake."
    )


def write_partial(
    pairs: list[dict],
    reasons: dict[str, tuple[str, str]],
    csv_path: str | Path,
    md_path: str | Path,
    statistics: dict | None = None,
) -> pd.DataFrame:
    """The summary of what has finished while other jobs failed or never ran: rows of missing evaluations get
    ``failed`` or ``pending`` and a reason (``reasons``: evaluation folder -> (status, reason)), every row
    ``complete`` False, and the Markdown a banner: it is never mistaken for the final table."""
    table = summarize(pairs, statistics)
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
        md_path,
        f"# Base vs fine-tuned (partial)\n\n**{partial_banner(table)}**\n\n"
        + note(table, statistics)
        + to_markdown(table),
    )
    return table
