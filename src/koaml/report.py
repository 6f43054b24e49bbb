"""Plots and a self-contained HTML report (images inlined: it opens from disk, without network)."""

from __future__ import annotations

import base64
import html
import importlib.metadata
import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pandas as pd

from koaml import leaderboard
from koaml.compare import note, partial_banner
from koaml.io import write_text_atomic
from koaml.selection import SELECTION_FILE

PACKAGES = ("koaml", "torch", "transformers", "peft", "trl", "bitsandbytes", "datasets", "lm_eval", "snakemake")


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _label(row) -> str:
    return f"{row.task}\n{row.metric}" + ("" if row["filter"] == "none" else f" ({row['filter']})")


def plot_scores(table: pd.DataFrame, out_dir: Path) -> list[Path]:
    """One grouped bar chart per benchmark: every evaluated model (references first, marked "(base)" when they
    are only references), with 95% error bars (1.96 x stderr); a group of seed replicates is one bar (their
    mean) with each seed's score as a point."""
    plt = _pyplot()
    paths = []
    single_seed = table.replicate_of.notna() if "replicate_of" in table else pd.Series(False, index=table.index)
    seed_points: dict[tuple[str, str], dict[str, list[float]]] = {}
    for _, r in table[single_seed & (table.status != "missing")].iterrows():
        seed_points.setdefault((r.benchmark, r.replicate_of), {}).setdefault(_label(r), []).append(r.score)
    for bench, rows in table[~single_seed & (table.status != "missing")].groupby("benchmark", sort=False):
        labels = list(dict.fromkeys(_label(r) for _, r in rows.iterrows()))
        scores: dict[str, dict[str, tuple[float, float]]] = {}
        for _, r in rows.iterrows():
            if pd.notna(r.base_score):
                scores.setdefault(r.base_model, {})[_label(r)] = (r.base_score, r.base_stderr)
        for _, r in rows.iterrows():
            scores.setdefault(r.run, {})[_label(r)] = (r.score, r.stderr)
        compared = set(rows.run)
        series = {
            name if name in compared else f"{name} (base)": (
                [by_label.get(label, (float("nan"), None))[0] for label in labels],
                [by_label.get(label, (float("nan"), None))[1] for label in labels],
            )
            for name, by_label in scores.items()
        }
        width, seeds_shown = 0.8 / len(series), False
        fig, ax = plt.subplots(figsize=(max(5, 1.6 * len(labels) * len(series) / 2), 3.6))
        for i, (name, (scores, stderrs)) in enumerate(series.items()):
            errors = [1.96 * e if pd.notna(e) else 0 for e in stderrs]
            x = [j + (i - (len(series) - 1) / 2) * width for j in range(len(scores))]
            ax.bar(x, [100 * s for s in scores], width, yerr=[100 * e for e in errors], capsize=3, label=name)
            for j, label in enumerate(labels):
                points = seed_points.get((bench, name), {}).get(label, [])
                marker = {"label": "a seed replicate"} if points and not seeds_shown else {}
                seeds_shown = seeds_shown or bool(points)
                ax.plot([x[j]] * len(points), [100 * p for p in points], "o", color="black", markersize=3, **marker)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_ylabel("score (%)")
        ax.set_title(bench)
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
        paths.append(_save(fig, out_dir / f"scores_{bench}.png"))
    return paths


