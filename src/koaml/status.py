"""``koaml status``: where every model of an experiment stands, stage by stage.

It reads only files and, where SLURM is installed, ``squeue``: the workflow's outputs (done), Snakemake's
incomplete-output markers (running locally), SLURM's queue (the executor plugin names each job's rule and
wildcards in its comment), the jobs' logs (failed: a log, no output, nothing running) and the training
progress file that ``koaml train`` keeps next to its checkpoints (step, loss, time left). No Snakemake
import and no lock: it can run while the workflow does.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from base64 import urlsafe_b64encode
from dataclasses import dataclass
from pathlib import Path

from koaml.experiment import Experiment, evaluation_dir, step_eval_dir
from koaml.integrity import damage
from koaml.search import search_dir, trial_eval_dir

STATES = ("done", "running", "queued", "failed", "damaged", "pending", "not planned")
LOG_TAIL = 3


EVALUATE_RULES = ("evaluate", "evaluate_model")  # one job per (model, benchmark), or per model


@dataclass
class Step:
    """One stage of one model (or of the experiment: compare, report)."""

    model: str
    stage: str
    rule: str
    wildcards: tuple[str, ...]
    output: str
    log: str | None
    state: str = "pending"
    job_id: str = ""
    elapsed: str = ""
    detail: str = ""

    @property
    def slurm_comment(self) -> str:
        """The comment snakemake-executor-plugin-slurm gives this step's job."""
        return f"rule_{self.rule}_wildcards_{'_'.join(self.wildcards)}" if self.wildcards else f"rule_{self.rule}"


def plan(exp: Experiment) -> list[Step]:
    """Every step the experiment has, in the order it runs, with its output and log (as the rules name them)."""
    steps = []
    for name, base in exp.base_models.items():
        if base.built_by_workflow:
            rule = "convert_gguf" if base.gguf else "build_base_model"
            steps.append(
                Step(name, rule.split("_")[0], rule, (name,), f"results/base/{name}/model", f"logs/{rule}/{name}.log")
            )
    for name, run in exp.runs.items():
        steps.append(
            Step(name, "prepare", "prepare_data", (name,), f"results/data/{name}", f"logs/prepare_data/{name}.log")
        )
        steps.append(Step(name, "train", "train", (name,), f"results/runs/{name}/trained", f"logs/train/{name}.log"))
        merge = Step(name, "merge", "merge", (name,), f"results/runs/{name}/merged", f"logs/merge/{name}.log")
        if run.method == "full":
            merge.state = "not planned"
        steps.append(merge)
    for model in exp.evaluated_models:
        for bench in exp.benchmarks:
            # with evaluation.group_by_model, one job (and log) per model evaluates all its benchmarks
            rule, wildcards = ("evaluate_model", (model,)) if exp.group_by_model else ("evaluate", (model, bench))
            log = f"logs/evaluate/{model}.log" if exp.group_by_model else f"logs/evaluate/{model}/{bench}.log"
            steps.append(Step(model, f"eval {bench}", rule, wildcards, evaluation_dir(model, bench), log))
    steps += checkpoint_steps(exp) + search_steps(exp)
    steps.append(Step("(experiment)", "compare", "compare", (), "results/compare/summary.csv", None))
    steps.append(Step("(experiment)", "report", "report", (), "results/report/index.html", None))
    return steps


def checkpoint_steps(exp: Experiment) -> list[Step]:
    """The evaluations of each run's kept steps (checkpoint_eval)."""
    steps = []
    for name, run in exp.runs.items():
        for step, bench in exp.step_evaluations(name):
            out, log = step_eval_dir(name, step, bench), f"logs/evaluate/{name}/step{step}/{bench}.log"
            steps.append(Step(name, f"step {step} {bench}", "evaluate_step", (name, step, bench), out, log))
        if run.selection:
            log = f"logs/select_checkpoint/{name}.log"
            steps.append(Step(name, "select", "select_checkpoint", (name,), run.model_dir, log))
    return steps


def search_steps(exp: Experiment) -> list[Step]:
    """Each search's trials on its validation benchmark, and its summary."""
    steps = []
    for name, search in exp.searches.items():
        if search.objective.benchmark is not None:
            bench = search.objective.benchmark
            for trial in search.trials:
                out, log = trial_eval_dir(name, trial), f"logs/search/{name}/eval/{trial}.log"
                steps.append(Step(trial, f"eval {bench}", "evaluate_trial", (name, trial), out, log))
        summary = f"{search_dir(name)}/trials.csv"
        steps.append(Step(name, "search", "search_summary", (name,), summary, f"logs/search/{name}/summary.log"))
    return steps


def _incomplete(workdir: Path, output: str) -> Path | None:
    """Snakemake's mark on a job's output while the job runs (kept if it was killed), written when it started."""
    marker = workdir / ".snakemake/incomplete" / urlsafe_b64encode(output.encode()).decode()
    return marker if marker.exists() else None


def _locked(workdir: Path) -> bool:
    return any((workdir / ".snakemake/locks").glob("*.lock"))


