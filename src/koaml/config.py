"""Load an experiment: validate its config, expand sweeps, load recipes and benchmarks, and check that
everything it names exists (local files, hub models in the cache) before any job starts.

Cheap to import (no torch): the Snakefile calls it on every parse.
"""

from __future__ import annotations

import copy
import difflib
import itertools
import logging
import math
import re
from dataclasses import replace
from pathlib import Path

from koaml.configfiles import (
    ConfigError,
    deep_merge,
    empty_sections,
    fill_defaults,
    load_yaml,
    schema,
    set_dotted,
    slug,
    typed,
    validate,
    warn,
)
from koaml.datafiles import check_local_data, warn_unused_target_column
from koaml.experiment import (
    MODEL_SOURCES,
    RUN_PREFIX,
    BaseModel,
    Benchmark,
    CheckpointEval,
    Experiment,
    Objective,
    Run,
    given_name,
    is_local_path,
)
from koaml.fetch import check_cached
from koaml.gguf import check as check_gguf
from koaml.recipe import Recipe, load_benchmark, load_recipe
from koaml.search import (
    OBJECTIVE_EVAL_LOSS,
    Search,
    check_sampler,
    check_space,
    grid_size,
    sizing_point,
    space_points,
    trial_name,
    with_point,
)
from koaml.shapes import check_benchmark_fits_model, check_recipe_fits_model, model_facts
from koaml.tasks import benchmark_index, check_benchmark, task_metrics
from koaml.tinymodel import load_spec

log = logging.getLogger("koaml")


def expand_sweep(name: str, spec: dict, source: str = "config") -> dict[str, dict]:
    """Run specs of a sweep, one per point of the grid, with readable deterministic names.

    ``{peft.lora_r: [4, 8]}`` on run ``rank`` gives ``rank_lora_r4`` and ``rank_lora_r8``. A value repeated in a
    list (``0.001`` and ``1.0e-3``) is swept once, with a warning; two values whose names would be the same
    (``x/a/b.jsonl`` and ``x/a-b.jsonl``) are an error: each asked-for point is a run.
    """
    sweep = spec.get("sweep")
    if not sweep:
        return {name: spec}
    sweep = {key: _distinct_values(values, f"{source}: runs.{name}.sweep.{key}") for key, values in sweep.items()}
    runs = {}
    for values in itertools.product(*sweep.values()):
        point = dict(spec, overrides=copy.deepcopy(spec.get("overrides", {})))
        point.pop("sweep")
        point["_sweep"] = {"group": name, "point": dict(zip(sweep, values, strict=True))}
        suffix = []
        for key, value in zip(sweep, values, strict=True):
            point["overrides"] = set_dotted(point["overrides"], key, value)
            suffix.append(f"{key.rsplit('.', 1)[-1]}{slug(str(value))}")
        run_name = f"{name}_{'_'.join(suffix)}"
        if run_name in runs:
            given, earlier = point["_sweep"]["point"], runs[run_name]["_sweep"]["point"]
            key = next(k for k in sweep if given[k] != earlier[k] or type(given[k]) is not type(earlier[k]))
            raise ConfigError(
                f"{source}: runs.{name}.sweep.{key}: the values {earlier[key]!r} and {given[key]!r} make the same run "
                f"name, {run_name}; sweep them as separate runs, each with its own name and overrides"
            )
        runs[run_name] = point
    return runs


def _distinct_values(values: list, key: str) -> list:
    """A sweep list's values without repeats (``0.001`` and ``1.0e-3`` are one value), warning about each repeat."""
    distinct = []
    for value in values:
        if any(value == seen and type(value) is type(seen) for seen in distinct):
            warn(f"{key}: {value!r} is given twice (or written two ways); it is swept once")
        else:
            distinct.append(value)
    return distinct


def expand_search(name: str, spec: dict) -> dict[str, dict]:
    """Run specs of a search's trials, ``<name>_t1`` .. ``<name>_t<n_trials>``: each is the run with the search's
    sizing point (its parameters are asked of Optuna later; see koaml.search)."""
    search = spec["search"]
    overrides = with_point(copy.deepcopy(spec.get("overrides", {})), sizing_point(search["space"]))
    trial = {k: v for k, v in spec.items() if k != "search"}
    return {
        trial_name(name, k): dict(trial, overrides=overrides, _search=name) for k in range(1, search["n_trials"] + 1)
    }


def _checkpoint_steps(name: str, given: str | dict, recipe: Recipe, source: str) -> list[int]:
    """The steps ``runs.<name>.checkpoint_eval`` evaluates before the run's last (the run's own evaluation is
    that one); planned before training, so ``every`` and ``all`` need ``training.max_steps``."""
    key = f"{source}: runs.{name}.checkpoint_eval"
    last = recipe.training.max_steps
    if given != "all" and ("every" in given) == ("steps" in given):
        raise ConfigError(f"{key}: give every: N or steps: [...] (or checkpoint_eval: all)")
    if given == "all" or "every" in given:
        every = recipe.training.save_steps if given == "all" else given["every"]
        if last <= 0:
            raise ConfigError(
                f"{key}: {'all' if given == 'all' else 'every'} needs training.max_steps in {recipe.source} (the steps "
                "are planned before training; epochs make a number of steps known only then); set max_steps, or "
                "list steps: [...]"
            )
        steps = list(range(every, last, every))
    else:
        steps = sorted(given["steps"])
        if last > 0 and steps[-1] >= last:
            raise ConfigError(
                f"{key}.steps: {steps[-1]} is not before the run's last step ({last}, training.max_steps): the run's "
                "own evaluation is its last step"
            )
    if not steps:
        raise ConfigError(f"{key}: no step before the run's last ({last}); evaluate every fewer steps")
    return steps


