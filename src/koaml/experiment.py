"""What an experiment is made of: base models, training runs, benchmark suites, and the experiment itself.

Plain typed records, built by :func:`koaml.config.load_experiment` once the configs are valid.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from koaml.recipe import BenchmarkSuite, Recipe


def evaluation_dir(model: str, bench: str) -> str:
    """Where the evaluation of ``model`` on the benchmark suite ``bench`` is written."""
    return f"results/eval/{model}/{bench}"


def step_eval_dir(run: str, step: str, bench: str) -> str:
    """Where the evaluation of a run's step (a number, or ``final``) on a benchmark is written."""
    return f"results/checkpoint_eval/{run}/{step}/{bench}"


def final_model_dir(run: str, method: str) -> str:
    """A run's model at its last step: the merged model (LoRA/QLoRA) or the trained model (full)."""
    return f"results/runs/{run}/{'trained' if method == 'full' else 'merged'}"


SELECTED = "selected"  # results/runs/<run>/selected: the step select_checkpoint chose (its model files)
# A run's model folders, in the order they stand for the run: the chosen step, else the last step's.
MODEL_FOLDERS = (SELECTED, "merged", "trained")
FINAL_STEP = "final"  # the last step's name among a run's evaluated steps (its number is known once trained)


MODEL_SOURCES = ("model_name", "build", "gguf")


@dataclass(frozen=True)
class BaseModel:
    name: str
    model_name: str | None = None  # hub ID or local path
    build: str | None = None  # tiny-model spec the workflow builds
    gguf: str | None = None  # GGUF file (or package:<pkg>/<file>) the workflow converts
    dtype: str = "float32"  # of the weights converted from GGUF
    gguf_file: str | None = None  # the GGUF file ``gguf`` names, once checked
    where: str = field(default="", compare=False)  # "<file>: <key>" that defines it, for messages

    @property
    def built_by_workflow(self) -> bool:
        """True when a rule makes the model folder (``build`` or ``gguf``), not the user or the hub."""
        return bool(self.build or self.gguf)

    @property
    def location(self) -> str:
        """Where the model loads from: the folder the workflow builds or converts, or the hub ID / local path."""
        return f"results/base/{self.name}/model" if self.built_by_workflow else self.model_name

    @property
    def from_hub(self) -> bool:
        """True for a hub ID (a ``model_name`` that is not an existing local folder)."""
        return bool(self.model_name) and not Path(self.model_name).expanduser().exists()


def is_local_path(model_name: str) -> bool:
    """True when ``model_name`` can only be a local path: hub IDs are ``name`` or ``org/name``."""
    return Path(model_name).is_absolute() or model_name.startswith((".", "~")) or model_name.count("/") > 1


RUN_PREFIX = "run:"
ADAPTER_SUFFIX = "_adapter"


@dataclass(frozen=True)
class Objective:
    """What a search optimizes or select_checkpoint chooses by: ``eval_loss`` (from training; searches only) or a
    metric of a validation benchmark's task."""

    metric: str
    direction: str
    benchmark: str | None = None  # the validation benchmark's name (its file's stem)
    task: str | None = None
    filter: str | None = None

    @property
    def label(self) -> str:
        if self.benchmark is None:
            return self.metric
        task = "" if self.task == self.benchmark else f"{self.task}/"
        return f"{self.benchmark}/{task}{self.metric}"


@dataclass(frozen=True)
class CheckpointEval:
    """``runs.<name>.checkpoint_eval`` (and ``select_checkpoint``) of a run."""

    steps: list[int]  # the kept steps, before the last
    benchmarks: list[str] | None  # names of the experiment's benchmarks; None: all of them
    key: str  # runs.<name>.checkpoint_eval, for messages
    select: Objective | dict | None = None  # select_checkpoint: the given dict until checked into an Objective


def given_name(name: str, sweep: dict | None, replicate: dict | None, search: str | None) -> str:
    """The name in the experiment file of run ``name``, made by a sweep, replicates or a search (their records)."""
    return (sweep or {}).get("group") or (replicate or {}).get("group") or search or name


