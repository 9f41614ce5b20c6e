"""The public reference's checkpoints (recursionpharma/maes_microscopy, `MAEModel` of huggingface_mae.py,
the OpenPhenom release) in maefast's modules.

Keys: `encoder.vit_backbone.X` is maefast's `encoder.X` (timm names on both sides); the decoder
(`decoder.mask_token`, `decoder.blocks.*`, `decoder.norm.*` of the MAE; `decoder.modality_tokens.*`,
`decoder.cross_attention.*`, `decoder.mlp.*`, `decoder.decoders.<channel>.<block>.*`,
`decoder.{context,query,out}_norm.*` of the CA-MAE), `encoder_decoder_proj.*` and `decoder_pred.*` keep
their names. Two reference entries are fixed rather than learned and are checked, not loaded:
`decoder.pos_embeddings` (sin-cos positions, which maefast computes) and `decoder.placeholder` (added to
the CLS slot of the CA-MAE decoder, whose output is dropped). `input_norm.*` has no state in the
reference's self-standardization (InstanceNorm2d without affine parameters); a checkpoint that has some
is refused, because maefast's standardization has no parameters.

Architecture: read from the reference's config.json (Hydra `_target_` dicts for encoder and decoder).
A config.json without them is the OpenPhenom release, whose MAEModel builds a fixed architecture.

Where the reference differs from maefast, and what maefast does:
- The encoder blocks' `mlp_bias`: the reference runs on timm 0.9 (requirements.txt pins timm==0.9.7),
  whose ParallelScalingBlock, up to timm 1.0.24, adds the vector [0] * 3D ++ mlp_bias to in_proj's
  outputs, which are ordered [MLP hidden (H = 4D), q, k, v]: the first 3D hidden units get no bias, the
  last H - 3D get mlp_bias[:H - 3D], and q, k, v get the rest. (timm 1.0.25 changed this to add mlp_bias to
  the MLP part only, so the reference's own code computes other embeddings from the same weights under a
  current timm.) maefast reproduces the published computation exactly: such a checkpoint loads into a
  ViT with qkv_bias=True, whose in_proj.bias is that vector (from_pretrained builds it so).
- CA-MAE channel counts: the reference's encoder takes up to `max_in_chans` channels (11 for OpenPhenom)
  while its decoder has `num_modalities` per-channel stacks (6); maefast keeps both (`decoder_channels`):
  it embeds 1 to 11 channels and reconstructs at most 6. The reference decoder needs exactly 6 channels
  (its positions and modality tokens are tiled for 6); maefast's decodes any count up to 6.
- The release's MAEModel builds its decoder LayerNorms as torch's default (eps 1e-5) whatever its
  config.json says; the published configs (and maefast's default) say 1e-6. maefast follows config.json
  when it names the architecture and 1e-5 when it does not (`decoder_norm_eps`).
- Input scaling: the reference divides every input by 255 before self-standardization, maefast by the
  dtype's maximum (255 for uint8, 65535 for uint16). Standardization removes the scale, so the two agree
  except through the 1e-5 epsilon, i.e. on nearly constant channels of 16-bit images.
- Refused, with the reason: backbones without a maefast counterpart (the 512-pixel patch-32 ViTs), a
  backbone without the sin-cos wrapper, other class-token / fc_norm / num_classes settings, a decoder
  without qkv bias or with another norm layer, positions that are not maefast's sin-cos table, and
  stateful input normalization.
"""
from __future__ import annotations

import torch

from maefast.errors import UserInputError
from maefast.models.families import CA_MAE, MAE
from maefast.models.layers import sincos_position_embedding
from maefast.models.vit import VIT_SIZES

ENCODER_PREFIX = "encoder.vit_backbone."
FIXED_POSITIONS = "decoder.pos_embeddings"
PLACEHOLDER = "decoder.placeholder"
INPUT_NORM = "input_norm."
# vit.<function> of the reference -> maefast's ViT size (the same backbone at 256 x 256)
BACKBONES = {f"vit.{name}": name for name in (
    "vit_small_patch16_256", "vit_base_patch16_256", "vit_base_patch8_256",
    "vit_large_patch16_256", "vit_large_patch8_256")}
# keyword arguments of the reference's ViT functions -> maefast ViTConfig fields
BACKBONE_OPTIONS = ("img_size", "in_chans", "global_pool", "drop_path_rate", "init_values", "qkv_bias", "qk_norm",
                    "patch_size", "embed_dim", "depth", "num_heads", "mlp_ratio")
# what the reference's ViT functions fix and maefast's ViT is built as
BACKBONE_FIXED = {"num_classes": 0, "class_token": True, "fc_norm": None}
# MAEModel of the OpenPhenom release (huggingface_mae.py) ignores config.json's architecture and builds this:
OPENPHENOM_RELEASE = {"model": CA_MAE.variant("vit_small_patch16_256"),
                      "overrides": dict(global_pool="avg", qkv_bias=True, max_in_chans=11, decoder_channels=6,
                                        decoder_embed_dim=512, decoder_depth=8, decoder_num_heads=16,
                                        decoder_mlp_ratio=4.0, decoder_norm_eps=1e-5)}


