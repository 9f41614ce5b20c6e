"""tokenize: integer pixels -> visible patch tokens, and the standardized targets of the masked patches.

The reference below is the specification. Shapes:
    pixels      (B, C, H, W) uint8 / uint16 (or float already in [0, 1])
    keep_idx    (B, K) int64 token ids to embed (see ops.patches for the token order)
    weight      (D, C, p, p) for ViT, (D, 1, p, p) for CA-MAE (one projection shared by all channels)
    bias        (D,) or None
    pos_embed   (L, D) fixed position embedding of every token (CA-MAE: grid positions tiled per channel)
    -> tokens   (B, K, D) in `out_dtype` (default: the autocast dtype when autocast is on, else weight's)
"""
from __future__ import annotations

import torch

from maefast.ops.backend import select_backend
from maefast.ops.patches import embedding_patches, gather_tokens, patchify, self_standardize

IMPLEMENTED = ("reference",)


def default_out_dtype(weight: torch.Tensor) -> torch.dtype:
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def tokenize_reference(pixels, keep_idx, weight, bias, pos_embed, *, channel_agnostic: bool,
                       out_dtype: torch.dtype | None = None) -> torch.Tensor:
    patch_size = weight.shape[-1]
    patches = embedding_patches(self_standardize(pixels), patch_size, channel_agnostic)
    visible = gather_tokens(patches, keep_idx)
    tokens = visible @ weight.reshape(weight.shape[0], -1).float().t()
    if bias is not None:
        tokens = tokens + bias.float()
    tokens = tokens + gather_tokens(pos_embed.float().expand(pixels.shape[0], -1, -1), keep_idx)
    return tokens.to(out_dtype or default_out_dtype(weight))


def masked_targets_reference(pixels, masked_idx, patch_size: int, *, channel_agnostic: bool) -> torch.Tensor:
    """(B, M, P) float32: the self-standardized pixels of the masked patches, in the decoder's layout."""
    targets = patchify(self_standardize(pixels), patch_size, channel_agnostic)
    return gather_tokens(targets, masked_idx)


def tokenize(pixels, keep_idx, weight, bias, pos_embed, *, channel_agnostic: bool,
             out_dtype: torch.dtype | None = None) -> torch.Tensor:
    backend = select_backend("tokenize", pixels.device, IMPLEMENTED)
    if backend == "reference":
        with torch.autocast(pixels.device.type, enabled=False):
            return tokenize_reference(pixels, keep_idx, weight, bias, pos_embed,
                                      channel_agnostic=channel_agnostic,
                                      out_dtype=out_dtype or default_out_dtype(weight))
    raise AssertionError(f"tokenize: backend {backend} is not wired")


def masked_targets(pixels, masked_idx, patch_size: int, *, channel_agnostic: bool) -> torch.Tensor:
    return masked_targets_reference(pixels, masked_idx, patch_size, channel_agnostic=channel_agnostic)
