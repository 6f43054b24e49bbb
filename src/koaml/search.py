"""Adaptive hyper-parameter search (``runs.<name>.search``): Optuna trials that are ordinary runs.

A search's trials and rounds are fixed when the config is read (``<run>_t1`` .. ``<run>_t<n>``, ``parallel`` to a
round), so the workflow's DAG is static and only the trials' parameters are decided late: round r's parameters
(rule ``search_ask``) wait for the objective of every trial of the rounds before it. The study lives in an Optuna
journal file (``results/search/<run>/journal.log``: appends under a lock file, safe on a shared file system).
Asking and telling are idempotent, so a killed and rerun workflow loses and duplicates nothing: each trial is
recorded with its name, an ask repeated for a name returns the trial asked before, and a trial is told once.

Cheap to import (no optuna, no torch): the Snakefile reads the :class:`Search` records on every parse.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path

from koaml.configfiles import ConfigError, set_dotted
from koaml.experiment import Objective, final_model_dir

log = logging.getLogger("koaml")

OBJECTIVE_EVAL_LOSS = "eval_loss"
TRIAL_FILE = "trial.json"  # next to a trial's config.yaml: which search and round, its parameters
COST_COLUMNS = {"gpu_hours": "gpu_hours", "train_hours": "wall_time_s"}  # cost -> train_summary.json key
_KEYS = {  # the keys each distribution type takes besides `type`
    "loguniform": {"low", "high"},
    "uniform": {"low", "high", "step"},
    "int": {"low", "high", "step", "log"},
    "categorical": {"choices"},
}


@dataclass(frozen=True)
class Search:
    name: str  # the run's name; its trials are <name>_t1 ..
    space: dict = field(hash=False)  # dotted recipe key -> distribution spec
    objective: Objective
    n_trials: int
    parallel: int
    sampler: str
    seed: int
    startup_trials: int
    cost: str | None
    recipe_path: str
    overrides: dict = field(hash=False)  # the run's recipe overrides, under each trial's point
    recipe: dict = field(hash=False)  # the resolved recipe before the point (part of the study's identity)

    @property
    def trials(self) -> list[str]:
        return [trial_name(self.name, k) for k in range(1, self.n_trials + 1)]

    @property
    def rounds(self) -> int:
        return math.ceil(self.n_trials / self.parallel)

    def round_trials(self, round_number: int) -> list[str]:
        """The trials of round ``round_number`` (from 1)."""
        return self.trials[(round_number - 1) * self.parallel : round_number * self.parallel]

    def round_of(self, trial: str) -> int:
        return self.trials.index(trial) // self.parallel + 1

    @property
    def directions(self) -> list[str]:
        return [self.objective.direction] + (["minimize"] if self.cost else [])

    @property
    def study(self) -> dict:
        """What identifies the study (not ``n_trials``: raising it continues a search). Editing any of it starts
        a new study."""
        return {
            "space": self.space,
            "objective": self.objective.__dict__,
            "cost": self.cost,
            "sampler": self.sampler,
            "seed": self.seed,
            "startup_trials": self.startup_trials,
            "parallel": self.parallel,
            "recipe": self.recipe,
        }

    @property
    def study_name(self) -> str:
        digest = hashlib.sha256(json.dumps(self.study, sort_keys=True, default=str).encode()).hexdigest()
        return f"{self.name}-{digest[:12]}"

    def as_dict(self) -> dict:
        """The search as written to results/search/<run>/search.yaml (what ``koaml search-ask`` reads)."""
        return {
            "name": self.name,
            "study_name": self.study_name,
            "n_trials": self.n_trials,
            "recipe_path": self.recipe_path,
            "overrides": self.overrides,
            **self.study,
        }

    @classmethod
    def from_dict(cls, data: dict) -> Search:
        return cls(
            data["name"],
            data["space"],
            Objective(**data["objective"]),
            data["n_trials"],
            data["parallel"],
            data["sampler"],
            data["seed"],
            data["startup_trials"],
            data["cost"],
            data["recipe_path"],
            data["overrides"],
            data["recipe"],
        )


def trial_name(search: str, k: int) -> str:
    return f"{search}_t{k}"


def search_dir(search: str) -> Path:
    return Path("results/search") / search


def journal_file(search: str) -> Path:
    """The study's Optuna journal (an append-only log; Optuna's lock file makes it safe on NFS/Lustre)."""
    return search_dir(search) / "journal.log"


def round_file(search: str, round_number: int) -> str:
    return f"results/search/{search}/round{round_number}.yaml"


def trial_eval_dir(search: str, trial: str) -> str:
    """Where a trial's evaluation on the search's validation benchmark is written."""
    return f"results/search/{search}/eval/{trial}"


def trained_dir(run: str) -> str:
    return f"results/runs/{run}/trained"


# --- Reading the config ------------------------------------------------------------------------------------


def check_space(space: dict, key: str) -> None:
    """Each distribution has the keys its type takes and sensible bounds."""
    for name, dist in space.items():
        where = f"{key}.{name}"
        kind = dist["type"]
        extra = sorted(set(dist) - {"type"} - _KEYS[kind])
        if extra:
            raise ConfigError(
                f"{where}: {', '.join(extra)}: not used by type {kind} (it takes {', '.join(sorted(_KEYS[kind]))})"
            )
        if kind == "categorical":
            if "choices" not in dist:
                raise ConfigError(f"{where}: type categorical needs choices: [...]")
            continue
        if "low" not in dist or "high" not in dist:
            raise ConfigError(f"{where}: type {kind} needs low and high")
        low, high = dist["low"], dist["high"]
        if low > high:
            raise ConfigError(f"{where}: low ({low}) is greater than high ({high})")
        if kind == "loguniform" and low <= 0:
            raise ConfigError(f"{where}: loguniform needs low > 0 (got {low})")
        if kind == "int" and not all(float(v).is_integer() for v in (low, high, dist.get("step", 1))):
            raise ConfigError(f"{where}: type int needs whole numbers for low, high and step")
        if kind == "int" and dist.get("log") and (low < 1 or dist.get("step", 1) != 1):
            raise ConfigError(f"{where}: an int on a log scale needs low >= 1 and no step")


def space_points(space: dict) -> list[dict]:
    """The points whose recipes must be valid: each key at its bounds (or each choice), the others at their first."""
    first = {name: _values(dist)[0] for name, dist in space.items()}
    return [dict(first, **{name: value}) for name, dist in space.items() for value in _values(dist)]


def sizing_point(space: dict) -> dict:
    """The point the trials are sized with before their parameters are known: the largest value of each key
    (what memory grows with: batch size, rank, length), the first choice where choices are not numbers."""
    point = {}
    for name, dist in space.items():
        values = _values(dist)
        numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
        point[name] = max(numbers) if len(numbers) == len(values) else values[0]
    return point


def _values(dist: dict) -> list:
    if dist["type"] == "categorical":
        return list(dist["choices"])
    cast = int if dist["type"] == "int" else float
    return [cast(dist["low"]), cast(dist["high"])]


def check_sampler(sampler: str, space: dict, key: str) -> None:
    if sampler == "grid":
        continuous = [name for name, dist in space.items() if dist["type"] in ("loguniform", "uniform")]
        if continuous:
            raise ConfigError(
                f"{key}.sampler: grid needs a finite space; {', '.join(continuous)} is continuous (give it as "
                "categorical choices, or use sampler: tpe or random)"
            )


def grid_size(space: dict) -> int:
    return math.prod(len(_grid_values(dist)) for dist in space.values())


def _grid_values(dist: dict) -> list:
    if dist["type"] == "categorical":
        return list(dist["choices"])
    step = int(dist.get("step", 1))
    return list(range(int(dist["low"]), int(dist["high"]) + 1, step))


def warn_if_study_changed(searches) -> None:
    """Say so when a search's settings changed since its study started: a new study starts (the old one stays
    in the journal), and the trials are asked and trained again."""
    from koaml.configfiles import load_yaml

    for search in searches:
        recorded = search_dir(search.name) / "search.yaml"
        if recorded.is_file():
            before = load_yaml(recorded).get("study_name")
            if before != search.study_name:
                log.warning(
                    "runs.%s.search changed since study %s (space, objective, sampler, seed, parallel or recipe): "
                    "a new study %s starts and its trials are trained again; the old study stays in %s",
                    search.name, before, search.study_name, journal_file(search.name),
                )  # fmt: skip


# --- Asking and telling (in the search_ask and search_summary jobs) ----------------------------------------


def open_study(search: Search, journal: str | Path, round_number: int = 0):
    """The search's study in its journal file (created on first use), with the sampler of ``round_number``."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    Path(journal).parent.mkdir(parents=True, exist_ok=True)
    storage = JournalStorage(JournalFileBackend(str(journal)))
    return optuna.create_study(
        study_name=search.study_name,
        storage=storage,
        directions=search.directions,
        sampler=make_sampler(search, round_number),
        load_if_exists=True,
    )


