"""Triton kernel of mae_loss (spec: maefast/ops/mae_loss.py) and its launcher.

_mae_loss_kernel: one program per block of masked patches (rows). It normalizes the targets per patch (when
norm_pix_loss), and for each channel takes the orthonormal 2-D DFT of prediction and target as GEMMs with the
(p*p, p*p) DFT matrix D (real and imaginary parts), accumulating the squared error and the spectral magnitude
error into per-program partial sums. With GRAD=True the same pass also writes the gradient of
coef[0] * mse + coef[1] * fourier with respect to the prediction (the backward).

The patches are held transposed, (pixels, rows), so that the GEMMs' long side is a block of frequencies
(D[f, :] @ X^T) or the patch's pixels (D^T @ G^T for the gradient) — a multiple of 64, which Hopper's wgmma
needs — while the rows of a program stay few: shared memory holds one block of D and the program's patches.
D is symmetric (swapping frequency and pixel indices gives the same phase), so D^T blocks are D blocks
transposed in registers.
"""
from __future__ import annotations

import math
from functools import cache

import torch
import triton
import triton.language as tl

from maefast.kernels._common import Launch, config, emulate_rtne, interpreting, launch, to_output

PRECISIONS = {"ieee": 0, "tf32": 1, "tf32x3": 2}


@triton.jit
def _mm(a, b, PRECISION: tl.constexpr):
    if PRECISION == 0:
        return tl.dot(a, b, input_precision="ieee")
    elif PRECISION == 1:
        return tl.dot(a, b, input_precision="tf32")
    return tl.dot(a, b, input_precision="tf32x3")


