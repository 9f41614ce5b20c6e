"""unshuffle: the decoder input in one pass.

    visible    (B, K, D) decoder-embedded encoder tokens (no CLS), in keep_idx order
    keep_idx   (B, K) int64 token ids of the visible tokens
    mask_token (D,) learned token put at every masked position
    pos_embed  (L, D) fixed decoder position embedding
    -> (B, L, D): token order restored, mask tokens filled in, positions added
"""
from __future__ import annotations

import torch

from maefast.ops.backend import select_backend

IMPLEMENTED = ("reference",)


def unshuffle_reference(visible, keep_idx, mask_token, pos_embed) -> torch.Tensor:
    b, _, d = visible.shape
    num_tokens = pos_embed.shape[0]
    full = mask_token.to(visible.dtype).expand(b, num_tokens, d).clone()
    full = full.scatter(1, keep_idx.unsqueeze(-1).expand(-1, -1, d), visible)
    return full + pos_embed.to(visible.dtype)


def unshuffle(visible, keep_idx, mask_token, pos_embed) -> torch.Tensor:
    backend = select_backend("unshuffle", visible.device, IMPLEMENTED)
    if backend == "reference":
        return unshuffle_reference(visible, keep_idx, mask_token, pos_embed)
    raise AssertionError(f"unshuffle: backend {backend} is not wired")