class ReferenceConfigError(UserInputError):
    """A reference config.json whose architecture maefast cannot build."""


def is_reference_config(meta: dict) -> bool:
    return meta.get("model_type") == "MAE" or "MAEModel" in (meta.get("architectures") or [])


def target(part: dict | None, where: str) -> str:
    """A Hydra dict's `_target_`, as the reference's top-level modules name it (mae_modules.X, vit.X)."""
    if not isinstance(part, dict) or "_target_" not in part:
        raise ReferenceConfigError(f"config.json: {where} has no _target_; "
                                   f"expected a Hydra dict as the reference writes")
    return part["_target_"].removeprefix("maes_microscopy.")


def backbone_overrides(encoder: dict) -> tuple[str, dict]:
    """The maefast ViT size and ViTConfig overrides of the reference's encoder dict."""
    wrapper = encoder.get("vit_backbone")
    if target(wrapper, "encoder.vit_backbone") != "vit.sincos_positional_encoding_vit":
        raise ReferenceConfigError("config.json: the encoder's backbone is not wrapped in "
                                   "vit.sincos_positional_encoding_vit; maefast's ViT has fixed sin-cos positions only")
    if wrapper.get("scale", 10000.0) != 10000.0:
        raise ReferenceConfigError(f"config.json: sin-cos scale {wrapper['scale']} (maefast's positions use 10000)")
    backbone = wrapper.get("vit_backbone")
    function = target(backbone, "encoder.vit_backbone.vit_backbone")
    if function not in BACKBONES:
        raise ReferenceConfigError(f"config.json: backbone {function!r} has no maefast counterpart; "
                                   f"known: {sorted(BACKBONES)}")
    options = {k: v for k, v in backbone.items() if k != "_target_"}
    fixed = {k: v for k, v in options.items() if k in BACKBONE_FIXED and v != BACKBONE_FIXED[k]}
    unknown = sorted(set(options) - set(BACKBONE_OPTIONS) - set(BACKBONE_FIXED))
    if fixed or unknown:
        raise ReferenceConfigError(f"config.json: backbone options maefast cannot build: "
                                   f"{fixed or ''} {unknown or ''}".strip())
    return BACKBONES[function], {k: v for k, v in options.items() if k in BACKBONE_OPTIONS}


def decoder_overrides(decoder: dict, channel_agnostic: bool, grid: int) -> dict:
    kind = target(decoder, "decoder")
    expected = "mae_modules.CAMAEDecoder" if channel_agnostic else "mae_modules.MAEDecoder"
    if kind != expected:
        encoder_kind = "channel-agnostic" if channel_agnostic else "fixed-channel"
        raise ReferenceConfigError(f"config.json: decoder {kind!r} with a {encoder_kind} encoder; "
                                   f"maefast builds {expected}'s counterpart")
    if decoder.get("qkv_bias", True) is not True:
        raise ReferenceConfigError("config.json: decoder qkv_bias=false; maefast's decoder blocks have qkv biases")
    norm = decoder.get("norm_layer")
    if norm is not None and (not isinstance(norm, dict) or norm.get("_target_") != "torch.nn.LayerNorm"):
        raise ReferenceConfigError(f"config.json: decoder norm_layer {norm!r}; maefast's decoder uses LayerNorm")
    # the reference's default is LayerNorm(eps=1e-6); a LayerNorm named without eps has torch's 1e-5
    eps = 1e-6 if norm is None else float(norm.get("eps", 1e-5))
    overrides = dict(decoder_embed_dim=decoder.get("embed_dim", 256 if channel_agnostic else 512),
                     decoder_depth=decoder.get("depth", 2 if channel_agnostic else 8),
                     decoder_num_heads=decoder.get("num_heads", 16),
                     decoder_mlp_ratio=float(decoder.get("mlp_ratio", 4)), decoder_norm_eps=eps)
    if channel_agnostic:
        overrides["decoder_channels"] = decoder.get("num_modalities", 6)
        if decoder.get("tokens_per_modality", grid) != grid:
            raise ReferenceConfigError(f"config.json: decoder tokens_per_modality {decoder['tokens_per_modality']} "
                                       f"is not the encoder's {grid} patches per channel")
    return overrides