def plot_leaderboard(scores: pd.DataFrame, out_dir: Path) -> Path | None:
    """A heat map of the leaderboard: models (best mean rank first) x benchmark/task/metric, scores in percent."""
    wide = leaderboard.matrix(scores)
    if wide.empty:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(4, 1.3 * wide.shape[1] + 2), 0.5 * wide.shape[0] + 3))
    image = ax.imshow(100 * wide.to_numpy(dtype=float), cmap="viridis", vmin=0, vmax=100, aspect="auto")
    for (i, j), value in pd.DataFrame(wide.to_numpy()).stack().items():
        ax.text(j, i, f"{100 * value:.1f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    ax.set_xticks(range(wide.shape[1]), wide.columns, fontsize="small", rotation=30, ha="right")
    ax.set_yticks(range(wide.shape[0]), wide.index)
    fig.colorbar(image, ax=ax, label="score (%)")
    ax.set_title("leaderboard")
    return _save(fig, out_dir / "leaderboard.png")


def is_grpo(history: list[dict]) -> bool:
    """GRPO logs a mean ``reward`` per step; its loss is no learning curve (it hovers around 0)."""
    return any("reward" in e for e in history)


def plot_losses(histories: dict[str, list[dict]], out_dir: Path) -> Path | None:
    """Training loss (solid) and eval loss (dashed) of every SFT and DPO run against the optimizer step."""
    histories = {run: h for run, h in histories.items() if not is_grpo(h)}
    if not histories:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (run, history) in enumerate(histories.items()):
        color = f"C{i % 10}"
        train = [(e["step"], e["loss"]) for e in history if e.get("loss", 0) > 0 and "step" in e]
        evals = [(e["step"], e["eval_loss"]) for e in history if e.get("eval_loss", 0) > 0]
        if train:
            ax.plot(*zip(*train, strict=True), color=color, label=f"{run} train")
        if evals:
            ax.plot(
                *zip(*evals, strict=True), color=color, linestyle="--", marker="o", markersize=3, label=f"{run} eval"
            )
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    return _save(fig, out_dir / "losses.png")


# What each preference or RL trainer's learning curve is: (log key, label).
REWARD_CURVES = (("reward", "mean reward (GRPO)"), ("rewards/margins", "chosen - rejected reward margin (DPO)"))


def plot_rewards(histories: dict[str, list[dict]], out_dir: Path) -> Path | None:
    """GRPO's mean reward and DPO's reward margin of every such run against the optimizer step."""
    curves = []
    for run, history in histories.items():
        for key, label in REWARD_CURVES:
            points = [(e["step"], e[key]) for e in history if key in e and "step" in e and "train_runtime" not in e]
            if points:
                curves.append((run, label, points))
    if not curves:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.6))
    for i, (run, label, points) in enumerate(curves):
        ax.plot(*zip(*points, strict=True), color=f"C{i % 10}", marker="o", markersize=3, label=f"{run}: {label}")
    ax.set_xlabel("step")
    ax.set_ylabel("reward")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1, 1))
    return _save(fig, out_dir / "rewards.png")


def plot_sweeps(table: pd.DataFrame, sweeps: dict[str, dict[str, dict]], out_dir: Path) -> list[Path]:
    """For each single-key sweep: each metric against the swept value, with the base as a line."""
    plt = _pyplot()
    paths = []
    for group, points in sweeps.items():
        keys = {k for point in points.values() for k in point}
        if len(keys) != 1:
            continue
        key = keys.pop()
        rows = table[table.run.isin(points) & (table.status == "ok")]
        for (bench, task, metric, _filter), sub in rows.groupby(["benchmark", "task", "metric", "filter"], sort=False):
            values = sorted((points[r.run][key], r.score, r.ci_low, r.ci_high, r.base_score) for _, r in sub.iterrows())
            x = [v[0] for v in values]
            fig, ax = plt.subplots(figsize=(5, 3.4))
            ax.plot(x, [100 * v[1] for v in values], marker="o", label=group)
            ax.axhline(100 * values[0][4], color="gray", linestyle=":", label="base")
            if all(isinstance(v, (int, float)) for v in x) and min(x) > 0 and max(x) / min(x) >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xlabel(key)
            ax.set_ylabel(f"{metric} (%)")
            ax.set_title(f"{bench}: {task}")
            ax.legend(fontsize="small")
            paths.append(_save(fig, out_dir / f"sweep_{group}_{bench}_{task}_{metric}.png".replace(",", "_")))
    return paths


