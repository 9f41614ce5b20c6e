"""What a ViT's weights say about its architecture: the ViTConfig options a state dict implies, in timm's layout or
maefast's, bare, in an MAE or in the public reference. maefast.create_model(name, checkpoint_path=...) builds
the model from them, and load_pretrained names them when a model does not fit its checkpoint."""
from __future__ import annotations

import math

import torch

from maefast.errors import UserInputError
from maefast.models.layers import sincos_position_embedding

# where a ViT's weights sit in the layouts maefast reads: bare (timm, maefast), in an MAE, in the reference
VIT_PREFIXES = ("", "encoder.", "encoder.vit_backbone.")
# the options a model may be built with other than its checkpoint's, which load_pretrained names
BUILD_OPTIONS = ("block", "global_pool", "qkv_bias", "qk_norm", "init_values", "in_chans", "img_size", "num_classes")


def vit_options(state: dict, channel_agnostic: bool = False) -> dict:
    """The ViTConfig options a ViT's weights imply (timm's layout or maefast's, bare, in an MAE or in the public
    reference); {} when the state holds no ViT."""
    prefix = next((p for p in VIT_PREFIXES if f"{p}patch_embed.proj.weight" in state), None)
    if prefix is None:
        return {}

    def has(key: str) -> bool:
        return prefix + key in state

    projection = state[prefix + "patch_embed.proj.weight"]
    dim, channels, patch = projection.shape[0], projection.shape[1], projection.shape[-1]
    depth = len({key[len(prefix):].split(".")[1] for key in state if key.startswith(prefix + "blocks.")})
    options = dict(embed_dim=dim, patch_size=patch, depth=depth,
                   global_pool="avg" if has("fc_norm.weight") else "token",
                   num_classes=state[prefix + "head.weight"].shape[0] if has("head.weight") else 0)
    if has("blocks.0.in_proj.weight"):  # the papers' parallel block (timm's ParallelScalingBlock)
        hidden = state[prefix + "blocks.0.in_proj.weight"].shape[0] - 3 * dim
        options.update(block="parallel", qkv_bias=has("blocks.0.in_proj.bias"), qk_norm=has("blocks.0.q_norm.weight"),
                       layer_scale=has("blocks.0.ls.gamma"), head_dim_key="blocks.0.q_norm.weight")
        if has("blocks.0.mlp_bias") and options["qkv_bias"]:
            raise UserInputError("the checkpoint's blocks have both an in_proj bias and an mlp_bias")
    elif has("blocks.0.attn.qkv.weight"):  # timm's standard Block
        hidden = state[prefix + "blocks.0.mlp.fc1.weight"].shape[0]
        options.update(block="standard", qkv_bias=has("blocks.0.attn.qkv.bias"),
                       qk_norm=has("blocks.0.attn.q_norm.weight"), layer_scale=has("blocks.0.ls1.gamma"),
                       head_dim_key="blocks.0.attn.q_norm.weight")
    else:
        raise UserInputError("the checkpoint's ViT blocks are neither timm's Block (attn.qkv, mlp.fc1) nor the "
                             "parallel block (in_proj); maefast builds these two")
    if prefix == "encoder.vit_backbone.":
        options["qkv_bias"] = True  # the reference's legacy mlp_bias is an in_proj bias (maefast.models.reference)
    options["mlp_ratio"] = hidden / dim
    head_dim_key = options.pop("head_dim_key")
    if options["qk_norm"]:  # qk-norm's width is the head width
        options["num_heads"] = dim // state[prefix + head_dim_key].shape[0]
    if not options.pop("layer_scale"):
        options["init_values"] = None
    positions = state[prefix + "pos_embed"][0, 1:] if has("pos_embed") else None
    if channel_agnostic:
        return options  # the grid and the channel count share the positions' length: the name's img_size stands
    options["in_chans"] = channels
    if positions is not None:
        side = math.isqrt(positions.shape[0])
        if side * side != positions.shape[0]:
            raise UserInputError(f"the checkpoint's pos_embed has {positions.shape[0]} patch positions, not a square "
                                 f"grid")
        options["img_size"] = side * patch
        sincos = sincos_position_embedding(dim, side).to(positions.device)
        same = positions.device.type != "meta" and torch.allclose(positions.float(), sincos, atol=1e-5)
        options["pos_embed"] = "sincos" if same else "learn"
    return options


def options_in_conflict(state: dict, config) -> dict:
    """{option: (the checkpoint's, the model's)} for the build options (BUILD_OPTIONS) in which a ViT config
    differs from what its checkpoint's weights imply (init_values: whether there is LayerScale at all)."""
    try:
        implied = vit_options(state, channel_agnostic=config.channel_agnostic)
    except UserInputError:
        return {}
    conflicts = {}
    for name in BUILD_OPTIONS:
        if name == "init_values":  # LayerScale or none; its initial value leaves no trace in trained weights
            ours, theirs = config.init_values is not None, implied.get("init_values", "LayerScale") is not None
            shown = (implied.get("init_values", "LayerScale"), config.init_values)
        elif name in implied:
            ours, theirs = getattr(config, name), implied[name]
            shown = (theirs, ours)
        else:
            continue
        if ours != theirs:
            conflicts[name] = shown
    return conflicts
