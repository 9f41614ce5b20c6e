"""mae_loss: masked reconstruction loss, (1 - w) * MSE + w * Fourier.

    pred     (B, M, P) decoder predictions of the masked patches
    target   (B, M, P) self-standardized pixels of the same patches (ops.tokenize.masked_targets)
    channels C of the patch layout: P = p*p*C in (p, q, c) order (ViT) or p*p with C = 1 (CA-MAE)
    -> MAELoss(loss, mse, fourier), 0-d float32 tensors

MSE: mean squared error over the masked patches, against the per-patch normalized target when
`norm_pix_loss` (mean / variance over the patch's P values, eps 1e-6, as in MAE).
Fourier: mean absolute difference of the orthonormal 2-D DFT magnitudes of each masked (patch, channel)
of prediction and target. Computed per patch, so it only sees masked content and needs no full image.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from maefast.ops.backend import select_backend

IMPLEMENTED = ("reference",)
NORM_PIX_EPS = 1e-6
DEFAULT_FOURIER_WEIGHT = 0.01


class MAELoss(NamedTuple):
    loss: torch.Tensor
    mse: torch.Tensor
    fourier: torch.Tensor


def normalize_patches(target: torch.Tensor) -> torch.Tensor:
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, unbiased=False, keepdim=True)
    return (target - mean) * torch.rsqrt(var + NORM_PIX_EPS)


def patch_spectrum(patches: torch.Tensor, channels: int) -> torch.Tensor:
    """(B, M, p*p*C) in (p, q, c) order -> DFT magnitudes (B, M, C, p, p)."""
    b, m, size = patches.shape
    side = math.isqrt(size // channels)
    images = patches.reshape(b, m, side, side, channels).permute(0, 1, 4, 2, 3)
    return torch.fft.fft2(images, norm="ortho").abs()


def mae_loss_reference(pred, target, *, channels: int, norm_pix_loss: bool = False,
                       fourier_weight: float = DEFAULT_FOURIER_WEIGHT) -> MAELoss:
    pred = pred.float()
    target = target.float()
    if norm_pix_loss:
        target = normalize_patches(target)
    if pred.shape[1] == 0:  # nothing masked: nothing to reconstruct
        zero = pred.sum() * 0.0
        return MAELoss(zero, zero, zero)
    mse = ((pred - target) ** 2).mean()
    fourier = (patch_spectrum(pred, channels) - patch_spectrum(target, channels)).abs().mean()
    loss = (1.0 - fourier_weight) * mse + fourier_weight * fourier
    return MAELoss(loss, mse, fourier)


def check_fourier_weight(fourier_weight: float) -> None:
    if not (0.0 <= fourier_weight < 1.0):
        raise ValueError(f"fourier_weight must be in [0, 1), got {fourier_weight}")


def mae_loss(pred, target, *, channels: int, norm_pix_loss: bool = False,
             fourier_weight: float = DEFAULT_FOURIER_WEIGHT) -> MAELoss:
    check_fourier_weight(fourier_weight)
    if pred.shape != target.shape:
        raise ValueError(f"mae_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    backend = select_backend("mae_loss", pred.device, IMPLEMENTED)
    if backend == "reference":
        return mae_loss_reference(pred, target, channels=channels, norm_pix_loss=norm_pix_loss,
                                  fourier_weight=fourier_weight)
    raise AssertionError(f"mae_loss: backend {backend} is not wired")
