"""The errors maefast reports to its user, as opposed to its own bugs.

The rule: maefast raises `UserInputError` for every argument, config value, input file or output directory
it refuses, with a message that names it and says what was expected. The `maefast` command prints such an
error (and an OSError: a file the system cannot open or write) as one line with exit code 2; any other
exception is a bug in maefast and keeps its traceback.
"""
from __future__ import annotations

import importlib.util


class UserInputError(ValueError):
    """Input the user can correct: a bad argument, config value, input file or output directory."""


class MissingDependency(UserInputError, ImportError):
    """An optional package a requested feature needs is not installed (the message says how to install it)."""


def installed(module: str) -> bool:
    """Whether an optional package (or a submodule of one) can be imported, without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # a submodule whose parent package is missing ("nvidia.dali" without nvidia)
        return False


class UnknownOptionError(UserInputError, TypeError):
    """A keyword option a factory does not take: a TypeError, as Python gives for a bad keyword."""