def slurm_jobs() -> dict[str, dict]:
    """Your queued and running SLURM jobs by comment: job id, state, elapsed time (empty without SLURM)."""
    if shutil.which("squeue") is None:
        return {}
    try:
        out = subprocess.run(
            ["squeue", "--me", "--noheader", "--format=%i|%T|%M|%k"], capture_output=True, text=True, timeout=10
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    jobs = {}
    for line in out.stdout.splitlines():
        job_id, state, elapsed, comment = ([*line.split("|", 3), "", "", ""])[:4]
        jobs[comment.strip()] = {"job_id": job_id.strip(), "state": state.strip(), "elapsed": elapsed.strip()}
    return jobs


def _tail(log: Path, lines: int = LOG_TAIL) -> str:
    text = [line.strip() for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return " | ".join(text[-lines:])


def training_progress(checkpoints: Path) -> str:
    """``step N/M, loss L, ~T left`` from the progress file that ``koaml train`` updates at every log step."""
    files = sorted(checkpoints.glob("*/progress.json"), key=lambda p: p.stat().st_mtime)
    if not files:
        return ""
    p = json.loads(files[-1].read_text())
    parts = [f"step {p['step']}/{p['max_steps']}"]
    if p.get("loss") is not None:
        parts.append(f"loss {p['loss']:.4g}")
    if p.get("eta_s") is not None:
        parts.append(f"~{_duration(p['eta_s'])} left")
    return ", ".join(parts)


def _duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds % 3600 // 60:02d}m" if seconds >= 3600 else f"{seconds // 60}m{seconds % 60:02d}s"
    )


def status(exp: Experiment, workdir: str | Path = ".") -> list[Step]:
    """The experiment's steps with their state, SLURM job and detail."""
    workdir = Path(workdir)
    queue = slurm_jobs()
    locked = _locked(workdir)
    steps = plan(exp)
    for step in steps:
        if step.state == "not planned":
            continue
        output, log = workdir / step.output, workdir / step.log if step.log else None
        job = queue.get(step.slurm_comment)
        if job:
            step.state = "running" if job["state"] in ("RUNNING", "COMPLETING") else "queued"
            step.job_id, step.elapsed = job["job_id"], job["elapsed"]
        elif (marker := _incomplete(workdir, step.output)) is not None:
            step.state = "running" if locked else "failed"
            if step.state == "running":
                step.elapsed = _duration(time.time() - marker.stat().st_mtime)
            else:
                step.detail = "killed while running (incomplete output); rerun with --rerun-incomplete"
        elif step.rule in EVALUATE_RULES and (why := damage(output)):
            step.state, step.detail = "damaged", f"{why}; move {step.output} away to have it re-run"
        elif output.exists():
            step.state = "done"
        elif log is not None and log.exists():
            step.state = "failed"
            step.detail = _tail(log)
        if step.stage == "train" and step.state in ("running", "queued", "failed"):
            progress = training_progress(workdir / "results/checkpoints" / step.model)
            step.detail = "; ".join(filter(None, [progress, step.detail]))
    return steps


def table(steps: list[Step], width: int | None = None) -> str:
    """A plain-text table: model, stage, state, job, elapsed, detail (lines cut to ``width``, if given)."""
    rows = [("model", "stage", "state", "job", "elapsed", "detail")]
    rows += [(s.model, s.stage, s.state, s.job_id, s.elapsed, s.detail) for s in steps]
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r[:5], widths, strict=True)) + "  " + r[5] for r in rows]
    counts = {state: sum(s.state == state for s in steps) for state in STATES}
    summary = ", ".join(f"{n} {state}" for state, n in counts.items() if n)
    return "\n".join(line[:width].rstrip() for line in lines) + f"\n\n{summary}\n"


def watch(exp: Experiment, workdir: str | Path, every: float) -> None:
    """Redraw the table every ``every`` seconds until Ctrl-C."""
    try:
        while True:
            page = table(status(exp, workdir), shutil.get_terminal_size().columns)
            print(f"\033[2J\033[H{time.strftime('%H:%M:%S')}  {exp.name}\n\n{page}", end="", flush=True)
            time.sleep(every)
    except KeyboardInterrupt:
        print()


def missing_reasons(exp: Experiment, steps: list[Step]) -> dict[str, tuple[str, str]]:
    """For each evaluation folder not done: ``failed`` or ``pending``, and why (the failed step of the model's
    chain with its log's last lines, or what it waits for)."""
    by_key = {(s.model, s.stage): s for s in steps}

    def chain(model: str) -> list[Step]:
        """The steps a model's evaluation needs, first to last: its base's build, each stage's prepare/train/merge."""
        run = exp.adapter_models.get(model, model)
        runs = []
        while run in exp.runs:
            runs.insert(0, run)
            run = exp.runs[run].parent_run or exp.runs[run].base
        found = [by_key[(run, "build")] if (run, "build") in by_key else by_key.get((run, "convert"))]
        for name in runs:
            found += [by_key[(name, stage)] for stage in ("prepare", "train", "merge")]
        return [s for s in found if s is not None and s.state != "not planned"]

    reasons = {}
    for step in steps:
        if step.rule not in EVALUATE_RULES or step.state == "done":
            continue
        if step.state == "failed":
            reasons[step.output] = ("failed", f"evaluation failed: {step.detail}")
            continue
        upstream = chain(step.model)
        failed = next((s for s in upstream if s.state == "failed"), None)
        waiting = next((s for s in upstream if s.state != "done"), None)
        if failed:
            reasons[step.output] = ("pending", f"{failed.model} {failed.stage} failed: {failed.detail}")
        else:
            reasons[step.output] = (
                "pending",
                f"waits for {waiting.model} {waiting.stage}" if waiting else f"evaluation {step.state}",
            )
    return reasons