def _check_checkpoint_benchmarks(runs: dict[str, Run], benchmarks: dict, source: str) -> None:
    """Each run's ``checkpoint_eval.benchmarks`` names benchmarks of the experiment."""
    for run in runs.values():
        for i, bench in enumerate((run.checkpoint_eval.benchmarks if run.checkpoint_eval else None) or []):
            key = f"{run.checkpoint_eval.key}.benchmarks.{i}"
            _known(bench, list(benchmarks), key, source, "a benchmark of the experiment (a file stem)")


def _check_search(name: str, spec: dict, replicates: int, source: str) -> None:
    """A search's space and sampler make sense, and its trials are single runs: no sweep, no replicates."""
    key = f"{source}: runs.{name}.search"
    search = fill_defaults(spec["search"], schema("experiment")["$defs"]["search"])
    check_space(search["space"], f"{key}.space")
    check_sampler(search["sampler"], search["space"], key)
    if search["sampler"] == "grid" and search["n_trials"] > grid_size(search["space"]):
        raise ConfigError(
            f"{key}.n_trials: {search['n_trials']} trials, but the grid has {grid_size(search['space'])} points"
        )
    if "sweep" in spec:
        raise ConfigError(f"{source}: runs.{name}: give sweep or search, not both (a search's space can hold the grid)")
    if "checkpoint_eval" in spec:
        raise ConfigError(
            f"{source}: runs.{name}: checkpoint_eval of a search's trials is not supported; evaluate the best "
            f"trial's steps with a run of its recipe (results/search/{name}/best.yaml)"
        )
    if spec.get("replicates", replicates) > 1:
        raise ConfigError(
            f"{source}: runs.{name}.search: a search's trials are trained once each; set replicates: 1 on this run "
            f"(replicate the best trial afterwards: a run with recipe: results/search/{name}/best.yaml, replicates: N)"
        )


def expand_replicates(name: str, spec: dict, default: int) -> dict[str, dict]:
    """``replicates: N`` (the run's, else ``default``) makes N run specs ``<name>_rep1`` .. ``<name>_repN``;
    replicate k (from 0) trains with the recipe's seed + k. One replicate keeps the run as it is."""
    count = spec.get("replicates", default)
    spec = {k: v for k, v in spec.items() if k != "replicates"}
    if count == 1:
        return {name: spec}
    return {f"{name}_rep{k + 1}": dict(spec, _replicate={"group": name, "index": k}) for k in range(count)}


# The keys marking run specs that a run's sweep, replicates or search made, with how messages name them.
_GENERATED = {
    "_sweep": ("sweep", "makes", "a sweep point"),
    "_replicate": ("replicates", "make", "a replicate"),
    "_search": ("search", "makes", "a search trial"),
}
_TYPED = ("boolean", "integer", "number", "object")  # top-level keys whose --config strings are read as YAML
_NAME = schema("experiment")["$defs"]["name"]
NAME_PATTERN = _NAME["pattern"].strip("^$")  # what every model name matches
MAX_NAME_LENGTH = _NAME["maxLength"]  # names become file names and SLURM job names
# Snakemake refuses a wildcard value that ends in one substring repeated 20 times or more (it takes it for
# a rule matching its own output); the same pattern as snakemake.io.PeriodicityDetector.
_PERIODIC = re.compile(r"(.+)\1{19,99}$")


def _check_name(name: str, key: str, source: str) -> None:
    """A model name must fit a file name and must not look periodic to Snakemake."""
    if len(name) > MAX_NAME_LENGTH:
        raise ConfigError(f"{source}: {key}: '{name[:40]}...' has {len(name)} characters; at most {MAX_NAME_LENGTH}")
    if match := _PERIODIC.search(name):
        raise ConfigError(
            f"{source}: {key}: the name '{name}' ends in '{match.group(1)}' repeated {len(match.group(0)) // len(match.group(1))} "
            "times, which Snakemake refuses (it looks like a rule matching its own output); choose another name"
        )


def _check_case_collisions(names: dict[str, str], source: str) -> None:
    """Names (mapped to the key that makes them) become folder names: two that differ only in case are one folder
    on a case-insensitive filesystem (macOS, Windows), where results are often copied to."""
    seen: dict[str, str] = {}
    for name, key in names.items():
        other = seen.setdefault(name.casefold(), name)
        if other != name:
            raise ConfigError(
                f"{source}: the names '{other}' ({names[other]}) and '{name}' ({key}) differ only in case; their "
                "result folders would be one folder on a case-insensitive filesystem (macOS, Windows); rename one"
            )