def make_sampler(search: Search, round_number: int):
    """The search's sampler, seeded per round: each round is a new process, so the same seed must not give every
    round the same draws."""
    import warnings

    import optuna

    seed = search.seed + round_number
    if search.sampler == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if search.sampler == "grid":
        space = {name: _grid_values(dist) for name, dist in search.space.items()}
        return optuna.samplers.GridSampler(space, seed=search.seed)
    with warnings.catch_warnings():  # multivariate TPE is marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(
            seed=seed, n_startup_trials=search.startup_trials, multivariate=True, constant_liar=True
        )


def distributions(space: dict) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    made = {}
    for name, dist in space.items():
        kind = dist["type"]
        if kind == "categorical":
            made[name] = CategoricalDistribution(dist["choices"])
        elif kind == "int":
            made[name] = IntDistribution(
                int(dist["low"]), int(dist["high"]), step=int(dist.get("step", 1)), log=dist.get("log", False)
            )
        else:
            made[name] = FloatDistribution(
                float(dist["low"]), float(dist["high"]), log=kind == "loguniform", step=dist.get("step")
            )
    return made


def outcome(search: Search, trial: str) -> tuple[list[float] | None, str]:
    """The values a trial is told with (objective, then cost), from its training summary and its evaluation on
    the validation benchmark; ``None`` and the reason when the objective is not a finite number."""
    summary = json.loads((Path(trained_dir(trial)) / "train_summary.json").read_text())
    if summary.get("diverged"):
        return None, f"training diverged: {summary['diverged']}"
    if search.objective.benchmark is None:
        value = summary.get("final_eval_loss")
    else:
        value = benchmark_score(search.objective, trial_eval_dir(search.name, trial))
    if value is None or not math.isfinite(value):
        return None, f"objective {search.objective.label} is {value}"
    values = [float(value)]
    if search.cost:
        seconds_or_hours = summary.get(COST_COLUMNS[search.cost]) or 0.0
        values.append(seconds_or_hours / 3600 if search.cost == "train_hours" else float(seconds_or_hours))
    return values, ""


