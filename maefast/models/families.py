"""The model families, each described once, as torchtitan's model specs are: the names of its variants and what
the engine needs to know about a model it trains or embeds.

A family says:
  variants         its registry names, each with its size (a key of VIT_SIZES or MUNET_SIZES), and how a
                   variant is built (factory(size) -> create_model's builder)
  trainable        whether `maefast train` takes it
  needs_labels     whether its forward takes the images' perturbation labels (the weakly supervised model)
  build_options    create_model options it cannot be built without, when no data set gives them
  blocks(model)    its repeated blocks: the units FSDP shards and activation checkpointing recomputes
  embedder(model)  the module whose .embed gives the embedding (an MAE's encoder; other models themselves)
  embeds_as        the family of that module (an MAE's encoder is the encoder family's variant of its size),
                   which names the checkpoint a training run exports (embedder_name)
  training_flops   FLOPs of one training step per image (maefast.models.flops)
Every registry name is assembled here, once, from a family and a size; the registry registers the families'
variants, and `family_of(name)` looks the name up: nothing reads a family from a name's letters. The
trainer, its config, the distributed wrapping, the embedding job, the reference checkpoint adapter and the CLI
ask the family.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

from maefast.errors import UnknownOptionError, UserInputError
from maefast.models import flops
from maefast.models.classifier import classifier_factory
from maefast.models.common import field_names, reject_unknown_options
from maefast.models.mae import MAEConfig, MaskedAutoencoder
from maefast.models.munet import MUNET_SIZES, munet_factory
from maefast.models.vit import VIT_SIZES, VisionTransformer, ViTConfig

# MAE decoders other than MAEConfig's default (8 x 512), by encoder size
MAE_DECODERS: dict[str, dict] = {
    "vit_debug_patch8_64": dict(decoder_embed_dim=64, decoder_depth=2, decoder_num_heads=4),
}


@dataclass(frozen=True, eq=False)
class ModelFamily:
    name: str
    trainable: bool
    variants: dict[str, str]  # registry name -> size
    factory: Callable[[str], Callable[..., nn.Module]]  # size -> builder(**overrides)
    blocks: Callable[[nn.Module], list[nn.Module]]
    embedder: Callable[[nn.Module], nn.Module] = lambda model: model
    embeds_as: ModelFamily | None = None  # None: the model embeds itself
    training_flops: Callable[[nn.Module, int], int] | None = None
    needs_labels: bool = False
    build_options: dict = field(default_factory=dict)

    def variant(self, size: str) -> str:
        """The registry name of this family's variant of `size`."""
        for name, variant_size in self.variants.items():
            if variant_size == size:
                return name
        raise UserInputError(f"the {self.name} family has no variant of size {size!r}; its sizes are "
                             f"{sorted(set(self.variants.values()))}")

    def embedder_name(self, name: str) -> str:
        """The registry name of what embeds in the model named `name` (an MAE's encoder: the encoder of its size)."""
        if self.embeds_as is None:
            return name
        if name not in self.variants:
            raise UserInputError(f"{name!r} is not a variant of the {self.name} family, so the name of its "
                                 f"embedder is unknown")
        return self.embeds_as.variant(self.variants[name])


def sized(prefix: str, sizes) -> dict[str, str]:
    """A family's variants: one per size, named prefix + size."""
    return {prefix + size: size for size in sizes}


def split_overrides(overrides: dict) -> tuple[dict, dict]:
    encoder_fields = field_names(ViTConfig)
    mae_fields = field_names(MAEConfig) - {"encoder"}
    reject_unknown_options(overrides, encoder=encoder_fields, MAE=mae_fields)
    return ({k: v for k, v in overrides.items() if k in encoder_fields},
            {k: v for k, v in overrides.items() if k in mae_fields})


def encoder_factory(channel_agnostic: bool) -> Callable[[str], Callable[..., nn.Module]]:
    def factory(size: str):
        def build(**overrides):
            encoder_overrides, mae_overrides = split_overrides(overrides)
            if mae_overrides:
                raise UnknownOptionError(f"an encoder takes no MAE options, got {sorted(mae_overrides)}")
            return VisionTransformer(ViTConfig(**{**VIT_SIZES[size], "channel_agnostic": channel_agnostic,
                                                  **encoder_overrides}))
        return build
    return factory