def _check_grid_size(runs: dict, max_runs: int, replicates: int, n_benchmarks: int, source: str) -> None:
    """Refuse sweeps (times replicates) that make more than ``max_runs`` runs in all, before expanding them."""
    factors = {
        name: [len(v) for v in (spec.get("sweep") or {}).values()]
        + ([spec["search"]["n_trials"]] if "search" in spec else [])
        + [spec.get("replicates", replicates)]
        for name, spec in runs.items()
    }
    sizes = {name: math.prod(f) for name, f in factors.items()}
    total = sum(sizes.values())
    if total > max_runs:
        grids = ", ".join(
            f"runs.{name}: {' x '.join(str(n) for n in factors[name][:-1])}"
            + (f" x {factors[name][-1]} replicates" if factors[name][-1] > 1 else "")
            + f" = {n:,}"
            for name, n in sizes.items()
            if n > 1
        )
        jobs = total * (4 + n_benchmarks)
        raise ConfigError(
            f"{source}: the experiment makes {total:,} runs ({grids}), about {jobs:,} jobs (4 per run to train it, "
            f"plus {n_benchmarks} per run to evaluate it); more than max_runs: {max_runs}. Shrink the sweep, or "
            "raise max_runs in the experiment file if you mean it"
        )


def _check_step_evaluations(experiment: Experiment, limit: int, source: str) -> None:
    """Refuse checkpoint_eval steps that plan more than ``limit`` evaluations of kept steps in all."""
    counts: dict[str, list[int]] = {}  # per run of the experiment file: [runs, steps, evaluations]
    for name, run in experiment.runs.items():
        if run.checkpoint_eval:
            count = counts.setdefault(run.given_name, [0, len(run.checkpoint_eval.steps), 0])
            count[0] += 1
            count[2] += len(experiment.step_evaluations(name))
    total = sum(evaluations for _, _, evaluations in counts.values())
    if total > limit:
        per_run = ", ".join(
            f"runs.{name}: {steps:,} steps{f' x {runs} runs' if runs > 1 else ''} = {evaluations:,}"
            for name, (runs, steps, evaluations) in counts.items()
        )
        raise ConfigError(
            f"{source}: checkpoint_eval plans {total:,} evaluations of kept steps ({per_run}; each step on each of "
            f"its benchmarks, and a LoRA step merged first), more than max_step_evaluations: {limit}. Evaluate "
            "every more steps, or raise max_step_evaluations in the experiment file if you mean it"
        )


def _base_model(name: str, spec: dict, source: str) -> BaseModel:
    """A base model from its experiment entry: exactly one source (model_name, build or gguf)."""
    given = [key for key in MODEL_SOURCES if key in spec]
    if len(given) != 1:
        found = f"found {' and '.join(given)}" if given else "found none"
        raise ConfigError(
            f"{source}: base_models.{name}: give exactly one of model_name (hub ID or local path), build "
            f"(a tiny-model spec) or gguf (a GGUF file); {found}"
        )
    if "dtype" in spec and "gguf" not in spec:
        raise ConfigError(
            f"{source}: base_models.{name}.dtype: only used with gguf (the dtype of the converted weights)"
        )
    return BaseModel(
        name,
        spec.get("model_name"),
        spec.get("build"),
        spec.get("gguf"),
        spec.get("dtype", "float32"),
        where=f"{source}: base_models.{name}",
    )


def _check_model(model: BaseModel) -> BaseModel:
    """A base model's local files must exist (hub IDs are checked offline by koaml.fetch.check_cached); returns
    the model with its GGUF file resolved."""
    if model.gguf:
        return replace(model, gguf_file=str(check_gguf(model.gguf, f"{model.where}.gguf")))
    if model.model_name and model.model_name.lower().endswith(".gguf"):
        raise ConfigError(
            f"{model.where}.model_name: {model.model_name}: a GGUF file, which is not a model folder or hub ID; give "
            f"it as a base model's gguf (base_models: {{<name>: {{gguf: {model.model_name}}}}}, converted once by the "
            "workflow; package:<package>/<file> for one inside an installed package) and start the runs from it "
            "(base: <name>)"
        )
    if model.build and not Path(model.build).is_file():
        raise ConfigError(f"{model.where}.build: {model.build}: file not found")
    if model.build:
        load_spec(model.build)
    if model.model_name and is_local_path(model.model_name) and not Path(model.model_name).expanduser().exists():
        raise ConfigError(
            f"{model.where}.model_name: {model.model_name}: folder not found (a local path; hub IDs look like org/name)"
        )
    return model


def _replicate_base(spec: dict, groups: dict[str, list[str]], name: str, source: str) -> str | None:
    """A run's ``base``, where ``run:<group>`` of a replicated run becomes the replicate of the same index (a
    second stage with as many replicates chains each seed's first stage)."""
    base = spec.get("base")
    parent = base[len(RUN_PREFIX) :] if base and base.startswith(RUN_PREFIX) else None
    if parent not in groups:
        return base
    replicate = spec.get("_replicate")
    if replicate is None or len(groups[replicate["group"]]) != len(groups[parent]):
        raise ConfigError(
            f"{source}: runs.{(replicate or {}).get('group', name)}.base: run:{parent} has {len(groups[parent])} "
            f"replicates; give this run as many (replicates: {len(groups[parent])}: each starts from the replicate "
            f"of the same seed), or start from one of them (run:{groups[parent][0]})"
        )
    return RUN_PREFIX + groups[parent][replicate["index"]]


