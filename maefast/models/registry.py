"""Model registry: `create_model(name, **overrides)` builds any registered model; `list_models()` names them.

The names and builders come from the model families (maefast.models.families: every variant of every family is
registered here); `register(name, factory, family)` adds one more. Overrides are fields of the model's config,
e.g. `create_model("mae_vit_small_patch16_256", in_chans=5, decoder_depth=4, mask_ratio=0.9)`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from maefast.errors import UserInputError
from maefast.limits import format_bytes, memory_budget
from maefast.models.families import FAMILIES, ModelFamily, add_variant
from maefast.models.mae import MAEConfig

_REGISTRY: dict[str, Callable[..., object]] = {}


def register(name: str, factory: Callable[..., object], family: ModelFamily | None = None) -> None:
    """Registers `factory(**overrides) -> model` under `name`; `family` (maefast.models.families) lets the
    trainer and the embedding job handle it as that family's models."""
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = factory
    if family is not None:
        add_variant(name, family)


def list_models() -> list[str]:
    return sorted(_REGISTRY)


for _family in FAMILIES:
    for _name, _size in _family.variants.items():
        register(_name, _family.factory(_size))


def create_model(name: str, **overrides):
    """Builds a registered model; `list_models()` names them all. A model whose weights would not fit in
    the memory available (maefast.limits) is refused before any of them is allocated."""
    if name not in _REGISTRY:
        raise UserInputError(f"unknown model {name!r}; known models: {', '.join(list_models())}")
    factory = _REGISTRY[name]
    model = build_within_memory(name, factory, overrides)
    if torch.get_default_device().type != "meta":
        model = factory(**overrides)
    model.model_name = name
    return model


class _OverBudget(Exception):
    pass


def build_within_memory(name: str, factory, overrides: dict):
    """The model built on the meta device (no memory allocated), its weights and buffers counted as they
    are registered: UserInputError as soon as they pass the memory budget (a depth of 100000 stops after a
    few hundred blocks instead of building them all)."""
    budget, limit = memory_budget()
    total = 0

    def count(module, tensor_name, tensor):
        nonlocal total
        if tensor is not None:
            total += tensor.numel() * tensor.element_size()
            if total > budget:
                raise _OverBudget

    hooks = [register_module_parameter_registration_hook(count), register_module_buffer_registration_hook(count)]
    try:
        with torch.device("meta"):
            return factory(**overrides)
    except _OverBudget:
        options = ", ".join(f"{k}={v!r}" for k, v in sorted(overrides.items()))
        raise UserInputError(f"model {name}{f' ({options})' if options else ''}: its weights need more than "
                             f"{format_bytes(budget)}, {limit}; choose a smaller model") from None
    finally:
        for hook in hooks:
            hook.remove()


def model_config_dict(model) -> dict:
    """The config that rebuilds `model` with create_model (kept in checkpoints)."""
    config = model.config
    if isinstance(config, MAEConfig):
        fields = dataclasses.asdict(config)
        encoder = fields.pop("encoder")
        return {**encoder, **fields}
    return dataclasses.asdict(config)


def input_config(model):
    """The config that describes a model's input (img_size, in_chans, channel_agnostic, max_in_chans)."""
    config = model.config
    return config.encoder if isinstance(config, MAEConfig) else config
