"""Triton kernels of tokenize (spec: maefast/ops/tokenize.py) and plain launchers.

_tokenize_stats_kernel    per-(image, channel) mean and rstd of the scaled pixels (exact integer sums)
_gather_patches_kernel    the standardized patches at given token ids, in the projection's (c, p, q) layout
                          (the tokenizer's GEMM input) or the decoder's (p, q, c) layout (the MAE targets)

The patch projection itself is a cuBLAS GEMM on the gathered patches (maefast/ops/tokenize.py): measured on
an H200, the fused gather-and-GEMM kernels this replaced ran at 18 TFLOP/s, slower than the reference.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from maefast.kernels._common import Launch, config, emulate_rtne, launch, to_output

STANDARDIZE_EPS = 1e-5


@triton.jit
def _tokenize_stats_kernel(pix_ptr, mean_ptr, rstd_ptr, plane_size, scale, eps,
                           IS_INT: tl.constexpr, BLOCK: tl.constexpr):
    plane = tl.program_id(0)
    base = pix_ptr + plane.to(tl.int64) * plane_size
    offs = tl.arange(0, BLOCK)
    if IS_INT:
        acc = tl.zeros([BLOCK], dtype=tl.int64)
        acc_sq = tl.zeros([BLOCK], dtype=tl.int64)
        for start in range(0, plane_size, BLOCK):
            x = tl.load(base + start + offs, mask=start + offs < plane_size, other=0).to(tl.int64)
            acc += x
            acc_sq += x * x
        mu = tl.sum(acc, axis=0).to(tl.float64) / plane_size
        var = tl.sum(acc_sq, axis=0).to(tl.float64) / plane_size - mu * mu
    else:  # shifted sums in fp32 lanes, combined in fp64
        shift = tl.load(base).to(tl.float32)
        acc = tl.zeros([BLOCK], dtype=tl.float32)
        acc_sq = tl.zeros([BLOCK], dtype=tl.float32)
        for start in range(0, plane_size, BLOCK):
            x = tl.load(base + start + offs, mask=start + offs < plane_size, other=0).to(tl.float32)
            x = tl.where(start + offs < plane_size, x - shift, 0.0)
            acc += x
            acc_sq += x * x
        shifted_mu = tl.sum(acc.to(tl.float64), axis=0) / plane_size
        var = tl.sum(acc_sq.to(tl.float64), axis=0) / plane_size - shifted_mu * shifted_mu
        mu = shifted_mu + shift.to(tl.float64)
    var = tl.maximum(var, 0.0) / (scale * scale)
    tl.store(mean_ptr + plane, (mu / scale).to(tl.float32))
    tl.store(rstd_ptr + plane, (1.0 / tl.sqrt(var + eps)).to(tl.float32))


@triton.jit
def _gather_patches_kernel(pix_ptr, idx_ptr, mean_ptr, rstd_ptr, out_ptr, n_rows, M, C, H, W, GW, G, PV, scale,
                           P: tl.constexpr, CA: tl.constexpr, CHANNELS_LAST: tl.constexpr,
                           EMULATE_RTNE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    """out[t, e] = standardized pixel e of patch idx[t] of image t // M. e runs over the patch's values in the
    decoder layout (p, q, c), channel fastest (CHANNELS_LAST), or in the patch projection's layout (c, p, q)."""
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    e = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    t_mask = t < n_rows
    idx = tl.load(idx_ptr + t, mask=t_mask, other=0)
    b = t // M
    if CA:  # one channel per token: the token's channel is idx // G, the values are its p * p pixels
        cell = idx % G
        c = (idx // G)[:, None] + e[None, :] * 0
        s = e[None, :] + (t * 0)[:, None]
    elif CHANNELS_LAST:
        cell = idx
        c = (e % C)[None, :] + (t * 0)[:, None]
        s = (e // C)[None, :] + (t * 0)[:, None]
    else:
        cell = idx
        c = (e // (P * P))[None, :] + (t * 0)[:, None]
        s = (e % (P * P))[None, :] + (t * 0)[:, None]
    y = (cell // GW * P)[:, None] + s // P
    x = (cell % GW * P)[:, None] + s % P
    plane = b[:, None].to(tl.int64) * C + c
    mask = t_mask[:, None] & (e < PV)[None, :]
    value = tl.load(pix_ptr + plane * H * W + y * W + x, mask=mask, other=0).to(tl.float32)
    mean = tl.load(mean_ptr + plane, mask=mask, other=0.0)
    rstd = tl.load(rstd_ptr + plane, mask=mask, other=0.0)
    standardized = (value / scale - mean) * rstd
    tl.store(out_ptr + t[:, None].to(tl.int64) * PV + e[None, :],
             to_output(standardized, out_ptr.dtype.element_ty, EMULATE_RTNE), mask=mask)


# ---------------------------------------------------------------------------------------------------- launchers

def _scale(dtype: torch.dtype) -> float:
    return {torch.uint8: 255.0, torch.uint16: 65535.0}.get(dtype, 1.0)


def _geometry(pixels: torch.Tensor, patch: int, channel_agnostic: bool):
    b, c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    g = gh * gw
    kd = patch * patch * (1 if channel_agnostic else c)
    return b, c, h, w, gw, g, kd


def tokenize_stats(pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """pixels (B, C, H, W) contiguous -> mean, rstd (B, C) float32 of pixels / scale."""
    b, c, h, w = pixels.shape
    mean = torch.empty(b, c, dtype=torch.float32, device=pixels.device)
    rstd = torch.empty_like(mean)
    if b * c:
        launch(Launch(_tokenize_stats_kernel, lambda meta: (b * c,),
                      (pixels, mean, rstd, h * w, _scale(pixels.dtype), STANDARDIZE_EPS),
                      dict(IS_INT=not pixels.dtype.is_floating_point), [config(BLOCK=1024)]))
    return mean, rstd


def gather_patches(pixels, index, mean, rstd, *, patch: int, channel_agnostic: bool, channels_last: bool,
                   dtype: torch.dtype) -> torch.Tensor:
    """(B, N, P) standardized pixels of the patches at `index` (B, N), in `dtype`: channels last for the
    decoder's targets, (c, p, q) for the patch projection (see _gather_patches_kernel)."""
    b, c, h, w, gw, g, pv = _geometry(pixels, patch, channel_agnostic)
    n = index.shape[1]
    out = torch.empty(b, n, pv, dtype=dtype, device=pixels.device)
    if b * n == 0:
        return out
    block_p = min(256, triton.next_power_of_2(pv))
    launch(Launch(_gather_patches_kernel,
                  lambda meta: (triton.cdiv(b * n, meta["BLOCK_T"]), triton.cdiv(pv, block_p)),
                  (pixels, index, mean, rstd, out, b * n, n, c, h, w, gw, g, pv, _scale(pixels.dtype)),
                  dict(P=patch, CA=channel_agnostic, CHANNELS_LAST=channels_last, EMULATE_RTNE=emulate_rtne(),
                       BLOCK_P=block_p),
                  [config(BLOCK_T=16)]))
    return out