def _check_chains(runs: dict[str, Run], source: str) -> None:
    """Multi-stage references must name existing runs and must not loop."""
    for run in runs.values():
        seen = [run.name]
        parent = run.parent_run
        while parent is not None:
            if parent not in runs:
                key = f"{source}: runs.{runs[seen[-1]].given_name}.base"
                if points := _sweep_runs(parent, runs):
                    raise ConfigError(
                        f"{key}: run:{parent} is a sweep; start from one of its runs "
                        f"({', '.join('run:' + p for p in points)})"
                    )
                hint = difflib.get_close_matches(parent, list(runs), n=1)
                suggestion = f"; did you mean 'run:{hint[0]}'?" if hint else ""
                raise ConfigError(f"{key}: no run named '{parent}'{suggestion}")
            if parent in seen:
                raise ConfigError(f"{source}: runs.{run.name}.base: multi-stage cycle: {' -> '.join([*seen, parent])}")
            seen.append(parent)
            parent = runs[parent].parent_run


def _sweep_runs(name: str, runs: dict[str, Run]) -> list[str]:
    """The runs of sweep ``runs.<name>`` (none when ``name`` is no sweep)."""
    return [run.name for run in runs.values() if run.sweep and run.sweep["group"] == name]


def _known(name: str, names: list[str], key: str, source: str, what: str) -> str:
    """``name`` if it is one of ``names``, else a ConfigError at ``key`` with a did-you-mean."""
    if name not in names:
        hint = difflib.get_close_matches(name, names, n=1)
        suggestion = f"did you mean '{hint[0]}'?" if hint else f"expected one of: {', '.join(names)}"
        raise ConfigError(f"{source}: {key}: '{name}' is not {what}; {suggestion}")
    return name


def _comparisons(
    exp: Experiment, reference: str | None, extra: list[list[str]] | str, source: str
) -> list[tuple[str, str]]:
    """The summary's (reference, model) pairs: each run (and unmerged adapter) against the base model its chain
    starts from; base models against ``reference`` (default: the first) when there are no runs or a reference
    is given; then the experiment's own ``compare`` pairs (``all-pairs``: every two evaluated models)."""
    if extra == "all-pairs":
        models = exp.evaluated_models
        extra = [[a, b] for i, a in enumerate(models) for b in models[i + 1 :]]
    trained = {r: r for r in exp.reported_runs} | {s: trial_name(s, 1) for s in exp.searches} | exp.adapter_models
    pairs = [(exp.root_base(run), model) for model, run in trained.items()]
    if reference is not None:
        _known(reference, list(exp.base_models), "reference", source, "a base model")
    if exp.base_models and (reference is not None or not exp.runs):
        reference = reference or next(iter(exp.base_models))
        pairs += [(reference, base) for base in exp.base_models if base != reference]
    models, groups = exp.evaluated_models, exp.replicate_groups
    for i, (ref, model) in enumerate(extra):
        for j, name in enumerate((ref, model)):
            if name not in groups and (points := _sweep_runs(name, exp.runs)):
                raise ConfigError(
                    f"{source}: compare.{i}.{j}: '{name}' is a sweep; compare one of its runs ({', '.join(points)}), "
                    "one pair each"
                )
            if name not in groups:
                _known(
                    name, models, f"compare.{i}.{j}", source, "an evaluated model (a base model, run or <run>_adapter)"
                )
        if ref == model:
            raise ConfigError(f"{source}: compare.{i}: compares '{ref}' with itself")
        pairs += _replicate_pairs(ref, model, groups, f"compare.{i}", source)
    return list(dict.fromkeys(pairs))


def _replicate_pairs(ref: str, model: str, groups: dict[str, list[str]], key: str, source: str) -> list[tuple]:
    """A ``compare`` entry naming replicate groups: each replicate against the reference, or replicate k against
    replicate k when both are groups of the same size."""
    refs, models = groups.get(ref, [ref]), groups.get(model, [model])
    if len(refs) == 1:
        return [(refs[0], m) for m in models]
    if len(refs) != len(models):
        raise ConfigError(
            f"{source}: {key}: '{ref}' has {len(refs)} replicates and '{model}' {len(models)}; compare groups of the "
            f"same size (replicate k with replicate k), or name one replicate ({refs[0]})"
        )
    return list(zip(refs, models, strict=True))