def plot_search(name: str, search: dict, trials: pd.DataFrame, importances: dict, out_dir: Path) -> list[Path]:
    """A search's optimization history (each trial's objective and the best so far), its parameters' importances
    and, with a cost objective, the Pareto front."""
    plt = _pyplot()
    done = trials[trials.state == "COMPLETE"].sort_values("number")
    if done.empty:
        return []
    paths = []
    better = max if search["direction"] == "maximize" else min
    best = [better(done.objective.iloc[: i + 1]) for i in range(len(done))]
    fig, ax = plt.subplots(figsize=(5.5, 3.4))
    ax.plot(done.number + 1, done.objective, "o", label="trial")
    ax.step(done.number + 1, best, where="post", color="C3", label="best so far")
    ax.xaxis.get_major_locator().set_params(integer=True)
    ax.set_xlabel("trial")
    ax.set_ylabel(search["objective"])
    ax.set_title(f"{name}: optimization history ({search['sampler']})")
    ax.legend(fontsize="small")
    paths.append(_save(fig, out_dir / f"search_{name}_history.png"))
    if importances:
        fig, ax = plt.subplots(figsize=(5.5, 0.5 + 0.45 * len(importances)))
        keys = list(importances)[::-1]
        ax.barh(keys, [importances[k] for k in keys])
        ax.set_xlabel("importance (fANOVA, share of the objective's variance)")
        ax.set_title(f"{name}: parameter importances")
        paths.append(_save(fig, out_dir / f"search_{name}_importances.png"))
    if search.get("cost"):
        fig, ax = plt.subplots(figsize=(5.5, 3.4))
        ax.plot(done.cost, done.objective, "o", color="C0", label="trial")
        front = done[done.pareto.astype(str) == "True"].sort_values("cost")
        ax.plot(front.cost, front.objective, "o-", color="C3", label="Pareto front")
        ax.set_xlabel(search["cost"].replace("_", " "))
        ax.set_ylabel(search["objective"])
        ax.set_title(f"{name}: objective against cost")
        ax.legend(fontsize="small")
        paths.append(_save(fig, out_dir / f"search_{name}_pareto.png"))
    return paths


def plot_curves(curves: pd.DataFrame, histories: dict[str, list[dict]], out_dir: Path) -> list[Path]:
    """For each run and benchmark/task/metric of checkpoint_eval: the score at each step with its interval (the
    base at step 0, the step select_checkpoint chose marked), and the run's training and eval losses on the same
    step axis."""
    plt = _pyplot()
    paths = []
    done = curves[curves.status == "ok"]
    for (run, bench, task, metric, _filter), sub in done.groupby(
        ["run", "benchmark", "task", "metric", "filter"], sort=False
    ):
        sub = sub.sort_values("step")
        fig, ax = plt.subplots(figsize=(6, 3.6))
        ax.plot(sub.step, 100 * sub.score, "o-", color="C0", label=f"{metric} ({task})")
        ax.fill_between(
            sub.step, 100 * sub.ci_low.astype(float), 100 * sub.ci_high.astype(float), color="C0", alpha=0.2
        )
        base = sub[sub.point == "base"]
        ax.plot(base.step, 100 * base.score, "s", color="gray", label="start (step 0)")
        chosen = sub[sub.selected.astype(str) == "True"]
        if len(chosen):
            ax.axvline(chosen.step.iloc[0], color="C2", linestyle=":", label="chosen step (select_checkpoint)")
        ax.set_xlabel("step")
        ax.set_ylabel(f"{metric} (%)")
        ax.set_title(f"{run}: {bench}")
        history = histories.get(run, [])
        losses = [(e["step"], e["loss"]) for e in history if "loss" in e]
        evals = [(e["step"], e["eval_loss"]) for e in history if "eval_loss" in e]
        if losses or evals:
            twin = ax.twinx()
            if losses:
                twin.plot(*zip(*losses, strict=True), color="C1", alpha=0.6, label="train loss")
            if evals:
                twin.plot(*zip(*evals, strict=True), "x--", color="C3", alpha=0.8, label="eval loss")
            twin.set_ylabel("loss")
            twin.legend(fontsize="small", loc="upper right")
        ax.legend(fontsize="small", loc="upper left")
        name = f"curve_{run}_{bench}_{task}_{metric}".replace(",", "_")
        paths.append(_save(fig, out_dir / f"{name}.png"))
    return paths


