"""Typed dataclass configs: built from plain dicts (YAML, `--set key=value`, keyword arguments), every field
checked against its declared type. The training config, the embedding config and the model configs use it,
so no numeric field needs its own check and every config takes overrides the same way.

A bool is not an integer (Python's bool is an int subclass, so `batch_size=true` would mean 1), a float
must be finite (`lr=inf` would start and fail later), a list's items have the item type.

`--set` values are read as YAML (`3e-4` as a number, `[DNA, RNA]` as a list, `true` / `on` as a bool);
values that arrive typed (command-line flags, keyword arguments) are set as they are, never through text.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing

import yaml

from maefast.errors import UserInputError


@functools.cache
def field_types(cls) -> dict[str, object]:
    return typing.get_type_hints(cls)


def check_field_types(config, prefix: str = "") -> None:
    """UserInputError naming the first field (as prefix + name) whose value does not have the field's type."""
    types_by_name = field_types(type(config))
    for field in dataclasses.fields(config):
        value, expected = getattr(config, field.name), types_by_name[field.name]
        if not matches(value, expected):
            raise UserInputError(f"{prefix}{field.name}={value!r} must be {describe(expected)}")


def matches(value, expected) -> bool:
    origin, arguments = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, argument) for argument in arguments)
    if expected is bool:
        return isinstance(value, bool)
    if expected is int:
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if expected is float:
        return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if expected is str:
        return isinstance(value, str)
    if expected is type(None):
        return value is None
    if (origin or expected) in (list, tuple):
        if not isinstance(value, (list, tuple)):
            return False
        item_types = item_types_of(arguments, len(value))
        return item_types is not None and all(matches(v, t) for v, t in zip(value, item_types))
    if (origin or expected) is dict:
        return isinstance(value, dict)  # its entries are checked where they are used (model.overrides)
    return True  # a nested config checks itself


def item_types_of(arguments: tuple, length: int) -> list | None:
    """The type of each of `length` items: list[X] / tuple[X, ...] -> X each; tuple[X, Y] -> X, Y; None when
    the length does not fit."""
    if not arguments:
        return [object] * length
    if len(arguments) == 1 or (len(arguments) == 2 and arguments[1] is Ellipsis):
        return [arguments[0]] * length
    return list(arguments) if len(arguments) == length else None


def describe(expected) -> str:
    origin, arguments = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(argument) for argument in arguments)
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string",
             type(None): "null", dict: "a mapping of keys to values"}
    if expected in names:
        return names[expected]
    if (origin or expected) in (list, tuple):
        if not arguments:
            return "a list"
        if len(arguments) == 1 or arguments[1] is Ellipsis:
            return f"a list, each item {describe(arguments[0])}"
        return f"a list of {len(arguments)} items: " + ", ".join(describe(argument) for argument in arguments)
    return getattr(expected, "__name__", str(expected))


# -- building configs from dicts --------------------------------------------------------------------------

def safe_yaml(text: str, what: str):
    """YAML without tags that build Python objects (!!python/...); UserInputError naming `what` otherwise."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        problem = " ".join(str(error).split())
        raise UserInputError(f"{what}: not plain YAML ({problem})") from None


def parse_value(text: str):
    """A `--set` value: an integer or float when it reads as one (YAML 1.1 reads "3e-4" as a string), else YAML."""
    for number in (int, float):
        try:
            return number(text)
        except ValueError:
            pass
    return safe_yaml(text, f"--set value {text!r}")


def set_value(raw: dict, key: str, value) -> None:
    """raw["a"]["b"] = value for key "a.b", creating the sections on the way."""
    *sections, name = key.split(".")
    node = raw
    for depth, part in enumerate(sections):
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise UserInputError(f"{'.'.join(sections[:depth + 1])} holds a value, not keys: cannot set {key}")
    node[name] = value


def apply_assignment(raw: dict, assignment: str) -> None:
    """One `--set key=value` (e.g. optim.lr=3e-5) into `raw`."""
    if "=" not in assignment:
        raise UserInputError(f"--set takes key=value (e.g. optim.lr=3e-5), got {assignment!r}")
    key, value = assignment.split("=", 1)
    set_value(raw, key.strip(), parse_value(value))


def build(cls, values, prefix: str = ""):
    """An instance of the dataclass `cls` from `values` (a dict; nested dataclass fields from nested dicts):
    unknown keys are refused by name, float fields take numbers written as strings ("1e-4" in YAML), lists
    become tuples where the field is a tuple, and every field is type-checked (check_field_types)."""
    where = prefix.rstrip(".") or "the config"
    if not isinstance(values, dict):
        raise UserInputError(f"{where} must be a mapping of keys to values, got {values!r}")
    hints = field_types(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        keys = f"{prefix.rstrip('.')} keys" if prefix else "keys"
        raise UserInputError(f"unknown key(s) {[prefix + str(k) for k in unknown]}; {keys} are {sorted(known)}")
    arguments = {}
    for name, value in values.items():
        expected = hints[name]
        if dataclasses.is_dataclass(expected):
            value = build(expected, value or {}, f"{prefix}{name}.")
        elif isinstance(value, str) and float in union_members(expected) and str not in union_members(expected):
            try:
                value = float(value)
            except ValueError:
                pass  # the type check names the key
        elif isinstance(value, list) and (typing.get_origin(expected) or expected) is tuple:
            value = tuple(value)
        arguments[name] = value
    config = cls(**arguments)
    check_field_types(config, prefix)
    return config


def union_members(expected) -> tuple:
    if typing.get_origin(expected) in (typing.Union, types.UnionType):
        return typing.get_args(expected)
    return (expected,)
