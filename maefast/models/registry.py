"""Model registry: every variant is a few lines of config; `create_model(name, **overrides)` builds it.

Overrides are fields of ViTConfig (encoder) or MAEConfig (decoder, masking, loss), e.g.
`create_model("mae_vit_small_patch16_256", in_chans=5, decoder_depth=4, mask_ratio=0.9)`.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable

import torch
from torch.nn.modules.module import (
    register_module_buffer_registration_hook,
    register_module_parameter_registration_hook,
)

from maefast.errors import UnknownOptionError, UserInputError
from maefast.limits import format_bytes, memory_budget
from maefast.models.classifier import classifier_factory
from maefast.models.common import field_names, reject_unknown_options
from maefast.models.mae import MAEConfig, MaskedAutoencoder
from maefast.models.munet import MUNET_SIZES, munet_factory
from maefast.models.vit import VisionTransformer, ViTConfig

# name -> encoder config fields (the papers' backbones: timm sizes at 256 x 256)
ENCODERS: dict[str, dict] = {
    "vit_tiny_patch16_256": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.1),
    "vit_small_patch16_256": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.1),
    "vit_base_patch16_256": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1),
    "vit_base_patch8_256": dict(patch_size=8, embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1),
    "vit_large_patch16_256": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.3),
    "vit_large_patch8_256": dict(patch_size=8, embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.3),
    # a few-second CPU model for demos, tests and CI
    "vit_debug_patch8_64": dict(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4, drop_path_rate=0.0),
}
DEBUG_DECODER = dict(decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4)

_REGISTRY: dict[str, Callable[..., object]] = {}


def register(name: str, factory: Callable[..., object]) -> None:
    if name in _REGISTRY:
        raise ValueError(f"model {name!r} is already registered")
    _REGISTRY[name] = factory


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def split_overrides(overrides: dict) -> tuple[dict, dict]:
    encoder_fields = field_names(ViTConfig)
    mae_fields = field_names(MAEConfig) - {"encoder"}
    reject_unknown_options(overrides, encoder=encoder_fields, MAE=mae_fields)
    return ({k: v for k, v in overrides.items() if k in encoder_fields},
            {k: v for k, v in overrides.items() if k in mae_fields})


def encoder_factory(encoder_fields: dict, channel_agnostic: bool = False):
    def build(**overrides):
        encoder_overrides, mae_overrides = split_overrides(overrides)
        if mae_overrides:
            raise UnknownOptionError(f"an encoder takes no MAE options, got {sorted(mae_overrides)}")
        return VisionTransformer(ViTConfig(**{**encoder_fields, "channel_agnostic": channel_agnostic,
                                              **encoder_overrides}))
    return build


def mae_factory(encoder_fields: dict, channel_agnostic: bool, decoder_fields: dict | None = None):
    def build(**overrides):
        encoder_overrides, mae_overrides = split_overrides(overrides)
        encoder = ViTConfig(**{**encoder_fields, "channel_agnostic": channel_agnostic, **encoder_overrides})
        return MaskedAutoencoder(MAEConfig(encoder=encoder, **{**(decoder_fields or {}), **mae_overrides}))
    return build


for _name, _fields in ENCODERS.items():
    _decoder = DEBUG_DECODER if "debug" in _name else None
    register(_name, encoder_factory(_fields))
    register("ca_" + _name, encoder_factory(_fields, channel_agnostic=True))
    register("mae_" + _name, mae_factory(_fields, False, _decoder))
    register("camae_" + _name, mae_factory(_fields, True, _decoder))


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


# -- baselines: masked U-Nets and weakly supervised ViT classifiers (need num_classes=...)
for _name, _fields in MUNET_SIZES.items():
    register(_name, munet_factory(_fields))
for _name, _fields in ENCODERS.items():
    register("wsl_" + _name, classifier_factory(_fields))


def input_config(model):
    """The config that describes a model's input (img_size, in_chans, channel_agnostic, max_in_chans)."""
    config = model.config
    return config.encoder if isinstance(config, MAEConfig) else config
