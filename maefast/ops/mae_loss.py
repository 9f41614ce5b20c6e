"""mae_loss: masked reconstruction loss, (1 - w) * MSE + w * Fourier.

    pred     (B, M, P) decoder predictions of the masked patches
    target   (B, M, P) self-standardized pixels of the same patches (ops.tokenize.masked_targets)
    channels C of the patch layout: P = p*p*C in (p, q, c) order (ViT) or p*p with C = 1 (CA-MAE)
    -> MAELoss(loss, mse, fourier), 0-d float32 tensors

MSE: mean squared error over the masked patches, against the per-patch normalized target when
`norm_pix_loss`: (target - mean) / sqrt(var + 1e-6) over the patch's P values, with the biased variance (the mean
squared deviation, dividing by P). facebookresearch/mae divides by P - 1 (torch's default unbiased var), which
scales every normalized target by sqrt((P - 1) / P): 0.2% smaller at P = 256 values.
Fourier: mean absolute difference of the orthonormal 2-D DFT magnitudes of each masked (patch, channel)
of prediction and target. Computed per patch, so it only sees masked content and needs no full image.

Backends: "triton" (kernels/mae_loss.py: one pass computing normalization, MSE and the per-patch DFTs as
small GEMMs; the backward is the same pass writing the prediction's gradient) and "reference" (also the
CPU path: it is a handful of vectorized torch ops there). The fused path gives gradients to `pred` only;
a `target` that requires grad takes the reference.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

from maefast.errors import UserInputError
from maefast.ops.backend import select_backend

IMPLEMENTED = ("reference", "triton")
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
        raise UserInputError(f"fourier_weight must be in [0, 1), got {fourier_weight}")


@torch.library.custom_op("maefast::mae_loss", mutates_args=())
def _mae_loss_op(pred: torch.Tensor, target: torch.Tensor, channels: int, norm_pix_loss: bool,
                 fourier_weight: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from maefast.kernels import mae_loss as kernels
    sums, _ = kernels.mae_loss_partials(pred.contiguous(), target.contiguous(), channels=channels,
                                        norm_pix_loss=norm_pix_loss, eps=NORM_PIX_EPS)
    count = max(pred.numel(), 1)  # nothing masked: zero losses, as the reference gives
    mse, fourier = sums[0] / count, sums[1] / count
    return (1.0 - fourier_weight) * mse + fourier_weight * fourier, mse, fourier


@_mae_loss_op.register_fake
def _(pred, target, channels, norm_pix_loss, fourier_weight):
    scalar = pred.new_empty((), dtype=torch.float32)
    return scalar, torch.empty_like(scalar), torch.empty_like(scalar)


@torch.library.custom_op("maefast::mae_loss_backward", mutates_args=())
def _mae_loss_backward_op(pred: torch.Tensor, target: torch.Tensor, coef: torch.Tensor, channels: int,
                          norm_pix_loss: bool) -> torch.Tensor:
    """Gradient of coef[0] * mse + coef[1] * fourier with respect to pred."""
    from maefast.kernels import mae_loss as kernels
    _, grad = kernels.mae_loss_partials(pred.contiguous(), target.contiguous(), channels=channels,
                                        norm_pix_loss=norm_pix_loss, eps=NORM_PIX_EPS, coef=coef.float().contiguous())
    return grad


@_mae_loss_backward_op.register_fake
def _(pred, target, coef, channels, norm_pix_loss):
    return torch.empty_like(pred, memory_format=torch.contiguous_format)


def _setup_context(ctx, inputs, output):
    pred, target, channels, norm_pix_loss, fourier_weight = inputs
    ctx.save_for_backward(pred, target)
    ctx.meta = (channels, norm_pix_loss, fourier_weight)


def _backward(ctx, grad_loss, grad_mse, grad_fourier):
    pred, target = ctx.saved_tensors
    channels, norm_pix_loss, weight = ctx.meta
    coef = torch.stack([grad_loss * (1.0 - weight) + grad_mse, grad_loss * weight + grad_fourier]).float()
    grad = _mae_loss_backward_op(pred, target, coef, channels, norm_pix_loss)
    return grad, None, None, None, None


_mae_loss_op.register_autograd(_backward, setup_context=_setup_context)


def mae_loss(pred, target, *, channels: int, norm_pix_loss: bool = False,
             fourier_weight: float = DEFAULT_FOURIER_WEIGHT, backend: str | None = None) -> MAELoss:
    check_fourier_weight(fourier_weight)
    if pred.shape != target.shape:
        raise UserInputError(f"mae_loss: pred {tuple(pred.shape)} and target {tuple(target.shape)} differ")
    if pred.shape[-1] % channels or math.isqrt(pred.shape[-1] // channels) ** 2 != pred.shape[-1] // channels:
        raise UserInputError(f"mae_loss: patch size {pred.shape[-1]} is not p*p*channels for channels={channels}")
    backend = backend or select_backend("mae_loss", pred.device, IMPLEMENTED)
    if backend == "reference" or target.requires_grad:
        return mae_loss_reference(pred, target, channels=channels, norm_pix_loss=norm_pix_loss,
                                  fourier_weight=fourier_weight)
    return MAELoss(*_mae_loss_op(pred, target, channels, norm_pix_loss, float(fourier_weight)))
