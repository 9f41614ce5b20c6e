"""Triton kernel of mae_loss (spec: maefast/ops/mae_loss.py) and its launcher.

_mae_loss_kernel: one program per block of masked patches. It normalizes the targets per patch (when
norm_pix_loss), and for each channel takes the orthonormal 2-D DFT of prediction and target as small
GEMMs with the (p*p, p*p) DFT matrix (real and imaginary parts), accumulating the squared error and the
spectral magnitude error into per-program partial sums. With GRAD=True the same pass also writes the
gradient of coef[0] * mse + coef[1] * fourier with respect to the prediction (the backward).
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import triton
import triton.language as tl

from maefast.kernels._common import emulate_rtne, interpreting as _interpreting, to_output

NORM_PIX_EPS = 1e-6


@triton.jit
def _mm(a, b, PRECISE: tl.constexpr):
    if PRECISE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b, input_precision="tf32x3")


@triton.jit
def _mae_loss_kernel(pred_ptr, target_ptr, dft_re_ptr, dft_im_ptr, partial_ptr, coef_ptr, grad_ptr,
                     n_rows, C, PP, inv_count,
                     NORM: tl.constexpr, GRAD: tl.constexpr, PRECISE: tl.constexpr, EMULATE_RTNE: tl.constexpr,
                     BLOCK_R: tl.constexpr, BLOCK_S: tl.constexpr, BLOCK_F: tl.constexpr, BLOCK_P: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_R + tl.arange(0, BLOCK_R)
    r_mask = rows < n_rows
    P = PP * C
    row_base = rows.to(tl.int64) * P
    if NORM:  # per-patch mean / variance over all P values
        e = tl.arange(0, BLOCK_P)
        full_mask = r_mask[:, None] & (e < P)[None, :]
        t_full = tl.load(target_ptr + row_base[:, None] + e[None, :], mask=full_mask, other=0.0).to(tl.float32)
        mean = tl.sum(t_full, axis=1) / P
        centered = tl.where(full_mask, t_full - mean[:, None], 0.0)
        rstd = 1.0 / tl.sqrt(tl.sum(centered * centered, axis=1) / P + 1e-6)
    else:
        mean = tl.zeros([BLOCK_R], dtype=tl.float32)
        rstd = tl.full([BLOCK_R], 1.0, dtype=tl.float32)
    if GRAD:
        coef_mse = tl.load(coef_ptr)
        coef_fourier = tl.load(coef_ptr + 1)
    s = tl.arange(0, BLOCK_S)
    s_mask = s < PP
    mask = r_mask[:, None] & s_mask[None, :]
    mse_acc = tl.zeros([BLOCK_R, BLOCK_S], dtype=tl.float32)
    fourier_acc = tl.zeros([BLOCK_R, BLOCK_F], dtype=tl.float32)
    for c in range(0, C):
        offs = row_base[:, None] + s[None, :] * C + c
        xp = tl.load(pred_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        xt = tl.load(target_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        xt = tl.where(mask, (xt - mean[:, None]) * rstd[:, None], 0.0)
        diff = xp - xt
        mse_acc += diff * diff
        grad_x = tl.zeros([BLOCK_R, BLOCK_S], dtype=tl.float32)
        for f0 in range(0, PP, BLOCK_F):
            f = f0 + tl.arange(0, BLOCK_F)
            f_mask = f < PP
            m_mask = s_mask[:, None] & f_mask[None, :]
            re = tl.load(dft_re_ptr + s[:, None] * PP + f[None, :], mask=m_mask, other=0.0)
            im = tl.load(dft_im_ptr + s[:, None] * PP + f[None, :], mask=m_mask, other=0.0)
            p_re = _mm(xp, re, PRECISE)
            p_im = _mm(xp, im, PRECISE)
            t_re = _mm(xt, re, PRECISE)
            t_im = _mm(xt, im, PRECISE)
            mag_p = tl.sqrt(p_re * p_re + p_im * p_im)
            mag_t = tl.sqrt(t_re * t_re + t_im * t_im)
            valid = r_mask[:, None] & f_mask[None, :]
            fourier_acc += tl.where(valid, tl.abs(mag_p - mag_t), 0.0)
            if GRAD:  # d|P - T| / dP = sign(|P| - |T|) * P / |P|  (0 where |P| = 0)
                sign = tl.where(mag_p > mag_t, 1.0, tl.where(mag_p < mag_t, -1.0, 0.0))
                scale = tl.where(valid & (mag_p > 0), sign / tl.where(mag_p > 0, mag_p, 1.0), 0.0)
                grad_x += _mm(p_re * scale, tl.trans(re), PRECISE) + _mm(p_im * scale, tl.trans(im), PRECISE)
        if GRAD:
            g = (coef_mse * 2.0 * diff + coef_fourier * grad_x) * inv_count
            tl.store(grad_ptr + offs, to_output(g, grad_ptr.dtype.element_ty, EMULATE_RTNE), mask=mask)
    tl.store(partial_ptr + pid * 2, tl.sum(tl.sum(mse_acc, axis=1), axis=0))
    tl.store(partial_ptr + pid * 2 + 1, tl.sum(tl.sum(fourier_acc, axis=1), axis=0))


@lru_cache(maxsize=None)
def dft_matrices(side: int, device_str: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Real and imaginary parts (p*p, p*p) of the orthonormal 2-D DFT acting on row-major flattened patches."""
    k = torch.arange(side, dtype=torch.float64)
    angle_1d = 2 * math.pi * torch.outer(k, k) / side                 # (i, u)
    angle = (angle_1d[:, None, :, None] + angle_1d[None, :, None, :])  # (i, j, u, v)
    angle = angle.reshape(side * side, side * side)
    device = torch.device(device_str)
    return ((torch.cos(angle) / side).float().to(device).contiguous(),
            (-torch.sin(angle) / side).float().to(device).contiguous())


def mae_loss_partials(pred, target, *, channels: int, norm_pix_loss: bool, coef: torch.Tensor | None = None):
    """pred, target (B, M, P) contiguous. Returns (sums (2,) = [sum sq error, sum spectral abs error], grad or
    None); grad = d(coef[0] * mse + coef[1] * fourier) / d pred when coef (2,) float32 is given."""
    b, m, p_total = pred.shape
    n_rows = b * m
    pp = p_total // channels
    side = math.isqrt(pp)
    re, im = dft_matrices(side, str(pred.device))
    block_s = max(16, triton.next_power_of_2(pp))
    block_f = min(block_s, 64)
    block_r = 16
    block_p = triton.next_power_of_2(p_total) if norm_pix_loss else 16
    programs = triton.cdiv(n_rows, block_r)
    partial = torch.empty(programs, 2, dtype=torch.float32, device=pred.device)
    grad = torch.empty_like(pred) if coef is not None else None
    _mae_loss_kernel[(programs,)](pred, target, re, im, partial, coef if coef is not None else partial,
                                  grad if grad is not None else pred, n_rows, channels, pp,
                                  1.0 / (n_rows * p_total), NORM=norm_pix_loss, GRAD=coef is not None,
                                  PRECISE=_interpreting() or not pred.is_cuda, EMULATE_RTNE=emulate_rtne(), BLOCK_R=block_r, BLOCK_S=block_s,
                                  BLOCK_F=block_f, BLOCK_P=block_p, num_warps=4)
    return partial.sum(0), grad