def load_experiment(config: dict, source: str = "config") -> Experiment:
    """Validate a Snakemake ``config`` dict and resolve its runs (sweeps expanded), recipes and benchmarks.

    ``source`` names the config file(s), comma-separated; existing ones are re-read to catch duplicate
    keys (two runs of the same name), which the YAML parser Snakemake uses silently merges. Offline,
    the hub models and datasets must be in the cache (:func:`koaml.fetch.check_cached`).
    The stages read like the pipeline in docs/architecture.md.
    """
    config = _validated(config, source)
    bases = _base_models(config["base_models"], source)
    specs = _expand_runs(config, source)
    for name in bases:
        _check_name(name, f"base_models.{name}", source)
    runs = _build_runs(specs, config["recipe_overrides"], bases, source)
    clash = sorted(set(bases) & set(runs))
    if clash:
        raise ConfigError(f"{source}: names used for both a base model and a run: {', '.join(clash)}")
    _check_case_collisions(
        {
            **{name: base.where.removeprefix(f"{source}: ") for name, base in bases.items()},
            **{name: f"runs.{run.given_name}" for name, run in runs.items()},
        },
        source,
    )
    benchmarks = _load_benchmarks(config["benchmarks"], config["benchmark_overrides"], source)
    searches, validation = _searches(config, runs, benchmarks, source)
    runs = _selections(config, runs, benchmarks, validation, source)
    _check_checkpoint_benchmarks(runs, benchmarks, source)
    experiment = Experiment(
        config["experiment"],
        bases,
        runs,
        benchmarks,
        config["evaluate_base"],
        config["evaluate_adapters"],
        statistics=config["statistics"],
        group_by_model=config["evaluation"]["group_by_model"],
        searches=searches,
        validation_benchmarks=validation,
    )
    _check_fit(experiment)
    _check_step_evaluations(experiment, config["max_step_evaluations"], source)
    clash = sorted(set(experiment.adapter_models) & (set(bases) | set(runs)))
    if clash:
        raise ConfigError(f"{source}: evaluate_adapters: the names {', '.join(clash)} are taken by other models")
    if not experiment.evaluated_models:
        raise ConfigError(f"{source}: nothing to evaluate: give base_models (with evaluate_base: true) or runs")
    experiment.comparisons = _comparisons(experiment, config.get("reference"), config["compare"], source)
    check_cached(experiment, source)
    return experiment


def _validated(config: dict, source: str) -> dict:
    """The experiment config checked against its schema (after re-reading its files for duplicate keys), with
    ``--config`` strings typed and defaults filled in."""
    for path in source.split(", "):
        if Path(path).is_file():
            load_yaml(path)
    properties = schema("experiment")["properties"]
    config = {  # `snakemake --config evaluate_base=false` passes a string, `--config recipe_overrides=...` YAML
        key: typed(value, key) if properties.get(key, {}).get("type") in _TYPED else value
        for key, value in config.items()
    }
    config = empty_sections(config, "experiment")
    validate(config, "experiment", source)
    return fill_defaults(config, schema("experiment"))


def _base_models(specs: dict, source: str) -> dict[str, BaseModel]:
    """The ``base_models`` section, each checked (a GGUF file, a local folder, a hub ID)."""
    return {name: _check_model(_base_model(name, spec, source)) for name, spec in specs.items()}


def _expand_runs(config: dict, source: str) -> dict[str, dict]:
    """The run specs by run name, sweeps, searches and replicates expanded (sizes checked before expanding)."""
    _check_grid_size(config["runs"], config["max_runs"], config["replicates"], len(config["benchmarks"]), source)
    specs: dict[str, dict] = {}
    for name, spec in config["runs"].items():
        if "search" in spec:
            _check_search(name, spec, config["replicates"], source)
        _warn_replaced_overrides(name, spec, source)
        for point_name, point in (
            expand_search(name, spec) if "search" in spec else expand_sweep(name, spec, source)
        ).items():
            for run_name, run_spec in expand_replicates(point_name, point, config["replicates"]).items():
                generated = next((key for key in _GENERATED if key in run_spec), None)
                kind = _GENERATED.get(generated, ("replicates", "make", ""))[2]
                if run_name in specs:
                    _name_clash(name, run_name, generated, specs[run_name], source)
                kind = f" ({kind})" if kind else ""
                _check_name(run_name, f"runs.{name}{kind}", source)
                specs[run_name] = run_spec
    return specs


def _warn_replaced_overrides(name: str, spec: dict, source: str) -> None:
    """Warn of each key of a run's sweep or search space that its ``overrides`` set too: the sweep's values or the
    trial's parameter replace the override's."""
    kind = "sweep" if spec.get("sweep") else "search.space" if "search" in spec else None
    if kind is None:
        return
    for key in spec["sweep"] if kind == "sweep" else spec["search"]["space"]:
        node = spec.get("overrides") or {}
        for part in key.split("."):
            node = node.get(part, _UNSET) if isinstance(node, dict) else _UNSET
        if node is not _UNSET:
            warn(
                f"{source}: runs.{name}.{kind}.{key} replaces runs.{name}.overrides.{key} ({node!r}) in every "
                f"{'run' if kind == 'sweep' else 'trial'}; remove one of them"
            )


_UNSET = object()


def _name_clash(name: str, run_name: str, generated: str | None, earlier: dict, source: str) -> None:
    """Raise the error of ``runs.<name>`` making ``run_name``, which an earlier run spec ``earlier`` made: named
    by what generated the name (a sweep, replicates or a search), the later run's or the earlier one's."""
    if generated is not None:
        what, verb, _ = _GENERATED[generated]
        raise ConfigError(f"{source}: runs: {what} of '{name}' {verb} a run name that exists already: {run_name}")
    maker = next((key for key in _GENERATED if key in earlier), "_replicate")
    what, verb, kind = _GENERATED[maker]
    raise ConfigError(
        f"{source}: runs.{name}: the name is {kind} that the {what} of '{_given_name(run_name, earlier)}' {verb} "
        f"({run_name}); rename the run"
    )


