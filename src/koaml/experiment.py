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


def final_model_dir(run: str, method: str) -> str:
    """The folder evaluated for a run: the merged model (LoRA/QLoRA) or the trained model (full)."""
    return f"results/runs/{run}/{'trained' if method == 'full' else 'merged'}"


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
class Run:
    name: str
    base: str  # a base model's name, or "run:<name>" to start from another run (multi-stage)
    recipe_path: str
    recipe: Recipe = field(hash=False)
    sweep: dict | None = field(default=None, hash=False)  # {"group": run name, "point": {dotted key: value}}
    replicate: dict | None = field(default=None, hash=False)  # {"group": run name, "index": 0.., "seed": int}
    search: str | None = None  # the search this run is a trial of (runs.<search>.search)
    checkpoint_eval: dict | None = field(default=None, hash=False)  # {"steps": [...], "benchmarks": [...]}

    @property
    def method(self) -> str:
        """'full', 'lora' or 'qlora'."""
        return self.recipe.method

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
    validation_benchmarks: dict[str, Benchmark] = field(default_factory=dict)  # searches' objectives, not reported

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
        """``<run>_adapter`` -> run, for the LoRA/QLoRA runs evaluated unmerged (``evaluate_adapters``)."""
        if not self.evaluate_adapters:
            return {}
        return {
            f"{name}{ADAPTER_SUFFIX}": name
            for name, run in self.runs.items()
            if run.method != "full" and run.search is None
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
        return self.runs[run].checkpoint_eval.get("benchmarks") or list(self.benchmarks)

    def benchmark(self, name: str) -> Benchmark:
        """A benchmark suite by name: one of the experiment's or a search's validation benchmark."""
        return self.benchmarks.get(name) or self.validation_benchmarks[name]