def benchmark_score(objective: Objective, eval_dir: str) -> float:
    """The objective's metric from an lm-eval results file; a clear error naming what there is when it is absent."""
    from koaml.results import metric_rows, results_file

    path = results_file(eval_dir)
    if path is None:
        raise SystemExit(f"{eval_dir}: no lm-eval results file")
    rows = [r for r in metric_rows(json.loads(path.read_text())) if r["task"] == objective.task]
    found = [r for r in rows if r["metric"] == objective.metric]
    if objective.filter is not None:
        found = [r for r in found if r["filter"] == objective.filter]
    if len(found) != 1:
        there = ", ".join(sorted({f"{r['metric']} (filter {r['filter']})" for r in rows})) or "none"
        what = "several filters; give its filter" if len(found) > 1 else "not found"
        raise SystemExit(
            f"choosing by {objective.label}: metric '{objective.metric}' of task '{objective.task}' in {path}: {what}; "
            f"the task has: {there}"
        )
    return found[0]["score"]


def tell(study, search: Search, trials: list[str]) -> None:
    """Tell the study each of ``trials`` not told yet (a trial without a finite objective fails), and fail
    trials left unnamed by a killed ask (they would bias the sampler's constant liar)."""
    import optuna

    by_name = {t.user_attrs.get("name"): t for t in study.get_trials(deepcopy=False)}
    for t in study.get_trials(deepcopy=False, states=[optuna.trial.TrialState.RUNNING]):
        if "name" not in t.user_attrs:
            study.tell(t.number, state=optuna.trial.TrialState.FAIL)
    for name in trials:
        trial = by_name.get(name)
        if trial is None or trial.state != optuna.trial.TrialState.RUNNING:
            continue
        values, reason = outcome(search, name)
        if values is None:
            log.warning("search %s: trial %s failed: %s", search.name, name, reason)
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
        else:
            study.tell(trial.number, values)


def ask_round(search: Search, round_number: int, trials: list[str], earlier: list[str], journal: str | Path) -> dict:
    """The parameters of ``trials`` (round ``round_number``), after telling the study the ``earlier`` trials.
    A trial asked before (the same name) keeps its parameters: a repeated ask duplicates nothing."""
    study = open_study(search, journal, round_number)
    tell(study, search, earlier)
    asked = {t.user_attrs["name"]: t.params for t in study.get_trials(deepcopy=False) if "name" in t.user_attrs}
    space = distributions(search.space)
    points = {}
    for name in trials:
        if name not in asked:
            trial = study.ask(space)
            trial.set_user_attr("name", name)
            asked[name] = trial.params
        points[name] = {key: asked[name][key] for key in search.space}
    return {"study": search.study_name, "round": round_number, "trials": points}


def with_point(overrides: dict, point: dict) -> dict:
    """Recipe overrides with a point of the space (dotted keys) set on top."""
    for key, value in point.items():
        overrides = set_dotted(overrides, key, value)
    return overrides