def model_spec(meta: dict) -> tuple[str, dict]:
    """(registry name, create_model overrides) for a reference config.json."""
    encoder, decoder = meta.get("encoder"), meta.get("decoder")
    if encoder is None and decoder is None:
        name, overrides = OPENPHENOM_RELEASE["model"], dict(OPENPHENOM_RELEASE["overrides"])
    else:
        if target(encoder, "encoder") != "mae_modules.MAEEncoder":
            raise ReferenceConfigError(f"config.json: encoder {encoder['_target_']!r}; expected mae_modules.MAEEncoder")
        backbone, overrides = backbone_overrides(encoder)
        overrides["qkv_bias"] = True  # the legacy mlp_bias is an in_proj bias (see the module docstring)
        agnostic = bool(encoder.get("channel_agnostic", False))
        name = (CA_MAE if agnostic else MAE).variant(backbone)
        if agnostic:
            overrides["max_in_chans"] = encoder.get("max_in_chans", 6)
        fields = {**VIT_SIZES[backbone], **overrides}
        grid = (fields.get("img_size", 256) // fields["patch_size"]) ** 2
        overrides.update(decoder_overrides(decoder, agnostic, grid))
    overrides.update(mask_ratio=meta.get("mask_ratio", 0.75), norm_pix_loss=bool(meta.get("norm_pix_loss", False)),
                     fourier_weight=float(meta.get("fourier_loss_weight", 0.0)))
    return name, overrides


def check_positions(value: torch.Tensor, dim: int, grid_side: int, repeats: int, key: str) -> None:
    expected = torch.cat([torch.zeros(1, dim), sincos_position_embedding(dim, grid_side, repeats)])[None]
    channels, left = divmod(value.shape[1] - 1, grid_side * grid_side) if value.ndim == 3 else (0, 1)
    if value.ndim == 3 and value.shape[-1] == dim and not left and channels != repeats:
        raise UserInputError(f"checkpoint entry {key} holds the decoder positions of {channels} channels; the model's "
                             f"decoder has {repeats}: build it with decoder_channels={channels} (from_pretrained "
                             f"reads it from the checkpoint's config.json)")
    if tuple(value.shape) != tuple(expected.shape) or not torch.allclose(value.float(), expected, atol=1e-5):
        shape = tuple(value.shape)
        raise UserInputError(f"checkpoint entry {key} {shape} is not the fixed sin-cos position table "
                         f"{tuple(expected.shape)} that maefast computes; this reference model has positions "
                         f"maefast cannot reproduce")


def legacy_in_proj_bias(state: dict, key: str) -> torch.Tensor:
    """timm < 1.0.25's effective in_proj bias of a block from its `mlp_bias` entry: [0] * 3D ++ mlp_bias."""
    mlp_bias = state[key]
    weight_key = key.removesuffix("mlp_bias") + "in_proj.weight"
    if weight_key not in state:
        raise UserInputError(f"checkpoint has {key} but no {weight_key}")
    qkv = state[weight_key].shape[0] - mlp_bias.shape[0]
    return torch.cat([mlp_bias.new_zeros(qkv), mlp_bias])


def check_biased_blocks(model, has_vit_encoder: bool) -> None:
    encoder = model.encoder if has_vit_encoder else model
    if not getattr(encoder.config, "qkv_bias", True):
        raise UserInputError("the reference's ViT blocks (timm < 1.0.25) put their mlp_bias on q, k, v as well as "
                         "on the MLP; maefast holds that as an in_proj bias: build the model with qkv_bias=True "
                         "(from_pretrained does), e.g. create_model(name, qkv_bias=True)")


def convert_reference(state: dict, model, has_vit_encoder: bool) -> dict:
    """Reference keys -> maefast keys for `model` (an MAE / CA-MAE, or a bare encoder taking the backbone)."""
    stateful_norm = sorted(k for k in state if k.startswith(INPUT_NORM))
    if stateful_norm:
        raise UserInputError(f"checkpoint has input normalization state {stateful_norm}: maefast self-standardizes "
                         f"each image channel without parameters and cannot represent it")
    legacy_bias = any(k.startswith(ENCODER_PREFIX) and k.endswith(".mlp_bias") for k in state)
    if legacy_bias:
        check_biased_blocks(model, has_vit_encoder)
    converted = {}
    for key, value in state.items():
        if key.startswith(ENCODER_PREFIX) and key.endswith(".mlp_bias"):
            name = key.removeprefix(ENCODER_PREFIX).removesuffix("mlp_bias") + "in_proj.bias"
            converted[("encoder." if has_vit_encoder else "") + name] = legacy_in_proj_bias(state, key)
        elif key.startswith(ENCODER_PREFIX):
            converted[("encoder." if has_vit_encoder else "") + key.removeprefix(ENCODER_PREFIX)] = value
        elif not has_vit_encoder or key == PLACEHOLDER:
            continue  # an encoder takes only the backbone; the placeholder never reaches an output
        elif key == FIXED_POSITIONS and hasattr(model, "decoder_pos_embed"):
            dim = value.shape[-1]
            config = model.config
            repeats = config.num_decoder_channels if model.channel_agnostic else 1
            check_positions(value, dim, config.encoder.grid_side, repeats, key)
        else:
            converted[key] = value
    return converted
