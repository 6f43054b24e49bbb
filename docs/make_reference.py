"""The configuration reference (docs/reference/{experiment,recipe,benchmark}.md): every key of the three config files
with its type, default, allowed values and description, generated from the JSON schemas in src/koaml/schemas, which
stay the one source of truth. tests/test_docs.py checks that the pages are current.

    .venv/bin/python docs/make_reference.py            # (also run by `make docs-figures` and `make docs-reference`)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SCHEMAS = REPO / "src/koaml/schemas"
OUT = REPO / "docs/reference"
PAGES = {
    "experiment": (
        "Experiment file",
        "The experiment file (`config/config.yaml`, or the files given with `--configfile`): base models, runs and "
        "benchmarks. [The experiment file](../experiments/index.md) explains them with examples.",
    ),
    "recipe": (
        "Recipe file",
        "A training recipe (`config/recipes/*.yaml`; a run's `overrides` and `recipe_overrides` use the same keys). "
        "[Training recipes](../training/index.md) explains them with examples. Keys marked with trainers apply only "
        "to those trainers (`training.trainer_type`), with their own defaults.",
    ),
    "benchmark": (
        "Benchmark file",
        "A benchmark suite (`config/benchmarks/*.yaml`; `benchmark_overrides` uses the same keys). "
        "[Benchmark suites](../evaluation/index.md) explains them with examples.",
    ),
}
TYPES = {"object": "mapping", "array": "list", "string": "string", "integer": "integer", "number": "number",
         "boolean": "boolean", "null": "null"}  # fmt: skip


def _value(value) -> str:
    return f"`{json.dumps(value)}`"


def _resolve(node: dict, root: dict) -> dict:
    """``node`` with a ``$ref`` replaced by its target (the node's own keys, such as a description, win)."""
    if "oneOf" in node:
        node = {**node, "oneOf": [_resolve(branch, root) for branch in node["oneOf"]]}
    if isinstance(node.get("items"), dict):
        node = {**node, "items": _resolve(node["items"], root)}
    if "$ref" not in node:
        return node
    target = root
    for part in node["$ref"].removeprefix("#/").split("/"):
        target = target[part]
    return {**_resolve(target, root), **{k: v for k, v in node.items() if k != "$ref"}}


def _json_type(value) -> str:
    return {bool: "boolean", int: "integer", float: "number", str: "string", type(None): "null"}[type(value)]


def _type(node: dict) -> str:
    """A key's type in words: its JSON type(s), a constant, or the alternatives of a oneOf."""
    if "oneOf" in node:
        return " or ".join(_type(branch) for branch in node["oneOf"])
    if "const" in node:
        return _value(node["const"])
    if "enum" in node:  # the JSON types of the allowed values
        return " or ".join(dict.fromkeys(TYPES[_json_type(v)] for v in node["enum"]))
    kinds = node.get("type", [])
    kinds = [kinds] if isinstance(kinds, str) else kinds
    if not kinds and "properties" in node:
        kinds = ["object"]
    words = [TYPES[k] for k in kinds]
    if "array" in kinds and isinstance(node.get("items"), dict):
        item = node["items"]
        words[kinds.index("array")] = f"list of {_type(item)}" if _type(item) != "any" else "list"
    return " or ".join(words) or "any"


def _allowed(node: dict) -> str:
    """Allowed values and bounds: the enum, minimum and maximum, lengths, a name's pattern."""
    parts = []
    enum = node.get("enum") or (node.get("items") or {}).get("enum")
    if enum:
        parts.append(", ".join(_value(v) for v in enum))
    for key, word in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<")):
        if key in node:
            parts.append(f"{word} {node[key]}")
    if "not" in node and "const" in node["not"]:
        parts.append(f"not {node['not']['const']}")
    for key, word in (("minItems", "at least {} item(s)"), ("maxItems", "at most {} items"),
                      ("minLength", "at least {} character(s)"), ("maxLength", "at most {} characters"),
                      ("minProperties", "at least {} key(s)")):  # fmt: skip
        if key in node:
            parts.append(word.format(node[key]))
    if "pattern" in node:
        parts.append(f"matches `{node['pattern']}`")
    if node.get("uniqueItems"):
        parts.append("no repeats")
    for branch in node.get("oneOf", []):
        if "const" in branch:
            parts.append(_value(branch["const"]))
    return "; ".join(dict.fromkeys(parts))


def _default(node: dict) -> str:
    if "default" in node:
        return _value(node["default"])
    return ""


def _trainers(node: dict) -> str:
    """A trainer-only key's trainers, with each one's default and allowed values."""
    parts = []
    for trainer, facts in node.get("x-trainers", {}).items():
        extra = [f"default {_value(facts['default'])}"] if "default" in facts else []
        if "enum" in facts:
            extra.append("allowed: " + ", ".join(_value(v) for v in facts["enum"]))
        parts.append(f"{trainer}" + (f" ({'; '.join(extra)})" if extra else ""))
    return "; ".join(parts)


def _rows(node: dict, root: dict, path: str) -> list[tuple[str, dict]]:
    """(dotted key, schema node) of every key under ``node``, depth first: ``<name>`` for a mapping's own names,
    ``[]`` for a list's items, a oneOf's mapping branch's keys under the key itself."""
    rows = []
    for key, sub in node.get("properties", {}).items():
        sub = _resolve(sub, root)
        dotted = f"{path}.{key}" if path else key
        rows.append((dotted, sub))
        rows += _children(sub, root, dotted)
    return rows


def _children(node: dict, root: dict, dotted: str) -> list[tuple[str, dict]]:
    rows = []
    if "properties" in node:
        rows += _rows(node, root, dotted)
    extra = node.get("additionalProperties")
    if isinstance(extra, dict):
        extra = _resolve(extra, root)
        if "properties" in extra:
            rows += _rows(extra, root, f"{dotted}.<name>")
        elif "oneOf" not in extra and "$ref" not in extra and extra.get("type") != "array":
            pass
        else:
            for branch in extra.get("oneOf", []):
                rows += _children(_resolve(branch, root), root, f"{dotted}.<name>")
    items = node.get("items")
    if isinstance(items, dict):
        rows += _children(_resolve(items, root), root, f"{dotted}[]")
    for branch in node.get("oneOf", []):
        branch = _resolve(branch, root)
        if "properties" in branch:
            rows += _rows(branch, root, dotted)
    return rows


def _cell(text: str) -> str:
    """Text that stays in its table cell, angle brackets outside code spans shown (``<run>``), not read as HTML."""
    parts = text.replace("|", "\\|").replace("\n", " ").split("`")
    return "`".join(p if i % 2 else p.replace("<", "&lt;").replace(">", "&gt;") for i, p in enumerate(parts))


def page(name: str) -> str:
    """The reference page of schema ``name``: one table per top-level key."""
    root = json.loads((SCHEMAS / f"{name}.schema.json").read_text())
    title, intro = PAGES[name]
    required = ", ".join(f"`{k}`" for k in root.get("required", []))
    lines = [
        f"# {title}",
        "",
        "<!-- Generated from src/koaml/schemas/" + name + ".schema.json by docs/make_reference.py: do not edit. -->",
        "",
        f"{intro} Required: {required}. A key not listed here is an error (with a did-you-mean).",
        "",
        f"Generated from `src/koaml/schemas/{name}.schema.json`, the schema every file is validated against when "
        "the workflow is parsed; `make docs-reference` regenerates this page.",
    ]
    trainer_column = any("x-trainers" in node for _, node in _rows(root, root, ""))
    header = "| key | type | default | allowed | description |" + (" trainers |" if trainer_column else "")
    rule = "|---|---|---|---|---|" + ("---|" if trainer_column else "")
    for key, node in root["properties"].items():
        node = _resolve(node, root)
        lines += ["", f"## `{key}`", ""]
        if node.get("description"):
            lines += [node["description"], ""]
        lines += [header, rule]
        for dotted, sub in [(key, node), *_children(node, root, key)]:
            described = sub.get("description", "") if dotted != key else ""  # (the section's is above its table)
            cells = [f"`{dotted}`", _type(sub), _default(sub), _allowed(sub), described]
            if trainer_column:
                cells.append(_trainers(sub))
            lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines) + "\n"


def pages() -> dict[Path, str]:
    """Each reference page's path and its current text."""
    return {OUT / f"{name}.md": page(name) for name in PAGES}


def main(argv: list[str] | None = None) -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args(argv)
    OUT.mkdir(exist_ok=True)
    for path, text in pages().items():
        path.write_text(text)
    print(f"{OUT.relative_to(REPO)}: wrote {', '.join(p.name for p in pages())}")


if __name__ == "__main__":
    main()
