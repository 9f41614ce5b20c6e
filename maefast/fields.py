"""Checks every field of a dataclass config against its declared type: the training config's sections and
the model configs use it, so no numeric field needs its own check.

A bool is not an integer (Python's bool is an int subclass, so `batch_size=true` would mean 1), a float
must be finite (`lr=inf` would start and fail later), a list's items have the item type.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing

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
