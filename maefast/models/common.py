"""Pieces shared by the model configs and the registry's factories."""
from __future__ import annotations

import dataclasses

from maefast.errors import UnknownOptionError


class PatchGrid:
    """For configs with img_size and patch_size: the side and size of the patch grid."""

    img_size: int
    patch_size: int

    @property
    def grid_side(self) -> int:
        return self.img_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid_side ** 2


def field_names(config_class) -> set[str]:
    return {f.name for f in dataclasses.fields(config_class)}


def reject_unknown_options(overrides: dict, **options_by_part: set[str]) -> None:
    """UnknownOptionError (a TypeError) naming the options no part accepts, and each part's options (part
    names as given)."""
    unknown = set(overrides).difference(*options_by_part.values())
    if unknown:
        listed = ", ".join(f"{part.replace('_', '-')} options: {sorted(names)}"
                           for part, names in options_by_part.items())
        raise UnknownOptionError(f"unknown model option(s) {sorted(unknown)}; {listed}")
