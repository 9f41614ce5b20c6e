"""The model families, each described once: what the engine needs to know about a model it trains or embeds.

A family groups the registry's names by prefix (`mae_vit_large_patch8_256` is an MAE) and says:
  trainable        whether `maefast train` takes it
  needs_labels     whether its forward takes the images' perturbation labels (the weakly supervised model)
  build_options    create_model options it cannot be built without, when no data set gives them
  blocks(model)    its repeated blocks: the units FSDP shards and activation checkpointing recomputes
  embedder(model)  the module whose .embed gives the embedding (an MAE's encoder; other models themselves)
  embedder_name    the registry name of that module, for the checkpoint a training run exports
  training_flops   FLOPs of one training step per image (maefast.models.flops)
The training loop, its config, the distributed wrapping and the CLI ask the family; nothing else reads
model names or probes attributes.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch.nn as nn

from maefast.errors import UserInputError
from maefast.models import flops


def _vit_blocks(vit) -> list[nn.Module]:
    return list(vit.blocks)


@dataclass(frozen=True)
class ModelFamily:
    name: str
    prefix: str
    trainable: bool
    blocks: Callable[[nn.Module], list[nn.Module]]
    embedder: Callable[[nn.Module], nn.Module] = lambda model: model
    embedder_name: Callable[[str], str] = lambda name: name
    training_flops: Callable[[nn.Module, int], int] | None = None
    needs_labels: bool = False
    build_options: dict = field(default_factory=dict)


FAMILIES = (
    ModelFamily("CA-MAE", "camae_", trainable=True,
                blocks=lambda m: _vit_blocks(m.encoder) + [b for stack in m.decoder.decoders for b in stack],
                embedder=lambda m: m.encoder, embedder_name=lambda n: "ca_" + n.removeprefix("camae_"),
                training_flops=lambda m, c: flops.mae_training_flops(m.config, c)),
    ModelFamily("MAE", "mae_", trainable=True,
                blocks=lambda m: _vit_blocks(m.encoder) + list(m.decoder.blocks),
                embedder=lambda m: m.encoder, embedder_name=lambda n: n.removeprefix("mae_"),
                training_flops=lambda m, c: flops.mae_training_flops(m.config, c)),
    ModelFamily("MU-Net", "munet_", trainable=True, blocks=lambda m: [],
                training_flops=lambda m, c: 3 * flops.munet_forward_flops(m.config, c)),
    ModelFamily("weakly supervised classifier", "wsl_", trainable=True, needs_labels=True,
                build_options={"num_classes": 2}, blocks=lambda m: _vit_blocks(m.encoder),
                training_flops=lambda m, c: 3 * flops.classifier_forward_flops(m.config, c)),
    ModelFamily("channel-agnostic encoder", "ca_vit_", trainable=False, blocks=_vit_blocks),
    ModelFamily("encoder", "vit_", trainable=False, blocks=_vit_blocks),
)


def family_of(model_or_name) -> ModelFamily:
    """The family of a registry name, or of a model built by create_model (which records its name)."""
    name = model_or_name if isinstance(model_or_name, str) else getattr(model_or_name, "model_name", None)
    if name is None:
        raise UserInputError(f"{type(model_or_name).__name__} was not built by maefast.create_model, so its family "
                             f"is unknown")
    for family in FAMILIES:
        if name.startswith(family.prefix):
            return family
    raise UserInputError(f"{name!r} belongs to no model family; names start with "
                         f"{', '.join(f.prefix for f in FAMILIES)}")


def trainable_names(names) -> list[str]:
    return [name for name in names if family_of(name).trainable]