@triton.jit
def _mae_loss_kernel(pred_ptr, target_ptr, dft_re_ptr, dft_im_ptr, partial_ptr, coef_ptr, grad_ptr,
                     n_rows, C, PP, inv_count, eps,
                     NORM: tl.constexpr, GRAD: tl.constexpr, PRECISION: tl.constexpr, EMULATE_RTNE: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_F: tl.constexpr,
                     BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < n_rows
    P = PP * C
    row_base = rows.to(tl.int64) * P
    if NORM:  # per-patch mean and variance over all P values, two passes over chunks of the patch
        total = tl.zeros([BLOCK_R], dtype=tl.float32)
        for e0 in range(0, P, BLOCK_P):
            e = e0 + tl.arange(0, BLOCK_P)
            chunk_mask = r_mask[:, None] & (e < P)[None, :]
            total += tl.sum(tl.load(target_ptr + row_base[:, None] + e[None, :], mask=chunk_mask, other=0.0)
                            .to(tl.float32), axis=1)
        mean = total / P
        squares = tl.zeros([BLOCK_R], dtype=tl.float32)
        for e0 in range(0, P, BLOCK_P):
            e = e0 + tl.arange(0, BLOCK_P)
            chunk_mask = r_mask[:, None] & (e < P)[None, :]
            t = tl.load(target_ptr + row_base[:, None] + e[None, :], mask=chunk_mask, other=0.0).to(tl.float32)
            centered = tl.where(chunk_mask, t - mean[:, None], 0.0)
            squares += tl.sum(centered * centered, axis=1)
        rstd = 1.0 / tl.sqrt(squares / P + eps)
    else:
        mean = tl.zeros([BLOCK_R], dtype=tl.float32)
        rstd = tl.full([BLOCK_R], 1.0, dtype=tl.float32)
    if GRAD:
        coef_mse = tl.load(coef_ptr)
        coef_fourier = tl.load(coef_ptr + 1)
    s = tl.arange(0, BLOCK_S)  # pixel of the patch-channel
    s_mask = s < PP
    mask_t = s_mask[:, None] & r_mask[None, :]  # (pixels, rows)
    mse_acc = tl.zeros([BLOCK_S, BLOCK_R], dtype=tl.float32)
    fourier_acc = tl.zeros([BLOCK_F, BLOCK_R], dtype=tl.float32)
    for c in range(0, C):
        offs_t = row_base[None, :] + s[:, None] * C + c
        xp_t = tl.load(pred_ptr + offs_t, mask=mask_t, other=0.0).to(tl.float32)
        xt_t = tl.load(target_ptr + offs_t, mask=mask_t, other=0.0).to(tl.float32)
        xt_t = tl.where(mask_t, (xt_t - mean[None, :]) * rstd[None, :], 0.0)
        diff_t = xp_t - xt_t
        mse_acc += diff_t * diff_t
        grad_t = tl.zeros([BLOCK_S, BLOCK_R], dtype=tl.float32)
        for f0 in range(0, PP, BLOCK_F):
            f = f0 + tl.arange(0, BLOCK_F)
            f_mask = f < PP
            d_mask = f_mask[:, None] & s_mask[None, :]
            re = tl.load(dft_re_ptr + f[:, None] * PP + s[None, :], mask=d_mask, other=0.0)
            im = tl.load(dft_im_ptr + f[:, None] * PP + s[None, :], mask=d_mask, other=0.0)
            p_re = _mm(re, xp_t, PRECISION)  # (frequencies, rows)
            p_im = _mm(im, xp_t, PRECISION)
            t_re = _mm(re, xt_t, PRECISION)
            t_im = _mm(im, xt_t, PRECISION)
            mag_p = tl.sqrt(p_re * p_re + p_im * p_im)
            mag_t = tl.sqrt(t_re * t_re + t_im * t_im)
            valid = f_mask[:, None] & r_mask[None, :]
            fourier_acc += tl.where(valid, tl.abs(mag_p - mag_t), 0.0)
            if GRAD:  # d|P - T| / dP = sign(|P| - |T|) * P / |P|  (0 where |P| = 0)
                sign = tl.where(mag_p > mag_t, 1.0, tl.where(mag_p < mag_t, -1.0, 0.0))
                scale = tl.where(valid & (mag_p > 0), sign / tl.where(mag_p > 0, mag_p, 1.0), 0.0)
                grad_t += _mm(tl.trans(re), p_re * scale, PRECISION) + _mm(tl.trans(im), p_im * scale, PRECISION)
        if GRAD:
            g = (coef_mse * 2.0 * diff_t + coef_fourier * grad_t) * inv_count
            tl.store(grad_ptr + offs_t, to_output(g, grad_ptr.dtype.element_ty, EMULATE_RTNE), mask=mask_t)
    tl.store(partial_ptr + pid * 2, tl.sum(tl.sum(mse_acc, axis=1), axis=0))
    tl.store(partial_ptr + pid * 2 + 1, tl.sum(tl.sum(fourier_acc, axis=1), axis=0))


@cache
def dft_matrices(side: int, device_str: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts (p*p, p*p) of the orthonormal 2-D DFT acting on row-major flattened patches."""
    k = torch.arange(side, dtype=torch.float64)
    angle_1d = 2 * math.pi * torch.outer(k, k) / side                 # (i, u)
    angle = (angle_1d[:, None, :, None] + angle_1d[None, :, None, :])  # (i, j, u, v)
    angle = angle.reshape(side * side, side * side)
    device = torch.device(device_str)
    return ((torch.cos(angle) / side).float().to(device).contiguous(),
            (-torch.sin(angle) / side).float().to(device).contiguous())


def launch_configs(pp: int) -> list:
    """Candidate (BLOCK_R, BLOCK_F, warps) for patches of pp pixels per channel: frequency blocks of 64 (the
    wgmma tile's long side), 16 or 32 patches per program; 8 warps first for 16 x 16 patches, whose DFT
    blocks (64 x 256, real and imaginary) would not fit the registers of 4."""
    if interpreting():
        return [config(BLOCK_R=16, BLOCK_F=min(64, max(16, triton.next_power_of_2(pp))))]
    block_f = min(64, max(16, triton.next_power_of_2(pp)))
    warps = (8, 4) if pp > 64 else (4, 8)
    return [config(num_warps=warps[0], num_stages=1, BLOCK_R=16, BLOCK_F=block_f),
            config(num_warps=warps[1], num_stages=1, BLOCK_R=16, BLOCK_F=block_f),
            config(num_warps=8, num_stages=1, BLOCK_R=32, BLOCK_F=block_f)]


def mae_loss_partials(pred, target, *, channels: int, norm_pix_loss: bool, eps: float,
                      coef: torch.Tensor | None = None, precision: str = "tf32x3"):
    """pred, target (B, M, P) contiguous. Returns (sums (2,) = [sum sq error, sum spectral abs error], grad or
    None); grad = d(coef[0] * mse + coef[1] * fourier) / d pred when coef (2,) float32 is given; `eps` of the
    per-patch target normalization (norm_pix_loss). `precision`
    of the DFT GEMMs: "tf32x3" (about fp32), "tf32" or "ieee" (fp32 without tensor cores; the interpreter's)."""
    b, m, p_total = pred.shape
    n_rows = b * m
    pp = p_total // channels
    side = math.isqrt(pp)
    re, im = dft_matrices(side, str(pred.device))
    configs = launch_configs(pp)
    programs_max = triton.cdiv(n_rows, min(c.kwargs["BLOCK_R"] for c in configs))
    partial = torch.zeros(programs_max, 2, dtype=torch.float32, device=pred.device)  # programs write a prefix
    grad = torch.empty_like(pred) if coef is not None else None
    if n_rows == 0:  # nothing masked: zero sums, an empty gradient
        return partial.sum(0), grad
    launch(Launch(
        _mae_loss_kernel, lambda meta: (triton.cdiv(n_rows, meta["BLOCK_R"]),),
        (pred, target, re, im, partial, coef if coef is not None else partial, grad if grad is not None else pred,
         n_rows, channels, pp, 1.0 / (n_rows * p_total), eps),
        dict(NORM=norm_pix_loss, GRAD=coef is not None, PRECISION=PRECISIONS["ieee" if interpreting() else precision],
             EMULATE_RTNE=emulate_rtne(), BLOCK_S=max(16, triton.next_power_of_2(pp)),
             BLOCK_P=256),
        configs, key=("n_rows", "C", "PP")))
    return partial.sum(0), grad
