"""Reading config files: YAML, JSON schemas, the errors and warnings about them, and dict helpers.

A leaf module (nothing from koaml is imported here) and cheap to import (no torch): every other module
that reads configs builds on it, and the Snakefile calls it on every parse. Errors are :class:`ConfigError`
naming the file, the key and what was expected; keys the workflow accepts but does not use are warnings
(logger ``koaml.configfiles``).
"""

from __future__ import annotations

import copy
import difflib
import json
import logging
import math
import re
from functools import cache, lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMAS = ("experiment", "recipe", "benchmark", "tiny_model")
IGNORED = "Ignored: "  # starts the schema description of a key the guide's configs have but the workflow does not use

log = logging.getLogger(__name__)


class ConfigError(ValueError):
    """A configuration problem, found before any job starts."""


MAX_YAML_VALUES = 100_000  # values in a config file once its aliases are expanded; real configs have < 1,000


class YAMLTooLarge(yaml.YAMLError):
    """A document whose aliases expand beyond MAX_YAML_VALUES values (a "billion laughs")."""


def _expanded_size(root: yaml.Node, limit: int) -> int:
    """How many values ``root`` holds with every alias expanded, counting up to just past ``limit``.

    Aliases share nodes, so each node's size is computed once (iteratively: deep nesting is no problem),
    however many times it is referenced."""
    sizes: dict[int, int] = {}
    stack = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else []
        if isinstance(node, yaml.SequenceNode):
            children = node.value
        if children_done or not children:
            sizes[id(node)] = min(limit + 1, 1 + sum(sizes[id(c)] for c in children))
        else:
            stack.append((node, True))
            stack.extend((c, False) for c in children if id(c) not in sizes)
    return sizes[id(root)]


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``3e-4`` (PyYAML reads them as strings),
    rejects duplicate keys (PyYAML silently keeps the last one), and refuses documents whose aliases expand
    to more than MAX_YAML_VALUES values before building them (copying or validating one would never end)."""

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        if _expanded_size(node, MAX_YAML_VALUES) > MAX_YAML_VALUES:
            raise YAMLTooLarge(
                f"its aliases (&name / *name) expand to more than {MAX_YAML_VALUES:,} values; "
                "a config never needs that many: remove the nested aliases"
            )
        return self.construct_document(node)

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
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start}): save it as UTF-8") from None
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str) -> Any:
    """YAML text from ``source`` (a file, or a command-line value), with errors as ConfigError naming it."""
    try:
        return yaml.load(text, Loader=_Loader)
    except YAMLTooLarge as exc:
        raise ConfigError(f"{source}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark else source
        raise ConfigError(f"{where}: not valid YAML: {getattr(exc, 'problem', exc)}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid YAML: nested too deeply") from None


@cache
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
        return (
            f"{where}: {error.instance!r} is not allowed; expected one of: {', '.join(map(str, error.validator_value))}"
        )
    if error.validator == "required":
        return f"{where}: {error.message}"
    if error.validator == "maxLength":
        return (
            f"{where}: '{error.instance[:40]}...' has {len(error.instance)} characters; at most {error.validator_value}"
        )
    if error.validator == "pattern":
        return f"{where}: {error.instance!r}: expected {error.schema.get('description', 'to match ' + error.validator_value)}"
    if error.validator == "oneOf" and error.context:
        return _describe_one_of(error, where)
    if error.validator == "not":
        return f"{where}: {error.instance!r} is not allowed ({error.schema.get('description', 'see the schema')})"
    return f"{where}: {error.message}"


def _describe_one_of(error, where: str) -> str:
    """A value matching none of the alternatives: a word near a constant gets a hint, any other value the
    problem within the alternative of its own type."""
    consts = [branch["const"] for branch in error.validator_value if "const" in branch]
    if isinstance(error.instance, str) and consts:
        words = {"array": "list", "integer": "whole number", "object": "mapping"}
        kinds = [words.get(branch["type"], branch["type"]) for branch in error.validator_value if "type" in branch]
        hint = difflib.get_close_matches(error.instance, [str(c) for c in consts], n=1)
        expected = f"did you mean '{hint[0]}'?" if hint else f"expected {' or '.join(map(repr, consts))}"
        return f"{where}: {error.instance!r} is not allowed; {expected}" + (
            f" (or a {' or '.join(kinds)})" if kinds else ""
        )
    own_type = [e for e in error.context if e.validator != "const"] or error.context
    best = jsonschema.exceptions.best_match(own_type)
    return f"{_key_path(best.absolute_path) if best.absolute_path else where}: {best.message}"


def raise_if_problems(schema_name: str, source: str | Path, problems: list[str]) -> None:
    """Raise one ConfigError listing ``problems`` (lines ``key: what is wrong``) of a file, if any."""
    if problems:
        lines = "\n".join(f"  {source}: {p}" for p in problems)
        raise ConfigError(f"invalid {schema_name} config:\n{lines}")


def validate(data: Any, schema_name: str, source: str | Path) -> None:
    """Validate ``data`` against a schema, raising one ConfigError that lists every problem."""
    validator = jsonschema.Draft202012Validator(schema(schema_name))
    errors = sorted(validator.iter_errors(data), key=lambda e: list(map(str, e.absolute_path)))
    problems = [line for e in errors for line in _describe(e).split("\n")]
    raise_if_problems(schema_name, source, problems + _non_finite(data))


def empty_sections(data: Any, schema_name: str) -> Any:
    """``data`` with each section left empty (``statistics:`` with nothing under it, which YAML reads as None)
    as an empty mapping, so that its defaults apply: every key whose schema is a mapping, at any depth."""
    root = schema(schema_name)

    def node_of(node: Any) -> dict:
        while isinstance(node, dict) and "$ref" in node:  # "#/$defs/run"
            target = root
            for part in node["$ref"].removeprefix("#/").split("/"):
                target = target[part]
            node = target
        return node if isinstance(node, dict) else {}

    def walk(value: Any, node: Any) -> Any:
        node = node_of(node)
        if isinstance(value, dict):
            extra = node.get("additionalProperties")
            out = {}
            for key, item in value.items():
                sub = node_of(node.get("properties", {}).get(key, extra if isinstance(extra, dict) else {}))
                out[key] = {} if item is None and sub.get("type") == "object" else walk(item, sub)
            return out
        if isinstance(value, list) and isinstance(node.get("items"), dict):
            return [walk(item, node["items"]) for item in value]
        return value

    return walk(data, root)


def _non_finite(data: Any, path: tuple = ()) -> list[str]:
    """``key: .nan is not a number`` for each NaN or infinite float (JSON schemas count them as numbers)."""
    if isinstance(data, float) and not math.isfinite(data):
        return [f"{_key_path(path)}: {data!r} is not a finite number"]
    if isinstance(data, dict):
        return [p for k, v in data.items() for p in _non_finite(v, (*path, k))]
    if isinstance(data, list):
        return [p for i, v in enumerate(data) for p in _non_finite(v, (*path, i))]
    return []


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


def warn_ignored(data: Any, schema_name: str, source: str | Path) -> None:
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


def slug(text: str) -> str:
    """``text`` as a safe file name (letters, digits, '.', '_', '-')."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-.") or "model"


def typed(value: Any, key: str) -> Any:
    """Leaves of ``snakemake --config`` values (at config key ``key``) arrive as strings: read them as YAML.
    A string that opens a YAML mapping or list (``{`` or ``[``) must be valid YAML; other strings that are
    not stay strings."""
    if isinstance(value, dict):
        return {k: typed(v, f"{key}.{k}") for k, v in value.items()}
    if isinstance(value, list):
        return [typed(v, f"{key}.{i}") for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value
    try:
        return yaml.load(value, Loader=_Loader)
    except YAMLTooLarge as exc:
        raise ConfigError(f"{key}: {exc}") from None
    except yaml.YAMLError as exc:
        if value.lstrip().startswith(("{", "[")):
            raise ConfigError(
                f"{key}: {value!r}: not valid YAML ({getattr(exc, 'problem', exc)}); a --config value that starts "
                "with { or [ is read as a YAML mapping or list: check its brackets, and quote the whole "
                "key=value for the shell"
            ) from None
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
