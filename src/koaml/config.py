"""Load and validate experiment, recipe and benchmark configs.

Everything here is cheap to import (no torch): the Snakefile calls it on every parse.
Errors are :class:`ConfigError` naming the file, the key and what was expected; keys the workflow
accepts but does not use are warnings (logger ``koaml.config``).
"""

from __future__ import annotations

import copy
import difflib
import itertools
import json
import logging
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMAS = ("experiment", "recipe", "benchmark")
IGNORED = "Ignored: "  # starts the schema description of a key the guide's configs have but the workflow does not use

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration problem, found before any job starts."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``3e-4`` (PyYAML reads them as strings),
    and rejects duplicate keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key '{key}'", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.\d*)?[eE][-+]?\d+$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def load_yaml(path: str | Path) -> Any:
    """Parse a YAML file, raising ConfigError with the file (and line) on failure."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found")
    return copy.deepcopy(_parse_yaml(path, path.stat().st_mtime_ns))


@lru_cache(maxsize=256)
def _parse_yaml(path: Path, mtime_ns: int) -> Any:
    """The parsed file, once per version (an experiment's runs often share one recipe)."""
    try:
        return yaml.load(path.read_text(encoding="utf-8"), Loader=_Loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None


@lru_cache(maxsize=None)
def schema(name: str) -> dict:
    """The JSON schema ``name`` (one of SCHEMAS), shipped inside the package."""
    return json.loads(resources.files("koaml.schemas").joinpath(f"{name}.schema.json").read_text())


def _key_path(path) -> str:
    return ".".join(str(p) for p in path) or "(top level)"


def _describe(error: jsonschema.ValidationError) -> str:
    """One readable line for a schema error: the key, then what was expected."""
    where = _key_path(error.absolute_path)
    if error.validator == "additionalProperties":
        allowed = sorted(error.schema.get("properties", {}))
        unknown = sorted(set(error.instance) - set(allowed))
        parts = []
        for key in unknown:
            hint = difflib.get_close_matches(key, allowed, n=1)
            suggestion = f"did you mean '{hint[0]}'?" if hint else f"expected one of: {', '.join(allowed)}"
            parts.append(f"{_key_path([*error.absolute_path, key])}: unknown key; {suggestion}")
        return "\n".join(parts)
    if error.validator == "enum":
        return f"{where}: {error.instance!r} is not allowed; expected one of: {', '.join(map(str, error.validator_value))}"
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "pattern":
        return f"{where}: {error.instance!r}: expected {error.schema.get('description', 'to match ' + error.validator_value)}"
    if error.validator == "oneOf" and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return f"{where}: {best.message}"
    if error.validator == "not":
        return f"{where}: {error.instance!r} is not allowed ({error.schema.get('description', 'see the schema')})"
    return f"{where}: {error.message}"


def _fail(schema_name: str, source: str | Path, problems: list[str]) -> None:
    """Raise one ConfigError listing ``problems`` (lines ``key: what is wrong``) of a file, if any."""
    if problems:
        lines = "\n".join(f"  {source}: {p}" for p in problems)
        raise ConfigError(f"invalid {schema_name} config:\n{lines}")


def validate(data: Any, schema_name: str, source: str | Path) -> None:
    """Validate ``data`` against a schema, raising one ConfigError that lists every problem."""
    validator = jsonschema.Draft202012Validator(schema(schema_name))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    _fail(schema_name, source, [line for e in errors for line in _describe(e).split("\n")])


def warn(message: str) -> None:
    """Log a warning about the configs once per process (an experiment's runs share recipes)."""
    if message not in _WARNED:
        _WARNED.add(message)
        log.warning(message)


_WARNED: set[str] = set()


def _ignored(data: Any, node: dict, path: tuple = ()) -> list[tuple[str, str]]:
    """``(key, what the workflow uses instead)`` for each key of ``data`` that the schema ``node`` marks IGNORED."""
    found = []
    if isinstance(data, dict):
        for key, value in data.items():
            sub = node.get("properties", {}).get(key, {})
            if sub.get("description", "").startswith(IGNORED):
                found.append((_key_path([*path, key]), sub["description"].removeprefix(IGNORED).rstrip(".")))
            else:
                found += _ignored(value, sub, (*path, key))
    elif isinstance(data, list) and "items" in node:
        for index, value in enumerate(data):
            found += _ignored(value, node["items"], (*path, index))
    return found


def _warn_ignored(data: Any, schema_name: str, source: str | Path) -> None:
    """One warning per ignored key of a config file (keys of list items together: ``tasks.0.output_path, ...``)."""
    keys: dict[str, list[str]] = {}
    for key, instead in _ignored(data, schema(schema_name)):
        keys.setdefault(instead, []).append(key)
    for instead, names in keys.items():
        warn(f"{source}: {', '.join(names)}: ignored; {instead}")


def fill_defaults(data: dict, schema_node: dict) -> dict:
    """Return a copy of ``data`` with the schema's ``default`` values filled in, recursively."""
    out = copy.deepcopy(data)
    for key, sub in schema_node.get("properties", {}).items():
        if key not in out and "default" in sub:
            out[key] = copy.deepcopy(sub["default"])
        if isinstance(out.get(key), dict) and sub.get("type") == "object":
            out[key] = fill_defaults(out[key], sub)
    return out


def deep_merge(base: dict, override: dict) -> dict:
    """``base`` updated recursively with ``override`` (neither is modified)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def canonical(data: Any) -> Any:
    """``data`` with dict keys sorted recursively, so equal configs compare (and hash) equal."""
    if isinstance(data, dict):
        return {k: canonical(data[k]) for k in sorted(data)}
    if isinstance(data, list):
        return [canonical(v) for v in data]
    return data


def load_recipe(path: str | Path, overrides: dict | None = None) -> dict:
    """A training recipe with run overrides applied, validated and with defaults filled in."""
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with model / data / training / peft sections")
    merged = deep_merge(raw, overrides or {})
    source = f"{path} (with run overrides)" if overrides else path
    validate(merged, "recipe", source)
    _warn_ignored(raw, "recipe", path)
    _warn_ignored(overrides, "recipe", source)
    recipe = fill_defaults(merged, schema("recipe"))
    _fail("recipe", source, _recipe_contradictions(raw, merged, recipe))
    deepspeed = recipe["training"].get("deepspeed")
    if deepspeed and not Path(deepspeed).is_file():
        raise ConfigError(f"{source}: training.deepspeed: {deepspeed}: file not found")
    if recipe["peft"]["type"] == "none":
        recipe["peft"] = {"type": "none"}
    return canonical(recipe)


def _recipe_contradictions(raw: dict, given: dict, recipe: dict) -> list[str]:
    """Settings that cannot all hold. ``given`` is the recipe file ``raw`` with the run's overrides,
    before defaults, so that a default never counts as a setting the user chose."""
    problems = []
    peft, training, data = recipe["peft"], recipe["training"], recipe["data"]
    lora_keys = ", ".join(f"peft.{k}" for k in sorted(given.get("peft", {})) if k != "type")
    if lora_keys and peft["type"] == "none":
        problems.append(
            f"{lora_keys}: LoRA settings, but peft.type is none (full fine-tuning); "
            "remove the peft section or set peft.type: lora|qlora"
        )
    elif lora_keys and "peft" not in raw and "type" not in given["peft"]:
        problems.append(
            f"{lora_keys}: overrides on a full fine-tuning recipe (no peft section) would silently make it LoRA; "
            "set peft.type: lora|qlora in the overrides too, or drop them"
        )
    if peft["type"] == "qlora":
        for key in ("fsdp", "deepspeed"):
            if training[key]:
                problems.append(
                    f"training.{key}: not supported with peft.type qlora (its 4-bit base is loaded whole on one GPU); "
                    f"use peft.type lora, or remove training.{key}"
                )
    if training["fsdp"] and training["deepspeed"]:
        problems.append("training.deepspeed: cannot be combined with training.fsdp; choose one")
    if "warmup_steps" in given.get("training", {}) and training["warmup_ratio"] > 0:
        problems.append(
            "training.warmup_steps: given together with training.warmup_ratio; set only one (warmup_ratio: 0 to count warmup in steps)"
        )
    if data.get("eval_dataset") and data["eval_fraction"] > 0:
        problems.append("data.eval_fraction: has no effect when data.eval_dataset is given; remove one of them")
    if training["eval_steps"] and not data.get("eval_dataset") and data["eval_fraction"] == 0:
        problems.append(
            "training.eval_steps: there is no eval data (data.eval_fraction is 0 and no data.eval_dataset); "
            "remove eval_steps or add eval data"
        )
    return problems


def load_benchmark(path: str | Path, overrides: dict | None = None) -> dict:
    """A benchmark suite with overrides applied, validated and with defaults filled in."""
    raw = load_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with model / generation / tasks sections")
    merged = deep_merge(raw, overrides or {})
    source = f"{path} (with overrides)" if overrides else path
    validate(merged, "benchmark", source)
    _warn_ignored(raw, "benchmark", path)
    _warn_ignored(overrides, "benchmark", source)
    bench = fill_defaults(merged, schema("benchmark"))
    if bench["generation"]["fewshot_as_multiturn"] and not bench["generation"]["apply_chat_template"]:
        _fail("benchmark", source, ["generation.fewshot_as_multiturn: needs generation.apply_chat_template: true"])
    bench["tasks"] = [fill_defaults(t, schema("benchmark")["properties"]["tasks"]["items"]) for t in bench["tasks"]]
    return canonical(bench)


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


RUN_PREFIX = "run:"
ADAPTER_SUFFIX = "_adapter"


@dataclass(frozen=True)
class Run:
    name: str
    base: str  # a base model's name, or "run:<name>" to start from another run (multi-stage)
    recipe_path: str
    recipe: dict = field(hash=False)
    sweep: dict | None = field(default=None, hash=False)  # {"group": run name, "point": {dotted key: value}}

    @property
    def method(self) -> str:
        """'full', 'lora' or 'qlora'."""
        peft_type = self.recipe["peft"]["type"]
        return "full" if peft_type == "none" else peft_type

    @property
    def parent_run(self) -> str | None:
        """The run this one starts from, for multi-stage training."""
        return self.base[len(RUN_PREFIX) :] if self.base.startswith(RUN_PREFIX) else None


@dataclass(frozen=True)
class Benchmark:
    name: str
    path: str
    config: dict = field(hash=False)


@dataclass
class Experiment:
    name: str
    base_models: dict[str, BaseModel]
    runs: dict[str, Run]
    benchmarks: dict[str, Benchmark]
    evaluate_base: bool = True
    evaluate_adapters: bool = False
    comparisons: list[tuple[str, str]] = field(default_factory=list)  # (reference, model) rows of the summary

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
        return {f"{name}{ADAPTER_SUFFIX}": name for name, run in self.runs.items() if run.method != "full"}

    @property
    def evaluated_models(self) -> list[str]:
        """Names of every model that gets evaluated: the bases (if enabled), the runs, the unmerged adapters."""
        bases = list(self.base_models) if self.evaluate_base else []
        return bases + list(self.runs) + list(self.adapter_models)


def slug(text: str) -> str:
    """``text`` as a safe file name (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def typed(value: Any) -> Any:
    """Leaves of ``snakemake --config`` values arrive as strings: read them as YAML scalars."""
    if isinstance(value, dict):
        return {k: typed(v) for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v) for v in value]
    if isinstance(value, str):
        try:
            return yaml.load(value, Loader=_Loader)
        except yaml.YAMLError:
            return value
    return value


def set_dotted(data: dict, dotted: str, value: Any) -> dict:
    """``data`` (a nested dict of overrides) with ``a.b.c`` set to ``value``."""
    out = copy.deepcopy(data)
    node = out
    *parents, leaf = dotted.split(".")
    for key in parents:
        node = node.setdefault(key, {})
    node[leaf] = value
    return out


def expand_sweep(name: str, spec: dict) -> dict[str, dict]:
    """Run specs of a sweep, one per point of the grid, with readable deterministic names.

    ``{peft.lora_r: [4, 8]}`` on run ``rank`` gives ``rank_lora_r4`` and ``rank_lora_r8``.
    """
    sweep = spec.get("sweep")
    if not sweep:
        return {name: spec}
    runs = {}
    for values in itertools.product(*sweep.values()):
        point = dict(spec, overrides=copy.deepcopy(spec.get("overrides", {})))
        point.pop("sweep")
        point["_sweep"] = {"group": name, "point": dict(zip(sweep, values))}
        suffix = []
        for key, value in zip(sweep, values):
            point["overrides"] = set_dotted(point["overrides"], key, value)
            suffix.append(f"{key.rsplit('.', 1)[-1]}{slug(str(value))}")
        runs[f"{name}_{'_'.join(suffix)}"] = point
    return runs


def _is_local_path(model_name: str) -> bool:
    """True when ``model_name`` can only be a local path: hub IDs are ``name`` or ``org/name``."""
    return Path(model_name).is_absolute() or model_name.startswith((".", "~")) or model_name.count("/") > 1


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
        raise ConfigError(f"{source}: base_models.{name}.dtype: only used with gguf (the dtype of the converted weights)")
    return BaseModel(
        name, spec.get("model_name"), spec.get("build"), spec.get("gguf"), spec.get("dtype", "float32"), where=f"{source}: base_models.{name}"
    )


def _check_model(model: BaseModel) -> BaseModel:
    """A base model's local files must exist (hub IDs are checked offline by koaml.fetch.check_cached); returns
    the model with its GGUF file resolved."""
    if model.gguf:
        from koaml.gguf import check

        return replace(model, gguf_file=str(check(model.gguf, f"{model.where}.gguf")))
    if model.build and not Path(model.build).is_file():
        raise ConfigError(f"{model.where}.build: {model.build}: file not found")
    if model.model_name and _is_local_path(model.model_name) and not Path(model.model_name).expanduser().exists():
        raise ConfigError(
            f"{model.where}.model_name: {model.model_name}: folder not found (a local path; hub IDs look like org/name)"
        )
    return model


def _check_chains(runs: dict[str, Run], source: str) -> None:
    """Multi-stage references must name existing runs and must not loop."""
    for run in runs.values():
        seen = [run.name]
        parent = run.parent_run
        while parent is not None:
            if parent not in runs:
                hint = difflib.get_close_matches(parent, list(runs), n=1)
                suggestion = f"; did you mean 'run:{hint[0]}'?" if hint else ""
                raise ConfigError(f"{source}: runs.{seen[-1]}.base: no run named '{parent}'{suggestion}")
            if parent in seen:
                raise ConfigError(f"{source}: runs.{run.name}.base: multi-stage cycle: {' -> '.join(seen + [parent])}")
            seen.append(parent)
            parent = runs[parent].parent_run


def _known(name: str, names: list[str], key: str, source: str, what: str) -> str:
    """``name`` if it is one of ``names``, else a ConfigError at ``key`` with a did-you-mean."""
    if name not in names:
        hint = difflib.get_close_matches(name, names, n=1)
        suggestion = f"did you mean '{hint[0]}'?" if hint else f"expected one of: {', '.join(names)}"
        raise ConfigError(f"{source}: {key}: '{name}' is not {what}; {suggestion}")
    return name


def _comparisons(exp: Experiment, reference: str | None, extra: list[list[str]], source: str) -> list[tuple[str, str]]:
    """The summary's (reference, model) pairs: each run (and unmerged adapter) against the base model its chain
    starts from; base models against ``reference`` (default: the first) when there are no runs or a reference
    is given; then the experiment's own ``compare`` pairs."""
    pairs = [(exp.root_base(run), model) for model, run in ({r: r for r in exp.runs} | exp.adapter_models).items()]
    if reference is not None:
        _known(reference, list(exp.base_models), "reference", source, "a base model")
    if exp.base_models and (reference is not None or not exp.runs):
        reference = reference or next(iter(exp.base_models))
        pairs += [(reference, base) for base in exp.base_models if base != reference]
    models = exp.evaluated_models
    for i, (ref, model) in enumerate(extra):
        for j, name in enumerate((ref, model)):
            _known(name, models, f"compare.{i}.{j}", source, "an evaluated model (a base model, run or <run>_adapter)")
        if ref == model:
            raise ConfigError(f"{source}: compare.{i}: compares '{ref}' with itself")
        pairs.append((ref, model))
    return list(dict.fromkeys(pairs))


def load_experiment(config: dict, source: str = "config") -> Experiment:
    """Validate a Snakemake ``config`` dict and resolve its runs (sweeps expanded), recipes and benchmarks.

    ``source`` names the config file(s), comma-separated; existing ones are re-read to catch duplicate
    keys (two runs of the same name), which the YAML parser Snakemake uses silently merges. Offline,
    the hub models and datasets must be in the cache (:func:`koaml.fetch.check_cached`).
    """
    for path in source.split(", "):
        if Path(path).is_file():
            load_yaml(path)
    config = {  # `snakemake --config evaluate_base=false` passes a string
        key: typed(value) if schema("experiment")["properties"].get(key, {}).get("type") in ("boolean", "integer", "number") else value
        for key, value in config.items()
    }
    validate(config, "experiment", source)
    config = fill_defaults(config, schema("experiment"))
    recipe_overrides = typed(config["recipe_overrides"])
    benchmark_overrides = typed(config["benchmark_overrides"])
    bases = {name: _base_model(name, spec, source) for name, spec in config["base_models"].items()}
    bases = {name: _check_model(model) for name, model in bases.items()}

    from koaml.data import check_local_data, warn_unused_target_column  # here: koaml.data imports this module

    specs: dict[str, dict] = {}
    for name, spec in config["runs"].items():
        for run_name, run_spec in expand_sweep(name, spec).items():
            if run_name in specs:
                raise ConfigError(f"{source}: runs: sweep of '{name}' makes a run name that exists already: {run_name}")
            specs[run_name] = run_spec

    runs: dict[str, Run] = {}
    for name, spec in specs.items():
        overrides = deep_merge(recipe_overrides, typed(spec.get("overrides") or {}))
        recipe = load_recipe(spec["recipe"], overrides)
        base = spec.get("base")
        if base is None:
            model_name = recipe["model"].get("model_name")
            if not model_name:
                raise ConfigError(
                    f"{source}: runs.{name}: no 'base' given and {spec['recipe']} has no model.model_name"
                )
            base = next((b.name for b in bases.values() if b.model_name == model_name), slug(model_name))
            if base not in bases:
                bases[base] = _check_model(BaseModel(base, model_name=model_name, where=f"{spec['recipe']}: model"))
        elif not base.startswith(RUN_PREFIX) and base not in bases:
            hint = difflib.get_close_matches(base, list(bases), n=1)
            suggestion = f"did you mean '{hint[0]}'?" if hint else f"expected one of: {', '.join(bases) or '(none defined)'}"
            raise ConfigError(f"{source}: runs.{name}.base: unknown base model '{base}'; {suggestion} (or run:<name>)")
        runs[name] = Run(name, base, spec["recipe"], recipe, spec.get("_sweep"))
        formats = check_local_data(recipe["data"], spec["recipe"])
        if "target_column" in load_yaml(spec["recipe"])["data"]:
            warn_unused_target_column(formats, spec["recipe"])
    _check_chains(runs, source)

    clash = sorted(set(bases) & set(runs))
    if clash:
        raise ConfigError(f"{source}: names used for both a base model and a run: {', '.join(clash)}")

    from koaml.tasks import check_benchmark  # here: koaml.tasks imports this module

    benchmarks: dict[str, Benchmark] = {}
    name_rule = schema("experiment")["$defs"]["name"]
    for path in config["benchmarks"]:
        name = Path(path).stem
        if name in benchmarks:
            raise ConfigError(f"{source}: benchmarks: two files are named '{name}' ({benchmarks[name].path}, {path})")
        if not re.match(name_rule["pattern"], name):
            raise ConfigError(f"{source}: benchmarks: file name '{name}': expected {name_rule['description']}")
        benchmarks[name] = Benchmark(name, path, load_benchmark(path, benchmark_overrides))
        check_benchmark(path, benchmarks[name].config)

    experiment = Experiment(config["experiment"], bases, runs, benchmarks, config["evaluate_base"], config["evaluate_adapters"])
    clash = sorted(set(experiment.adapter_models) & (set(bases) | set(runs)))
    if clash:
        raise ConfigError(f"{source}: evaluate_adapters: the names {', '.join(clash)} are taken by other models")
    if not experiment.evaluated_models:
        raise ConfigError(f"{source}: nothing to evaluate: give base_models (with evaluate_base: true) or runs")
    experiment.comparisons = _comparisons(experiment, config.get("reference"), config["compare"], source)

    from koaml.fetch import check_cached  # here: koaml.fetch imports this module

    check_cached(experiment, source)
    return experiment
