"""The typed recipe sections agree with recipe.schema.json (keys, types, documentation), and the trainer registry
covers every trainer type the schema allows."""

import dataclasses
import typing

import pytest

from koaml.configfiles import IGNORED, schema
from koaml.recipe import load_recipe
from koaml.sections import SECTIONS, DatasetSpec, Section, ignored_keys, schema_node
from koaml.trainers import TRAINERS

CLASSES = [*SECTIONS.values(), DatasetSpec]
PYTHON_TYPES = {"integer": {int}, "number": {float, int}, "string": {str}, "boolean": {bool}, "array": {list}}
PYTHON_TYPES |= {"object": {dict}, "null": {type(None)}}


def python_types(hint) -> set[type]:
    """The classes a type hint admits (``int | None`` -> {int, NoneType}; ``list[str]`` -> {list})."""
    args = typing.get_args(hint)
    if type(hint) is typing.types.UnionType or typing.get_origin(hint) is typing.Union:
        return set().union(*(python_types(a) for a in args))
    return {typing.get_origin(hint) or hint}


def schema_types(prop: dict) -> set[type]:
    """The Python classes a schema property admits."""
    if "$ref" in prop:
        return {dict}
    if "oneOf" in prop:
        return set().union(*(schema_types(p) for p in prop["oneOf"]))
    if "const" in prop:
        return {type(prop["const"])}
    if "enum" in prop:
        return {type(v) for v in prop["enum"]}
    kinds = prop["type"] if isinstance(prop["type"], list) else [prop["type"]]
    return set().union(*(PYTHON_TYPES[k] for k in kinds))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_each_schema_key_is_an_attribute_and_nothing_else(cls):
    props = schema_node(cls.schema_path)["properties"]
    fields = {f.name for f in dataclasses.fields(cls)}
    assert fields == set(props) - set(ignored_keys(cls))
    assert all(props[key]["description"].startswith(IGNORED) for key in ignored_keys(cls))


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_attribute_types_agree_with_the_schema(cls):
    props = schema_node(cls.schema_path)["properties"]
    hints = typing.get_type_hints(cls)
    required = set(schema_node(cls.schema_path).get("required", ()))
    for f in dataclasses.fields(cls):
        admitted = python_types(hints[f.name]) - {type(None)}
        nested = cls.nested.get(f.name)
        expected = {nested} if nested else schema_types(props[f.name]) - {type(None)}
        if float in expected:
            expected.discard(int)  # an int is a float here (YAML's 3 for 3.0)
        assert admitted == expected, f"{cls.__name__}.{f.name}: {admitted} vs the schema's {expected}"
        optional = type(None) in python_types(hints[f.name])
        always_set = f.name in required or props[f.name].get("default") is not None
        lora_key = cls.__name__ == "PeftSettings" and f.name != "type"  # None for full fine-tuning
        if always_set and "x-trainers" not in props[f.name] and not lora_key:
            assert not optional, f"{cls.__name__}.{f.name} always has a value: its type should not admit None"
        else:
            assert optional, f"{cls.__name__}.{f.name} may be unset: its type should admit None"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_attribute_docs_come_from_the_schema(cls):
    for key, prop in schema_node(cls.schema_path)["properties"].items():
        if key not in ignored_keys(cls) and prop.get("description"):
            assert f"{key}: {prop['description']}" in cls.__doc__


def test_sections_are_frozen_and_round_trip(monkeypatch):
    from conftest import REPO

    monkeypatch.chdir(REPO)
    recipe = load_recipe("config/recipes/demo_dpo_lora.yaml")
    with pytest.raises(dataclasses.FrozenInstanceError):
        recipe.training.beta = 0.5
    for key, section in SECTIONS.items():
        typed = getattr(recipe, key)
        assert isinstance(typed, section) and isinstance(typed, Section)
        assert typed.as_dict() == {k: v for k, v in recipe.as_dict()[key].items() if v is not None} | (
            {"train_dataset": typed.train_dataset.as_dict()} if key == "data" else {}
        )
    assert recipe.data.train_dataset.split == "train"  # the dataset schema's default
    assert recipe.training.num_generations is None  # a GRPO key, unset for DPO


def test_every_trainer_type_has_a_registry_entry():
    trainer_types = schema("recipe")["properties"]["training"]["properties"]["trainer_type"]["enum"]
    assert sorted(TRAINERS) == sorted(trainer_types)
    assert all(name == t.name for name, t in TRAINERS.items())
    training = schema("recipe")["properties"]["training"]["properties"]
    for trainer in TRAINERS.values():
        for key in trainer.passthrough:  # keys of other trainers are None for this one
            trainers = training[key].get("x-trainers")
            assert trainers is None or trainer.name in trainers, f"{trainer.name} passes {key}, not one of its keys"