def _build_runs(specs: dict[str, dict], recipe_overrides: dict, bases: dict[str, BaseModel], source: str) -> dict:
    """Each run with its recipe loaded (overrides applied, a replicate's seed set), its base resolved (adding the
    base models that recipes name) and its local data checked."""
    groups = {spec["_replicate"]["group"]: [] for spec in specs.values() if "_replicate" in spec}
    for run_name, spec in specs.items():
        if "_replicate" in spec:
            groups[spec["_replicate"]["group"]].append(run_name)
    runs: dict[str, Run] = {}
    trial_recipes: dict[str, Recipe] = {}  # a search's trials share one recipe (its sizing point): load it once
    for name, spec in specs.items():
        search = spec.get("_search")
        overrides = deep_merge(recipe_overrides, typed(spec.get("overrides") or {}, f"runs.{name}.overrides"))
        if search in trial_recipes:
            runs[name] = replace(runs[trial_name(search, 1)], name=name)
            continue
        recipe, checkpoint_eval, replicate = _run_recipe(name, spec, overrides, source)
        if search:
            trial_recipes[search] = recipe
        base = _resolve_base(name, spec, recipe, groups, bases, source)
        runs[name] = Run(name, base, spec["recipe"], recipe, spec.get("_sweep"), replicate, search, checkpoint_eval)
        formats = check_local_data(recipe, spec["recipe"])
        if "data.target_column" in recipe.given:
            warn_unused_target_column(formats, spec["recipe"])
    searches = {run.search for run in runs.values()} - {None}
    for run in runs.values():
        if run.parent_run in searches:
            raise ConfigError(
                f"{source}: runs.{run.given_name}.base: run:{run.parent_run} is a search; start from its best trial's recipe "
                f"(results/search/{run.parent_run}/best.yaml) or from one trial (run:{trial_name(run.parent_run, 1)})"
            )
    _check_chains(runs, source)
    _warn_ignored_model_names(runs, bases)
    return runs


def _warn_ignored_model_names(runs: dict[str, Run], bases: dict[str, BaseModel]) -> None:
    """A run with a ``base`` trains from that model, a later stage from the run it continues: warn where the
    recipe's ``model.model_name`` names another model, which is then not used. The model is known by the hub ID
    or folder of the chain's base model, or (built or GGUF) by the model_name of the earlier stages' recipes."""
    for run in runs.values():
        given, earlier, root = run.recipe.model.model_name, [], run
        while root.parent_run:
            root = runs[root.parent_run]
            earlier.append(root.recipe.model.model_name)
        base = bases[root.base].model_name
        used = base or next(filter(None, earlier), None)
        if given and used and not _same_model(given, used):
            if not earlier:
                start = f"starts from {used}"
            else:
                by = "trained from" if base else "whose recipe names"
                start = f"continues run:{runs[run.parent_run].given_name} ({by} {used})"
            warn(
                f"{run.recipe_path}: model.model_name: {given} ignored by runs.{run.given_name}, which {start}; "
                "a recipe's model_name is used only by runs without a base"
            )


def _same_model(a: str, b: str) -> bool:
    """Whether two model names are one model: the same hub ID, or paths to the same local folder."""
    folders = [Path(name).expanduser() for name in (a, b)]
    return a == b or (all(f.exists() for f in folders) and folders[0].resolve() == folders[1].resolve())


def _run_recipe(
    name: str, spec: dict, overrides: dict, source: str
) -> tuple[Recipe, CheckpointEval | None, dict | None]:
    """A run's recipe with its overrides, the steps its checkpoint_eval keeps (``training.keep_checkpoints``) and a
    replicate's seed; with the run's checkpoint_eval and replicate records."""
    search = spec.get("_search")
    try:
        recipe = load_recipe(spec["recipe"], overrides)
    except ConfigError as error:
        if not search:
            raise
        raise ConfigError(f"{source}: runs.{search}.search.space: the trials' recipe is invalid: {error}") from None
    checkpoint_eval = None
    group = _given_name(name, spec)
    if "select_checkpoint" in spec and "checkpoint_eval" not in spec:
        raise ConfigError(
            f"{source}: runs.{group}.select_checkpoint chooses among the steps checkpoint_eval keeps; add "
            "checkpoint_eval (e.g. every: 100) to this run"
        )
    if "checkpoint_eval" in spec:
        steps = _checkpoint_steps(group, spec["checkpoint_eval"], recipe, source)
        overrides = deep_merge(overrides, {"training": {"keep_checkpoints": steps}})
        recipe = load_recipe(spec["recipe"], overrides)
        given = spec["checkpoint_eval"] if spec["checkpoint_eval"] != "all" else {}
        key = f"runs.{group}.checkpoint_eval"
        checkpoint_eval = CheckpointEval(steps, given.get("benchmarks"), key, spec.get("select_checkpoint"))
    replicate = spec.get("_replicate")
    if replicate:
        seed = recipe.training.seed + replicate["index"]
        recipe = load_recipe(spec["recipe"], deep_merge(overrides, {"training": {"seed": seed}}))
        replicate = {**replicate, "seed": seed}
    return recipe, checkpoint_eval, replicate


def _given_name(name: str, spec: dict) -> str:
    """The name the experiment file gives run spec ``name`` (a sweep's, replicates' or search's)."""
    return given_name(name, spec.get("_sweep"), spec.get("_replicate"), spec.get("_search"))


