"""Load and validate experiment, recipe and benchmark configs.

Everything here is cheap to import (no torch): the Snakefile calls it on every parse.
Errors are :class:`ConfigError` naming the file, the key and what was expected.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMAS = ("experiment", "recipe", "benchmark")


class ConfigError(ValueError):
    """A configuration problem, found before any job starts."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``3e-4`` (PyYAML reads them as strings)."""


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
        return f"{where}: {error.instance!r} must use only letters, digits, '.', '_' and '-' (it becomes a file name)"
    if error.validator == "oneOf" and error.context:
        best = jsonschema.exceptions.best_match(error.context)
        return f"{where}: {best.message}"
    return f"{where}: {error.message}"


def validate(data: Any, schema_name: str, source: str | Path) -> None:
    """Validate ``data`` against a schema, raising one ConfigError that lists every problem."""
    validator = jsonschema.Draft202012Validator(schema(schema_name))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    if errors:
        lines = "\n".join(f"  {source}: {_describe(e)}" for e in errors)
        raise ConfigError(f"invalid {schema_name} config:\n{lines}")


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
    recipe = fill_defaults(merged, schema("recipe"))
    if recipe["peft"]["type"] == "none":
        recipe["peft"] = {"type": "none"}
    return canonical(recipe)


def load_benchmark(path: str | Path) -> dict:
    """A benchmark suite, validated and with defaults filled in."""
    raw = load_yaml(path)
    validate(raw, "benchmark", path)
    bench = fill_defaults(raw, schema("benchmark"))
    bench["tasks"] = [fill_defaults(t, schema("benchmark")["properties"]["tasks"]["items"]) for t in bench["tasks"]]
    return canonical(bench)


@dataclass(frozen=True)
class BaseModel:
    name: str
    model_name: str | None = None  # hub ID or local path
    build: str | None = None  # tiny-model spec the workflow builds


@dataclass(frozen=True)
class Run:
    name: str
    base: str
    recipe_path: str
    recipe: dict = field(hash=False)

    @property
    def method(self) -> str:
        """'full', 'lora' or 'qlora'."""
        peft_type = self.recipe["peft"]["type"]
        return "full" if peft_type == "none" else peft_type


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

    @property
    def evaluated_models(self) -> list[str]:
        """Names of every model that gets evaluated: the bases (if enabled), then the runs."""
        bases = list(self.base_models) if self.evaluate_base else []
        return bases + list(self.runs)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def load_experiment(config: dict, source: str = "config") -> Experiment:
    """Validate a Snakemake ``config`` dict and resolve its recipes and benchmarks."""
    validate(config, "experiment", source)
    config = fill_defaults(config, schema("experiment"))
    bases = {
        name: BaseModel(name, spec.get("model_name"), spec.get("build")) for name, spec in config["base_models"].items()
    }

    runs: dict[str, Run] = {}
    for name, spec in config["runs"].items():
        recipe = load_recipe(spec["recipe"], spec.get("overrides"))
        base = spec.get("base")
        if base is None:
            model_name = recipe["model"].get("model_name")
            if not model_name:
                raise ConfigError(
                    f"{source}: runs.{name}: no 'base' given and {spec['recipe']} has no model.model_name"
                )
            base = next((b.name for b in bases.values() if b.model_name == model_name), _slug(model_name))
            bases.setdefault(base, BaseModel(base, model_name=model_name))
        elif base not in bases:
            hint = difflib.get_close_matches(base, list(bases), n=1)
            suggestion = f"did you mean '{hint[0]}'?" if hint else f"expected one of: {', '.join(bases) or '(none defined)'}"
            raise ConfigError(f"{source}: runs.{name}.base: unknown base model '{base}'; {suggestion}")
        runs[name] = Run(name, base, spec["recipe"], recipe)

    clash = sorted(set(bases) & set(runs))
    if clash:
        raise ConfigError(f"{source}: names used for both a base model and a run: {', '.join(clash)}")

    benchmarks: dict[str, Benchmark] = {}
    for path in config["benchmarks"]:
        name = Path(path).stem
        if name in benchmarks:
            raise ConfigError(f"{source}: benchmarks: two files are named '{name}' ({benchmarks[name].path}, {path})")
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ConfigError(f"{source}: benchmarks: file name '{name}' must use only letters, digits, '.', '_', '-'")
        benchmarks[name] = Benchmark(name, path, load_benchmark(path))

    return Experiment(config["experiment"], bases, runs, benchmarks, config["evaluate_base"])
