"""`maefast.create_model` as timm's: a registered architecture, with its published weights or a checkpoint's.

    create_model("ca_vit_small_patch16_256.openphenom", pretrained=True)       # OpenPhenom's encoder (Hub)
    create_model("vit_small_patch16_256", checkpoint_path="timm_vit.safetensors", in_chans=6)
    create_model("vit_small_patch16_256", num_classes=10)                      # a fresh linear head

A checkpoint's ViT architecture is read from its weights (`vit_options`): the block type (the papers' parallel
block or timm's standard Block), the pooling (fc_norm: "avg", else "token"), the biases, qk-norm, LayerScale,
learned or sin-cos positions, input channels, image size and head; what the name fixes (width, depth, patch
size, MLP ratio, heads) must agree, and a disagreement is named. So any timm VisionTransformer of a registered
size loads, e.g. a stock vit_small_patch16_224 trained with in_chans=6, img_size=256.
"""
from __future__ import annotations

import math

import torch

from maefast.errors import UserInputError
from maefast.models import registry
from maefast.models.checkpoint import has_vit_encoder, load_pretrained, read_state_dict
from maefast.models.vit import VisionTransformer, ViTConfig
from maefast.models.vit_weights import VIT_PREFIXES, vit_options

# options a registered name fixes: a checkpoint that disagrees is another architecture
SIZE_OPTIONS = ("embed_dim", "depth", "patch_size", "mlp_ratio", "num_heads")


def create_model(name: str, pretrained: bool = False, checkpoint_path=None, num_classes: int | None = None,
                 trust_pickle: bool = False, checkpoint_layout: str = "auto", **overrides):
    """A registered model (`list_models()`), as timm's create_model.

    pretrained: load the published weights of the name's tag (or the architecture's default tag), fetched from
    the Hugging Face Hub (huggingface_hub's cache; HF_HUB_OFFLINE=1 answers from it). checkpoint_path: load these
    weights instead (a file, folder, Hub id or state dict in any layout load_pretrained reads; for a ViT the
    architecture options the weights imply are taken unless given here). num_classes: a linear head for that
    many classes (0: none; with weights: a head of another size than the checkpoint's starts fresh, as in timm).
    overrides: the model config's fields; trust_pickle and checkpoint_layout as load_pretrained's trust_pickle
    and layout. The model is returned in training mode, as timm's.
    """
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if pretrained and checkpoint_path is not None:
        raise UserInputError("pass pretrained=True (the published weights) or checkpoint_path, not both")
    if pretrained:
        name, weights = registry.pretrained_weights(name)
        checkpoint_path, trust_pickle, checkpoint_layout = weights.hub_id, weights.trust_pickle, weights.layout
    if checkpoint_path is None:
        return registry.create_model(name, **overrides)
    state = read_state_dict(checkpoint_path, trust_pickle)
    with torch.device("meta"):  # the architecture the name gives, to learn whether it is a ViT
        plain = registry.create_model(name, **overrides)
    if isinstance(plain, VisionTransformer) or has_vit_encoder(plain):
        inferred = vit_options(state, channel_agnostic=vit_config(plain).channel_agnostic)
        check_size(name, vit_config(plain), inferred)
        if not isinstance(plain, VisionTransformer):
            inferred.pop("num_classes", None)  # an MAE's or a classifier's head is not its encoder's
        overrides = {**{k: v for k, v in inferred.items() if k not in SIZE_OPTIONS}, **overrides}
    model = registry.create_model(name, **overrides)
    return load_pretrained(model, without_other_head(state, model), layout=checkpoint_layout)


def vit_config(model) -> ViTConfig:
    return model.config if isinstance(model, VisionTransformer) else model.encoder.config


def check_size(name: str, config: ViTConfig, inferred: dict) -> None:
    different = {k: (inferred[k], getattr(config, k)) for k in SIZE_OPTIONS
                 if k in inferred and not math.isclose(inferred[k], getattr(config, k))}
    if different:
        described = ", ".join(f"{k} {theirs} (the model: {ours})" for k, (theirs, ours) in different.items())
        raise UserInputError(f"the checkpoint is another architecture than {name!r}: {described}; `maefast models` "
                             f"lists the registered sizes")


def without_other_head(state: dict, model) -> dict:
    """The checkpoint without its ViT classifier head when the ViT's head differs (none, or another class count):
    as timm does when num_classes changes, the model keeps its freshly initialized head."""
    if not isinstance(model, VisionTransformer):
        return state
    keys = [key for key in state if key.rsplit(".", 1)[0] in [prefix + "head" for prefix in VIT_PREFIXES]]
    weight = next((state[key] for key in keys if key.endswith("weight")), None)
    if weight is None or (isinstance(model.head, torch.nn.Linear) and weight.shape == model.head.weight.shape):
        return state
    return {k: v for k, v in state.items() if k not in keys}