def _resolve_base(name: str, spec: dict, recipe: Recipe, groups: dict, bases: dict[str, BaseModel], source: str) -> str:
    """The base a run trains from: its ``base`` (a base model or ``run:<name>``), a replicate group's, or the base
    model its recipe's ``model.model_name`` names (added to ``bases`` when new)."""
    base = _replicate_base(spec, groups, name, source)
    name = _given_name(name, spec)
    if base is None:
        model_name = recipe.model.model_name
        if not model_name:
            raise ConfigError(f"{source}: runs.{name}: no 'base' given and {spec['recipe']} has no model.model_name")
        base = next((b.name for b in bases.values() if b.model_name == model_name), slug(model_name))
        if base not in bases:
            bases[base] = _check_model(BaseModel(base, model_name=model_name, where=f"{spec['recipe']}: model"))
    elif not base.startswith(RUN_PREFIX) and base not in bases:
        hint = difflib.get_close_matches(base, list(bases), n=1)
        suggestion = (
            f"did you mean '{hint[0]}'?" if hint else f"expected one of: {', '.join(bases) or '(none defined)'}"
        )
        raise ConfigError(f"{source}: runs.{name}.base: unknown base model '{base}'; {suggestion} (or run:<name>)")
    return base


def _load_benchmarks(paths: list[str], overrides: dict, source: str) -> dict[str, Benchmark]:
    """Each benchmark file, named by its stem, loaded with the overrides and its tasks' protocols checked."""
    benchmarks: dict[str, Benchmark] = {}
    for path in paths:
        name = Path(path).stem
        if name in benchmarks:
            raise ConfigError(f"{source}: benchmarks: two files are named '{name}' ({benchmarks[name].path}, {path})")
        if not re.match(_NAME["pattern"], name):
            raise ConfigError(f"{source}: benchmarks: file name '{name}': expected {_NAME['description']}")
        _check_name(name, f"benchmarks: {path}", source)
        _check_case_collisions(
            {**{b.name: f"benchmarks: {b.path}" for b in benchmarks.values()}, name: f"benchmarks: {path}"}, source
        )
        benchmarks[name] = Benchmark(name, path, load_benchmark(path, overrides))
        check_benchmark(path, benchmarks[name].config)
    return benchmarks


def _searches(
    config: dict, runs: dict[str, Run], benchmarks: dict[str, Benchmark], source: str
) -> tuple[dict[str, Search], dict[str, Benchmark]]:
    """Each run's ``search`` checked (its space's every bound loads as a recipe, its objective exists), and the
    validation benchmarks the objectives name."""
    searches: dict[str, Search] = {}
    validation: dict[str, Benchmark] = {}
    for name, spec in config["runs"].items():
        if "search" not in spec:
            continue
        key = f"{source}: runs.{name}.search"
        given = fill_defaults(spec["search"], schema("experiment")["$defs"]["search"])
        if "startup_trials" in given and given["sampler"] != "tpe":
            log.warning("%s.startup_trials: ignored with sampler %s (a tpe setting)", key, given["sampler"])
        overrides = deep_merge(config["recipe_overrides"], typed(spec.get("overrides") or {}, f"runs.{name}.overrides"))
        recipe = load_recipe(spec["recipe"], overrides)
        for point in space_points(given["space"]):
            try:
                check_local_data(load_recipe(spec["recipe"], with_point(overrides, point)), spec["recipe"])
            except ConfigError as error:
                raise ConfigError(f"{key}.space: the point {point} gives an invalid recipe: {error}") from None
        objective = _objective(given["objective"], recipe, benchmarks, validation, config, source, name)
        searches[name] = Search(
            name,
            given["space"],
            objective,
            given["n_trials"],
            given["parallel"],
            given["sampler"],
            given["seed"],
            given.get("startup_trials", given["parallel"]),
            given.get("cost"),
            spec["recipe"],
            overrides,
            recipe.as_dict(),
        )
    return searches, validation


def _objective(
    given: str | dict, recipe: Recipe, benchmarks: dict, validation: dict, config: dict, source: str, run: str
) -> Objective:
    """A search's objective: eval_loss (the recipe must hold out an eval split) or a validation benchmark's metric."""
    key = f"runs.{run}.search.objective"
    if given == OBJECTIVE_EVAL_LOSS and recipe.trainer.eval_loss_meaningless:
        raise ConfigError(
            f"{source}: {key}: eval_loss does not measure a {recipe.trainer_type} model: "
            f"{recipe.trainer.eval_loss_meaningless}; choose by a validation benchmark's metric instead, e.g. "
            "objective: {benchmark: <file>, metric: exact_match}"
        )
    if given == OBJECTIVE_EVAL_LOSS:
        if recipe.data.eval_fraction <= 0 and recipe.data.eval_dataset is None:
            raise ConfigError(
                f"{source}: {key}: eval_loss needs an eval split: set data.eval_fraction (e.g. 0.05) or "
                f"data.eval_dataset in {recipe.source}"
            )
        return Objective(OBJECTIVE_EVAL_LOSS, "minimize")
    return _benchmark_metric(given, benchmarks, validation, config, source, key, "the best trial")