def mae_factory(channel_agnostic: bool) -> Callable[[str], Callable[..., nn.Module]]:
    def factory(size: str):
        def build(**overrides):
            encoder_overrides, mae_overrides = split_overrides(overrides)
            encoder = ViTConfig(**{**VIT_SIZES[size], "channel_agnostic": channel_agnostic, **encoder_overrides})
            return MaskedAutoencoder(MAEConfig(encoder=encoder, **{**MAE_DECODERS.get(size, {}), **mae_overrides}))
        return build
    return factory


def _vit_blocks(vit) -> list[nn.Module]:
    return list(vit.blocks)


ENCODER = ModelFamily("encoder", trainable=False, variants=sized("", VIT_SIZES),
                      factory=encoder_factory(channel_agnostic=False), blocks=_vit_blocks)
CA_ENCODER = ModelFamily("channel-agnostic encoder", trainable=False, variants=sized("ca_", VIT_SIZES),
                         factory=encoder_factory(channel_agnostic=True), blocks=_vit_blocks)
MAE = ModelFamily("MAE", trainable=True, variants=sized("mae_", VIT_SIZES), factory=mae_factory(channel_agnostic=False),
                  blocks=lambda m: _vit_blocks(m.encoder) + list(m.decoder.blocks),
                  embedder=lambda m: m.encoder, embeds_as=ENCODER,
                  training_flops=lambda m, c: flops.mae_training_flops(m.config, c))
CA_MAE = ModelFamily("CA-MAE", trainable=True, variants=sized("camae_", VIT_SIZES),
                     factory=mae_factory(channel_agnostic=True),
                     blocks=lambda m: _vit_blocks(m.encoder) + [b for stack in m.decoder.decoders for b in stack],
                     embedder=lambda m: m.encoder, embeds_as=CA_ENCODER,
                     training_flops=lambda m, c: flops.mae_training_flops(m.config, c))
MU_NET = ModelFamily("MU-Net", trainable=True, variants=sized("", MUNET_SIZES),
                     factory=lambda size: munet_factory(MUNET_SIZES[size]), blocks=lambda m: [],
                     training_flops=lambda m, c: 3 * flops.munet_forward_flops(m.config, c))
CLASSIFIER = ModelFamily("weakly supervised classifier", trainable=True, variants=sized("wsl_", VIT_SIZES),
                         factory=lambda size: classifier_factory(VIT_SIZES[size]), needs_labels=True,
                         build_options={"num_classes": 2}, blocks=lambda m: _vit_blocks(m.encoder),
                         training_flops=lambda m, c: 3 * flops.classifier_forward_flops(m.config, c))
FAMILIES = (CA_MAE, MAE, MU_NET, CLASSIFIER, CA_ENCODER, ENCODER)

_FAMILY_OF: dict[str, ModelFamily] = {name: family for family in FAMILIES for name in family.variants}


def add_variant(name: str, family: ModelFamily) -> None:
    """Records the family of a model registered outside the families' own variants (registry.register)."""
    _FAMILY_OF[name] = family


def family_of(model_or_name) -> ModelFamily:
    """The family of a registry name, or of a model built by create_model (which records its name)."""
    name = model_or_name if isinstance(model_or_name, str) else getattr(model_or_name, "model_name", None)
    if name is None:
        raise UserInputError(f"{type(model_or_name).__name__} was not built by maefast.create_model, so its family "
                             f"is unknown")
    if name not in _FAMILY_OF:
        raise UserInputError(f"{name!r} belongs to no model family (maefast.models.register(name, factory, "
                             f"family=...) gives a model one); `maefast models` lists the registered models")
    return _FAMILY_OF[name]


def trainable_names(names) -> list[str]:
    return [name for name in names if name in _FAMILY_OF and _FAMILY_OF[name].trainable]