def search_html(searches: dict[str, dict], plots_dir: Path) -> str:
    """The report's Search section: each search's trials, best trial and plots (nothing for a search that has not
    finished)."""
    parts = []
    for name, search in searches.items():
        folder = Path(search["dir"])
        if not (folder / "trials.csv").is_file():
            parts.append(f"<h3>{html.escape(name)}</h3><p>Not finished yet.</p>")
            continue
        trials = pd.read_csv(folder / "trials.csv")
        importances = json.loads((folder / "importances.json").read_text())
        best = (folder / "best.yaml").read_text().splitlines()[0].lstrip("# ")
        figures = plot_search(name, search, trials, importances, plots_dir)
        caveat = (
            "The objective is one of the reported benchmarks: the best trial was chosen by its test score, which is "
            "therefore inflated (selection bias)."
            if search["objective_reported"]
            else "The objective is not a reported benchmark, so choosing by it does not inflate them."
        )
        parts.append(
            f"<h3>{html.escape(name)}</h3><p>{html.escape(best)} Its test scores are the <code>{html.escape(name)}"
            f"</code> rows above. {caveat}</p>"
            + _table_html(trials.astype(object).fillna(""))
            + "".join(_img(p, p.stem.replace("_", " ")) for p in figures)
        )
    return "<h2>Search</h2>" + "".join(parts) if parts else ""


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    _pyplot().close(fig)
    return path


