"""Random per-sample masking: which tokens the encoder sees.

`random_masking` draws keep / masked token ids on the tensors' device. As in the papers' reference,
a noise tensor (B, L) decides the order: the tokens with the smallest noise are kept. Passing a fixed
`noise` reproduces a mask exactly.
"""
from __future__ import annotations

from typing import NamedTuple

import torch

from maefast.errors import UserInputError


class Mask(NamedTuple):
    keep_idx: torch.Tensor    # (B, K) int64, token ids the encoder sees, in shuffled order
    masked_idx: torch.Tensor  # (B, M) int64, token ids the decoder must reconstruct
    mask: torch.Tensor        # (B, L) float32, 1 where masked


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    check_mask_ratio(mask_ratio)
    return int(num_tokens * (1.0 - mask_ratio))


def check_mask_ratio(mask_ratio: float) -> None:
    if not (0.0 <= float(mask_ratio) < 1.0):
        raise UserInputError(f"mask_ratio must be in [0, 1), got {mask_ratio}")


def random_masking(batch: int, num_tokens: int, mask_ratio: float, *, device=None,
                   noise: torch.Tensor | None = None, generator: torch.Generator | None = None) -> Mask:
    keep = num_kept(num_tokens, mask_ratio)
    if noise is None:
        noise = torch.rand(batch, num_tokens, device=device, generator=generator)
    elif noise.shape != (batch, num_tokens):
        raise UserInputError(f"noise must have shape {(batch, num_tokens)}, got {tuple(noise.shape)}")
    order = torch.argsort(noise, dim=1)
    keep_idx, masked_idx = order[:, :keep], order[:, keep:]
    mask = torch.ones(batch, num_tokens, device=order.device)
    mask.scatter_(1, keep_idx, 0.0)
    return Mask(keep_idx, masked_idx, mask)


def all_tokens(batch: int, num_tokens: int, device=None) -> Mask:
    """The 'mask' of an unmasked forward: every token kept, in order."""
    keep_idx = torch.arange(num_tokens, device=device).expand(batch, num_tokens)
    empty = torch.empty(batch, 0, dtype=torch.int64, device=device)
    return Mask(keep_idx, empty, torch.zeros(batch, num_tokens, device=device))