@dataclass(frozen=True)
class Run:
    name: str
    base: str  # a base model's name, or "run:<name>" to start from another run (multi-stage)
    recipe_path: str
    recipe: Recipe = field(hash=False)
    sweep: dict | None = field(default=None, hash=False)  # {"group": run name, "point": {dotted key: value}}
    replicate: dict | None = field(default=None, hash=False)  # {"group": run name, "index": 0.., "seed": int}
    search: str | None = None  # the search this run is a trial of (runs.<search>.search)
    checkpoint_eval: CheckpointEval | None = field(default=None, hash=False)

    @property
    def method(self) -> str:
        """'full', 'lora' or 'qlora'."""
        return self.recipe.method

    @property
    def given_name(self) -> str:
        """The name the experiment file gives the run: a sweep's, replicates' or search's for the runs they make."""
        return given_name(self.name, self.sweep, self.replicate, self.search)

    @property
    def selection(self) -> Objective | None:
        """What select_checkpoint chooses the run's model by, if it does."""
        return self.checkpoint_eval.select if self.checkpoint_eval else None

    @property
    def model_dir(self) -> str:
        """The folder that stands for the run: its chosen step (select_checkpoint), else its last step's model."""
        return f"results/runs/{self.name}/{SELECTED}" if self.selection else final_model_dir(self.name, self.method)

    @property
    def parent_run(self) -> str | None:
        """The run this one starts from, for multi-stage training."""
        return self.base[len(RUN_PREFIX) :] if self.base.startswith(RUN_PREFIX) else None


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: str
    config: BenchmarkSuite = field(hash=False)


@dataclass
class Experiment:
    name: str
    base_models: dict[str, BaseModel]
    runs: dict[str, Run]
    benchmarks: dict[str, Benchmark]
    evaluate_base: bool = True
    evaluate_adapters: bool = False
    comparisons: list[tuple[str, str]] = field(default_factory=list)  # (reference, model) rows of the summary
    statistics: dict = field(default_factory=dict)  # the comparison's correction, alpha and power
    group_by_model: bool = False  # one evaluation job per model, for all its benchmarks (evaluation.group_by_model)
    searches: dict = field(default_factory=dict)  # runs.<name>.search by name (koaml.search.Search); trials are runs
    # what searches and select_checkpoint choose by, when not one of the reported benchmarks
    validation_benchmarks: dict[str, Benchmark] = field(default_factory=dict)

    @property
    def replicate_groups(self) -> dict[str, list[str]]:
        """Runs trained with several seeds: group name -> its replicate runs, in seed order."""
        groups: dict[str, list[str]] = {}
        for run in self.runs.values():
            if run.replicate:
                groups.setdefault(run.replicate["group"], []).append(run.name)
        return groups

    def root_base(self, run: str) -> str:
        """The base model at the start of a run's (possibly multi-stage) chain."""
        while (parent := self.runs[run].parent_run) is not None:
            run = parent
        return self.runs[run].base

    @property
    def adapter_models(self) -> dict[str, str]:
        """``<run>_adapter`` -> run, for the LoRA/QLoRA runs evaluated unmerged (``evaluate_adapters``): the adapter
        of the step that stands for the run (select_checkpoint's, else the last). ``<search>_adapter`` -> the
        search's first trial (every trial trains from its base): its best trial's adapter."""
        if not self.evaluate_adapters:
            return {}
        runs = {name: name for name, run in self.runs.items() if run.search is None}
        trials = {name: search.trials[0] for name, search in self.searches.items()}
        return {
            f"{name}{ADAPTER_SUFFIX}": run for name, run in (runs | trials).items() if self.runs[run].method != "full"
        }

    @property
    def reported_runs(self) -> list[str]:
        """The runs evaluated on the experiment's benchmarks: all but the searches' trials."""
        return [name for name, run in self.runs.items() if run.search is None]

    @property
    def evaluated_models(self) -> list[str]:
        """Names of every model evaluated on the experiment's benchmarks: the bases (if enabled), the runs, each
        search's best trial (under the search's name), the unmerged adapters."""
        bases = list(self.base_models) if self.evaluate_base else []
        return bases + self.reported_runs + list(self.searches) + list(self.adapter_models)

    def checkpoint_benchmarks(self, run: str) -> list[str]:
        """The benchmarks a run's kept steps are evaluated on (checkpoint_eval.benchmarks, default: all)."""
        return self.runs[run].checkpoint_eval.benchmarks or list(self.benchmarks)

    def step_evaluations(self, run: str) -> list[tuple[str, str]]:
        """(step, benchmark) of each evaluation of a run's steps: its kept steps on its checkpoint benchmarks; with
        select_checkpoint, on the validation benchmark too, and the last step (``final``) as well, since the run's
        own evaluations are then the chosen step's."""
        spec = self.runs[run].checkpoint_eval
        if spec is None:
            return []
        benches = self.checkpoint_benchmarks(run)
        steps = [str(step) for step in spec.steps]
        if spec.select:
            benches = benches + [spec.select.benchmark] * (spec.select.benchmark not in benches)
            steps.append(FINAL_STEP)
        return [(step, bench) for step in steps for bench in benches]

    def benchmark(self, name: str) -> Benchmark:
        """A benchmark suite by name: one of the experiment's or a validation benchmark."""
        return self.benchmarks.get(name) or self.validation_benchmarks[name]