def provenance(workdir: str | Path = ".") -> dict:
    """Git commit of the workflow and versions of the packages that produced the results."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=workdir, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = bool(
            subprocess.run(["git", "status", "--porcelain"], cwd=workdir, capture_output=True, text=True).stdout.strip()
        )
        commit += " (with uncommitted changes)" if dirty else ""
    except (OSError, subprocess.CalledProcessError):
        commit = "not a git checkout"
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {
        "git_commit": commit,
        "packages": versions,
        "generated": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(alt)}"><figcaption>{html.escape(alt)}</figcaption></figure>'


STYLE = """
body{font-family:system-ui,sans-serif;margin:2rem auto;max-width:1200px;padding:0 1rem;color:#222}
table{border-collapse:collapse;font-size:.85rem;margin:1rem 0}th,td{border:1px solid #ccc;padding:.25rem .5rem;text-align:right}
th{background:#f3f3f3}td:nth-child(-n+5){text-align:left}.sig{background:#e6f4ea}.missing{background:#fdecea}.underpowered{background:#fff8e1}
.partial{background:#fff3cd;border:2px solid #e0a800;padding:.75rem;font-weight:bold}
.wide{overflow-x:auto}img{max-width:100%}figure{display:inline-block;margin:.5rem}pre{background:#f7f7f7;padding:.5rem;overflow:auto;font-size:.8rem}
"""


def _table_html(frame: pd.DataFrame, row_classes: list[str] | None = None) -> str:
    """An HTML table, each row with its CSS class (significant deltas, underpowered rows and missing results
    stand out)."""
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in frame.columns)
    rows = []
    for i, row in enumerate(frame.itertuples(index=False)):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        rows.append(f"<tr{cls}>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>")
    return f'<div class="wide"><table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table></div>'


def protocol_rows(protocols: dict[str, str]) -> pd.DataFrame:
    """One row per (benchmark, task): the settings its numbers come from, read from an evaluation's
    ``protocol.json`` (``protocols`` maps each benchmark to one of its evaluation folders)."""
    rows = []
    for bench, folder in protocols.items():
        path = Path(folder) / "protocol.json"
        if not path.is_file():  # an evaluation written before protocols were recorded
            continue
        for task, p in json.loads(path.read_text()).items():
            gen = p.get("generation_kwargs") or {}
            rows.append(
                {
                    "benchmark": bench,
                    "task": task,
                    "few-shot": p.get("num_fewshot"),
                    "generation": ", ".join(f"{k}={v!r}" for k, v in gen.items()) if gen else "(log-likelihood)",
                    "repeats": p.get("repeats"),
                    "metrics (filters)": f"{', '.join(p.get('metrics') or [])} ({', '.join(p.get('filters') or [])})",
                    "chat template": "yes" if p.get("apply_chat_template") else "no",
                    "set by the benchmark file": ", ".join(p.get("set_by_benchmark") or []) or "nothing",
                }
            )
    return pd.DataFrame(rows)


def _scores_html(scores: pd.DataFrame, alpha: float) -> str:
    """The leaderboard section: the matrix, then every score with its interval, rank and protocol."""
    if scores.empty:
        return ""
    wide = leaderboard.shown_matrix(scores)
    matrix_html = _table_html(wide) if not wide.empty else "<p>No model has finished evaluating.</p>"
    return (
        f"<h2>Scores</h2><p>{html.escape(leaderboard.note(alpha))}</p>{matrix_html}"
        f"<details><summary>Every score</summary>{_table_html(leaderboard.shown_scores(scores))}</details>"
    )


def write_report(
    summary_csv: str | Path,
    runs: dict[str, dict],
    out_html: str | Path,
    experiment: str,
    statistics: dict | None = None,
    protocols: dict[str, str] | None = None,
    scores_csv: str | Path | None = None,
    searches: dict[str, dict] | None = None,
    curves_csv: str | Path | None = None,
) -> None:
    """Render the HTML report; ``runs`` maps run -> {trained, config, sweep, selected (select_checkpoint's folder)}
    paths/info; ``statistics``
    the experiment's correction, alpha and power; ``protocols`` each benchmark's evaluation folder whose
    ``protocol.json`` says which settings produced the numbers; ``scores_csv`` every model's own scores (the
    leaderboard); ``searches`` each search's folder and settings; ``curves_csv`` the scores over training
    steps. A partial summary (``complete`` False) gets a banner saying so. It builds with one model and
    with nothing to compare."""
    out_html = Path(out_html)
    plots_dir = out_html.parent / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)  # an output of the rule, even with no plot to draw
    scores = pd.read_csv(scores_csv) if scores_csv and Path(scores_csv).is_file() else pd.DataFrame()
    table = pd.read_csv(summary_csv, keep_default_na=True)
    banner = "" if table.complete.all() else f'<p class="partial">{html.escape(partial_banner(table))}</p>'
    table = table.drop(columns="complete")
    summaries, histories = {}, {}
    for run, info in runs.items():
        trained = Path(info["trained"])
        summaries[run] = json.loads((trained / "train_summary.json").read_text())
        histories[run] = json.loads((trained / "log_history.json").read_text())
    selections = {  # select_checkpoint: the step chosen for each run that chooses one, and why
        run: json.loads((Path(info["selected"]) / SELECTION_FILE).read_text())
        for run, info in runs.items()
        if info.get("selected") and (Path(info["selected"]) / SELECTION_FILE).is_file()
    }
    sweeps: dict[str, dict] = {}
    for run, info in runs.items():
        if info.get("sweep"):
            sweeps.setdefault(info["sweep"]["group"], {})[run] = info["sweep"]["point"]

    leaderboard_plot = plot_leaderboard(scores, plots_dir)
    figures = [leaderboard_plot] if leaderboard_plot else []
    figures += plot_scores(table, plots_dir)
    figures += [path for path in (plot_losses(histories, plots_dir), plot_rewards(histories, plots_dir)) if path]
    figures += plot_sweeps(table, sweeps, plots_dir)
    if curves_csv and Path(curves_csv).is_file():
        figures += plot_curves(pd.read_csv(curves_csv), histories, plots_dir)

    shown = table.copy()
    for col in ("base_score", "score", "ci_low", "ci_high", "base_stderr", "stderr"):
        shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}")
    shown["delta"] = table.delta.map(lambda v: "" if pd.isna(v) else f"{100 * v:+.1f}")
    shown["p_value"] = table.p_value.map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    shown["p_adjusted"] = table.p_adjusted.map(lambda v: "" if pd.isna(v) else f"{v:.3g}")
    shown["mde"] = table.mde.map(lambda v: "" if pd.isna(v) else f"{100 * v:.1f}")
    for col in ("train_hours", "gpu_hours"):
        shown[col] = table[col].map(lambda v: "" if pd.isna(v) else f"{v:.2f}")
    marks = [
        "missing"
        if st in ("missing", "failed", "pending")
        else ("sig" if str(s) == "True" else ("underpowered" if str(u) == "True" else ""))
        for s, u, st in zip(table.significant, table.underpowered, table.status, strict=True)
    ]
    rows_html = _table_html(shown.astype(object).fillna(""), marks)

    prov = provenance()
    training_rows = pd.DataFrame(
        [
            {
                "run": run,
                "trainer": s.get("trainer_type", "sft"),
                "method": s["method"],
                "steps": s["global_step"],
                "chosen step": selections[run]["step"] if run in selections else "",
                "train loss": f"{s['train_loss']:.4f}",
                "eval loss": "" if s.get("final_eval_loss") is None else f"{s['final_eval_loss']:.4f}",
                "config hash": s.get("config_hash", ""),
                "wall time (s)": s.get("wall_time_s", ""),
                "peak RSS (MB)": s.get("peak_rss_mb", ""),
                "peak GPU memory (MB)": s.get("peak_gpu_memory_mb") or "",
                "SLURM job": s.get("slurm_job_id") or "",
                "GPU-hours": s.get("gpu_hours", ""),
            }
            for run, s in summaries.items()
        ]
    )
    if not selections:
        training_rows = training_rows.drop(columns="chosen step", errors="ignore")
    configs = "".join(
        f"<details><summary>{html.escape(run)}: resolved recipe</summary><pre>{html.escape(Path(info['config']).read_text())}</pre></details>"
        for run, info in runs.items()
    )
    packages = ", ".join(f"{k} {v}" for k, v in prov["packages"].items())
    protocol = protocol_rows(protocols or {})
    protocol_html = (
        "<h2>Protocol</h2><p>The settings each number comes from (lm-eval's effective task configs); a setting the "
        "benchmark file wrote replaces the task's own published one.</p>" + _table_html(protocol)
        if not protocol.empty
        else ""
    )
    scores_html = _scores_html(scores, (statistics or {}).get("alpha", leaderboard.ALPHA))
    compared_html = (
        f"<p>{html.escape(note(table, statistics).strip())}</p>{rows_html}"
        if not table.empty
        else "<p>Nothing to compare: the experiment evaluates one model and trains none. Add runs, a second base "
        "model or <code>compare</code> pairs for paired comparisons; the scores above stand on their own.</p>"
    )
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8"><title>koa-ml report: {html.escape(experiment)}</title>
<style>{STYLE}</style></head><body>
<h1>koa-ml report: {html.escape(experiment)}</h1>
{banner}
<p>Generated {prov["generated"]} from workflow commit <code>{html.escape(prov["git_commit"])}</code>.</p>
{scores_html}
<h2>Paired comparisons (base vs fine-tuned, and the compare pairs)</h2>{compared_html}
<h2>Plots</h2>
{"".join(_img(p, p.stem.replace("_", " ")) for p in figures)}
{search_html(searches or {}, plots_dir)}
{protocol_html}
<h2>Training</h2>
{_table_html(training_rows) if runs else "<p>No model is trained in this experiment.</p>"}
{"".join(f"<p>{html.escape(run)}: chosen by select_checkpoint: {html.escape(r['why'])}.</p>" for run, r in selections.items())}
{configs}
<h2>Provenance</h2><p>{html.escape(packages)}</p>
</body></html>
"""
    write_text_atomic(out_html, body)