def _benchmark_metric(
    given: dict, benchmarks: dict, validation: dict, config: dict, source: str, key: str, chosen: str
) -> Objective:
    """A metric of a validation benchmark's task to choose ``chosen`` by (a search's objective, a run's
    select_checkpoint): its file loaded into ``validation`` unless it is one of the experiment's benchmarks, which
    is warned about (choosing by a reported benchmark inflates its score)."""
    path = given["benchmark"]
    name = Path(path).stem
    if name in benchmarks:
        if Path(benchmarks[name].path).resolve() != Path(path).resolve():
            raise ConfigError(
                f"{source}: {key}.benchmark: {path} has the name '{name}' of the experiment's {benchmarks[name].path}"
            )
        bench = benchmarks[name]
        log.warning(
            "%s: %s.benchmark: %s is also one of the experiment's benchmarks: choosing %s by it and then reporting it "
            "is selection bias (the reported score is inflated; the table marks its rows); use a validation benchmark "
            "(another split, or other items)",
            source, key, path, chosen,
        )  # fmt: skip
    elif name in validation:
        bench = validation[name]
    else:
        if not Path(path).is_file():
            raise ConfigError(f"{source}: {key}.benchmark: {path}: file not found")
        bench = _load_benchmarks([path], config["benchmark_overrides"], f"{source}: {key}")[name]
        validation[name] = bench
    tasks = bench.config.task_names
    task = given.get("task") or (tasks[0] if len(tasks) == 1 else None)
    if task is None:
        raise ConfigError(
            f"{source}: {key}.task: {path} has several tasks ({', '.join(tasks)}); name the one to choose by"
        )
    _known(task, tasks, f"{key}.task", source, f"a task of {path}")
    direction = _metric_direction(given, task, bench, f"{source}: {key}")
    return Objective(given["metric"], direction, name, task, given.get("filter"))


def _metric_direction(given: dict, task: str, bench: Benchmark, key: str) -> str:
    """The direction to choose by: the given one, else lm-eval's ``higher_is_better`` of the metric (maximize
    where it is not declared). The metric and filter must be ones the task reports, and a given direction must
    agree with ``higher_is_better``: minimizing an accuracy would choose the worst."""
    index = benchmark_index(bench.path, bench.config)
    found = task_metrics(task, index) if index is not None else None
    if found is None:  # a group, a Python task, metrics given as functions: known only when the task runs
        return given.get("direction", "maximize")
    metrics, filters = found
    metric, kind = given["metric"], f"lm-eval task '{task}' (of {bench.path})"
    if metric not in metrics:
        hint = difflib.get_close_matches(metric, list(metrics), n=1)
        raise ConfigError(
            f"{key}.metric: '{metric}' is not a metric of {kind}; "
            + (f"did you mean '{hint[0]}'? " if hint else "")
            + f"it reports: {', '.join(metrics)}"
        )
    if "filter" in given and given["filter"] not in filters:
        hint = difflib.get_close_matches(given["filter"], filters, n=1)
        raise ConfigError(
            f"{key}.filter: '{given['filter']}' is not a filter of {kind}; "
            + (f"did you mean '{hint[0]}'? " if hint else "")
            + f"it has: {', '.join(filters)}"
        )
    if "filter" not in given and len(filters) > 1:
        raise ConfigError(
            f"{key}.filter: {kind} reports '{metric}' under several filters ({', '.join(filters)}); name one"
        )
    better = metrics[metric]
    if better is None:
        return given.get("direction", "maximize")
    follows = "maximize" if better else "minimize"
    if given.get("direction", follows) != follows:
        raise ConfigError(
            f"{key}.direction: {given['direction']} would choose the worst: lm-eval's '{metric}' of task '{task}' is "
            f"{'higher' if better else 'lower'}-is-better (higher_is_better: {str(better).lower()}); remove direction "
            "(it follows the metric)"
        )
    return follows


def _selections(config: dict, runs: dict[str, Run], benchmarks: dict, validation: dict, source: str) -> dict:
    """Each run's ``select_checkpoint`` checked into an Objective (once per sweep or replicate group), adding its
    validation benchmark to ``validation``."""
    checked: dict[str, Objective] = {}
    for name, run in runs.items():
        given = run.checkpoint_eval.select if run.checkpoint_eval else None
        if not isinstance(given, dict):
            continue
        key = run.checkpoint_eval.key.replace(".checkpoint_eval", ".select_checkpoint")
        if key not in checked:
            checked[key] = _benchmark_metric(given, benchmarks, validation, config, source, key, "the checkpoint")
        runs[name] = replace(run, checkpoint_eval=replace(run.checkpoint_eval, select=checked[key]))
    return runs


def _check_fit(experiment: Experiment) -> None:
    """Each recipe and benchmark fits the models it is used with (LoRA targets, position limit): every base
    model's facts are known before any job runs (koaml.shapes.model_facts), but an uncached hub model's."""
    bases = experiment.base_models
    facts = {name: model_facts(base) for name, base in bases.items()}
    for name, run in experiment.runs.items():
        root = experiment.root_base(name)
        if facts[root] is not None:
            check_recipe_fits_model(
                run.recipe, facts[root], _model_label(bases[root]), f"{run.recipe_path} (run {name})"
            )
    for name, base in bases.items():  # every evaluated model has one of these architectures
        if facts[name] is not None:
            for bench in experiment.benchmarks.values():
                check_benchmark_fits_model(
                    bench.config, facts[name], _model_label(base), f"{bench.path} (evaluating {name})"
                )


def _model_label(base: BaseModel) -> str:
    """How messages name a base model: its hub ID or folder, or the file the workflow builds or converts it from."""
    return base.model_name or base.build or base.gguf