def trial_recipe(search: Search, round_yaml: dict, trial: str) -> dict:
    """A trial's resolved recipe: the run's recipe with the parameters its round's file gives it."""
    from koaml.recipe import load_recipe

    return load_recipe(search.recipe_path, with_point(search.overrides, round_yaml["trials"][trial])).as_dict()


def write_trial(search: Search, round_path: str, trial: str, config_out: str, trial_out: str) -> None:
    """A trial's resolved recipe (its config.yaml) and trial.json: the search, study and round it belongs to, and
    its parameters (from its round's file)."""
    from koaml.configfiles import load_yaml
    from koaml.io import write_json, write_yaml

    asked = load_yaml(round_path)
    write_yaml(config_out, trial_recipe(search, asked, trial))
    record = {"search": search.name, "study": asked["study"], "round": asked["round"], "params": asked["trials"][trial]}
    write_json(trial_out, record)


# --- Results ---------------------------------------------------------------------------------------------


def summarize(search: Search, trials: list[str], journal: str | Path, out_dir: str | Path) -> dict:
    """Tell the last round, then write trials.csv, best.yaml (the best trial's resolved recipe), best_model.txt
    (the folder the best trial's model is evaluated from), importances.json and train_summary.json (the search's
    cost). Returns the best trial's row."""
    import optuna

    from koaml.recipe import read_recipe

    study = open_study(search, journal)
    tell(study, search, trials)
    named = {t.user_attrs.get("name"): t for t in study.get_trials(deepcopy=False)}
    complete = [named[n] for n in trials if n in named and named[n].state == optuna.trial.TrialState.COMPLETE]
    if not complete:
        raise SystemExit(f"search {search.name}: no trial finished with a finite objective; see {journal}")
    front = {t.number for t in study.best_trials}
    sign = 1 if search.objective.direction == "maximize" else -1
    best = max((t for t in complete if t.number in front), key=lambda t: sign * t.values[0])
    rows = [_row(search, name, named.get(name), front) for name in trials]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with open(out_dir / "trials.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    best_name = best.user_attrs["name"]
    recipe = Path(f"results/runs/{best_name}/config.yaml").read_text()
    header = (
        f"# The best trial of runs.{search.name}.search ({search.study_name}): {best_name}, "
        f"{search.objective.label} = {best.values[0]:.6g}.\n# Its full resolved recipe: use it as a recipe file.\n"
    )
    (out_dir / "best.yaml").write_text(header + recipe)
    method = read_recipe(f"results/runs/{best_name}/config.yaml").method
    (out_dir / "best_model.txt").write_text(final_model_dir(best_name, method) + "\n")
    (out_dir / "importances.json").write_text(json.dumps(importances(study, search, complete), indent=2) + "\n")
    (out_dir / "train_summary.json").write_text(json.dumps(search_cost(trials), indent=2) + "\n")
    return next(r for r in rows if r["trial"] == best_name)


def search_cost(trials: list[str]) -> dict:
    """The whole search's training cost (every trial's), in the keys of a run's train_summary.json: what the
    summary table's cost columns show for the search's row."""
    summaries = [json.loads((Path(trained_dir(t)) / "train_summary.json").read_text()) for t in trials]
    return {
        "trials": len(summaries),
        "wall_time_s": round(sum(s.get("wall_time_s") or 0.0 for s in summaries), 1),
        "gpu_hours": round(sum(s.get("gpu_hours") or 0.0 for s in summaries), 3),
    }


def _row(search: Search, name: str, trial, front: set[int]) -> dict:
    row = {"trial": name, "round": search.round_of(name), "number": None, "state": "MISSING"}
    row.update({key: None for key in search.space})
    row.update({"objective": None, "cost": None, "pareto": None})
    if trial is not None:
        row.update(number=trial.number, state=trial.state.name, **{k: trial.params.get(k) for k in search.space})
        if trial.values:
            row["objective"] = trial.values[0]
            row["cost"] = trial.values[1] if search.cost else None
            row["pareto"] = trial.number in front
    return row


def importances(study, search: Search, complete: list) -> dict[str, float]:
    """fANOVA importance of each parameter for the objective ({} with fewer than 3 finished trials or no
    parameter that varied)."""
    import optuna

    varied = [k for k in search.space if len({repr(t.params.get(k)) for t in complete}) > 1]
    if len(complete) < 3 or not varied:
        return {}
    evaluator = optuna.importance.FanovaImportanceEvaluator(seed=search.seed)
    found = optuna.importance.get_param_importances(
        study, evaluator=evaluator, params=varied, target=lambda t: t.values[0]
    )
    return {key: round(float(value), 4) for key, value in found.items()}
