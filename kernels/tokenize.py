"""Triton kernels of tokenize (spec: maefast/ops/tokenize.py) and plain launchers.

_tokenize_stats_kernel   per-(image, channel) mean and rstd of the scaled pixels (exact integer sums)
_tokenize_fwd_kernel     gather visible patches, standardize, GEMM with the projection, + bias + positions
_tokenize_bwd_kernel     weight / bias gradients, patches recomputed tile by tile (split over tokens)
_masked_targets_kernel   standardized masked patches in the decoder layout ((p, q, c) or (p, q))

`dot_mode` picks the dot operands: "ieee" (fp32), "tf32", "bf16" or "fp16" (fp32 accumulation always).
Under TRITON_INTERPRET=1 bf16 dots are not exact, so CPU tests use "ieee".
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from maefast.kernels._common import Launch, config, emulate_rtne, interpreting, launch, to_output

STANDARDIZE_EPS = 1e-5
DOT_MODES = {"ieee": 0, "tf32": 1, "bf16": 2, "fp16": 3}


@triton.jit
def _dot(a, b, acc, DOT_MODE: tl.constexpr):
    if DOT_MODE == 0:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="ieee")
    elif DOT_MODE == 1:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc, input_precision="tf32")
    elif DOT_MODE == 2:
        acc = tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16), acc)
    else:
        acc = tl.dot(a.to(tl.float16), b.to(tl.float16), acc)
    return acc


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
def _patch_tile(pix_ptr, mean_ptr, rstd_ptr, b, idx, t_mask, kk, C, H, W, GW, G, KD, scale,
                P: tl.constexpr, CA: tl.constexpr):
    """(BLOCK_T, BLOCK_K) standardized patch values of tokens (b, idx) at embedding offsets kk."""
    if CA:
        cell = idx % G
        c = (idx // G)[:, None] + kk[None, :] * 0
        ij = kk[None, :] + (b * 0)[:, None]
    else:
        cell = idx
        c = (kk // (P * P))[None, :] + (b * 0)[:, None]
        ij = (kk % (P * P))[None, :] + (b * 0)[:, None]
    y = (cell // GW * P)[:, None] + ij // P
    x = (cell % GW * P)[:, None] + ij % P
    plane = b[:, None].to(tl.int64) * C + c
    mask = t_mask[:, None] & (kk < KD)[None, :]
    value = tl.load(pix_ptr + plane * H * W + y * W + x, mask=mask, other=0).to(tl.float32)
    mean = tl.load(mean_ptr + plane, mask=mask, other=0.0)
    rstd = tl.load(rstd_ptr + plane, mask=mask, other=0.0)
    return tl.where(mask, (value / scale - mean) * rstd, 0.0)


@triton.jit
def _tokenize_fwd_kernel(pix_ptr, keep_ptr, mean_ptr, rstd_ptr, w_ptr, bias_ptr, pos_ptr, out_ptr,
                         n_tokens, K, C, H, W, GW, G, D, KD, scale,
                         P: tl.constexpr, CA: tl.constexpr, HAS_BIAS: tl.constexpr, DOT_MODE: tl.constexpr,
                         EMULATE_RTNE: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_t = tl.program_id(0)
    pid_d = tl.program_id(1)
    t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    t_mask = t < n_tokens
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    idx = tl.load(keep_ptr + t, mask=t_mask, other=0)
    b = t // K
    acc = tl.zeros([BLOCK_T, BLOCK_D], dtype=tl.float32)
    for k0 in range(0, KD, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        a = _patch_tile(pix_ptr, mean_ptr, rstd_ptr, b, idx, t_mask, kk, C, H, W, GW, G, KD, scale, P, CA)
        w = tl.load(w_ptr + d[None, :] * KD + kk[:, None], mask=d_mask[None, :] & (kk < KD)[:, None], other=0.0)
        acc = _dot(a, w, acc, DOT_MODE)
    mask = t_mask[:, None] & d_mask[None, :]
    if HAS_BIAS:
        acc += tl.load(bias_ptr + d, mask=d_mask, other=0.0).to(tl.float32)[None, :]
    acc += tl.load(pos_ptr + idx[:, None] * D + d[None, :], mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + t[:, None].to(tl.int64) * D + d[None, :], to_output(acc, out_ptr.dtype.element_ty, EMULATE_RTNE), mask=mask)


@triton.jit
def _tokenize_bwd_kernel(grad_ptr, pix_ptr, keep_ptr, mean_ptr, rstd_ptr, gw_ptr, gb_ptr,
                         n_tokens, tokens_per_split, K, C, H, W, GW, G, D, KD, scale,
                         P: tl.constexpr, CA: tl.constexpr, DOT_MODE: tl.constexpr,
                         BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_d = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_s = tl.program_id(2)
    d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    kk = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_D, BLOCK_K], dtype=tl.float32)
    acc_b = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = pid_s * tokens_per_split
    stop = tl.minimum(start + tokens_per_split, n_tokens)
    for t0 in range(start, stop, BLOCK_T):
        t = t0 + tl.arange(0, BLOCK_T)
        t_mask = t < stop
        idx = tl.load(keep_ptr + t, mask=t_mask, other=0)
        g = tl.load(grad_ptr + t[:, None].to(tl.int64) * D + d[None, :],
                    mask=t_mask[:, None] & d_mask[None, :], other=0.0)
        a = _patch_tile(pix_ptr, mean_ptr, rstd_ptr, t // K, idx, t_mask, kk, C, H, W, GW, G, KD, scale, P, CA)
        acc = _dot(tl.trans(g), a, acc, DOT_MODE)
        acc_b += tl.sum(g.to(tl.float32), axis=0)
    out = gw_ptr + pid_s.to(tl.int64) * D * KD + d[:, None] * KD + kk[None, :]
    tl.store(out, acc, mask=d_mask[:, None] & (kk < KD)[None, :])
    if pid_k == 0:
        tl.store(gb_ptr + pid_s * D + d, acc_b, mask=d_mask)


@triton.jit
def _masked_targets_kernel(pix_ptr, idx_ptr, mean_ptr, rstd_ptr, out_ptr, n_rows, M, C, H, W, GW, G, PV, scale,
                           P: tl.constexpr, CA: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_P: tl.constexpr):
    t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    e = tl.program_id(1) * BLOCK_P + tl.arange(0, BLOCK_P)
    t_mask = t < n_rows
    idx = tl.load(idx_ptr + t, mask=t_mask, other=0)
    b = t // M
    if CA:
        cell = idx % G
        c = (idx // G)[:, None] + e[None, :] * 0
        s = e[None, :] + (t * 0)[:, None]
    else:  # (p, q, c): channel fastest
        cell = idx
        c = (e % C)[None, :] + (t * 0)[:, None]
        s = (e // C)[None, :] + (t * 0)[:, None]
    y = (cell // GW * P)[:, None] + s // P
    x = (cell % GW * P)[:, None] + s % P
    plane = b[:, None].to(tl.int64) * C + c
    mask = t_mask[:, None] & (e < PV)[None, :]
    value = tl.load(pix_ptr + plane * H * W + y * W + x, mask=mask, other=0).to(tl.float32)
    mean = tl.load(mean_ptr + plane, mask=mask, other=0.0)
    rstd = tl.load(rstd_ptr + plane, mask=mask, other=0.0)
    tl.store(out_ptr + t[:, None].to(tl.int64) * PV + e[None, :], (value / scale - mean) * rstd, mask=mask)


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


def _gemm_configs(space, fixed: dict, dot_mode: str) -> list:
    """The autotune space on a GPU, the fixed choice first (what runs with MAEFAST_AUTOTUNE=0); under the
    interpreter only the fixed choice. 4-byte dot operands (ieee, tf32) take half the K block, so that the
    tiles stay within Hopper's shared memory."""
    if interpreting():
        return [config(**fixed)]
    k_scale = 2 if dot_mode in ("ieee", "tf32") else 1
    candidates = [(fixed["BLOCK_T"], fixed["BLOCK_D"], fixed["BLOCK_K"], 4 if fixed["BLOCK_T"] * fixed["BLOCK_D"] <= 8192
                   else 8, 3)] + list(space)
    return [config(num_warps=w, num_stages=st, BLOCK_T=t, BLOCK_D=bd, BLOCK_K=max(16, bk // k_scale))
            for t, bd, bk, w, st in candidates]


def _fit(n: int, cap: int) -> int:
    return min(cap, max(16, triton.next_power_of_2(n)))


# (BLOCK_T, BLOCK_D, BLOCK_K, num_warps, num_stages) tried by the autotuner on a GPU
_FWD_SPACE = [(128, 128, 64, 8, 3), (64, 256, 64, 8, 3), (64, 128, 32, 4, 4)]
_BWD_SPACE = [(64, 64, 64, 4, 3), (64, 128, 64, 4, 3), (128, 128, 128, 8, 2)]


def tokenize_forward(pixels, keep_idx, weight2d, bias, pos_embed, mean, rstd, *, patch: int,
                     channel_agnostic: bool, out_dtype: torch.dtype, dot_mode: str) -> torch.Tensor:
    """Visible tokens (B, K, D). weight2d (D, KD) in the conv layout, pos_embed (L, D); all contiguous."""
    b, c, h, w, gw, g, kd = _geometry(pixels, patch, channel_agnostic)
    k = keep_idx.shape[1]
    d = weight2d.shape[0]
    out = torch.empty(b, k, d, dtype=out_dtype, device=pixels.device)
    n_tokens = b * k
    if n_tokens == 0:
        return out
    configs = _gemm_configs(_FWD_SPACE, dict(BLOCK_T=64, BLOCK_D=_fit(d, 128), BLOCK_K=_fit(kd, 64)), dot_mode)
    launch(Launch(
        _tokenize_fwd_kernel, lambda meta: (triton.cdiv(n_tokens, meta["BLOCK_T"]), triton.cdiv(d, meta["BLOCK_D"])),
        (pixels, keep_idx, mean, rstd, weight2d, bias if bias is not None else weight2d, pos_embed, out, n_tokens, k,
         c, h, w, gw, g, d, kd, _scale(pixels.dtype)),
        dict(P=patch, CA=channel_agnostic, HAS_BIAS=bias is not None, DOT_MODE=DOT_MODES[dot_mode],
             EMULATE_RTNE=emulate_rtne()),
        configs, key=("D", "KD")))
    return out


def tokenize_backward(grad, pixels, keep_idx, mean, rstd, *, patch: int, channel_agnostic: bool,
                      dot_mode: str, splits: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """grad (B, K, D) contiguous -> grad_weight (D, KD) and grad_bias (D,), float32.

    The tokens are split into `splits` ranges (enough programs to fill the GPU); each writes partial sums
    that are added up here, so the result is deterministic."""
    b, c, h, w, gw, g, kd = _geometry(pixels, patch, channel_agnostic)
    k = keep_idx.shape[1]
    d = grad.shape[-1]
    n_tokens = b * k
    if splits is None:
        if grad.is_cuda:
            tiles = triton.cdiv(d, 128) * triton.cdiv(kd, 128)
            sms = torch.cuda.get_device_properties(grad.device).multi_processor_count
            splits = max(1, min(triton.cdiv(4 * sms, tiles), triton.cdiv(n_tokens, 512)))
        else:
            splits = 2
    per_split = triton.cdiv(max(n_tokens, 1), splits * 128) * 128  # a multiple of every BLOCK_T
    splits = max(1, triton.cdiv(n_tokens, per_split))
    partial_w = torch.empty(splits, d, kd, dtype=torch.float32, device=grad.device)
    partial_b = torch.empty(splits, d, dtype=torch.float32, device=grad.device)
    if n_tokens == 0:
        return partial_w.zero_().sum(0), partial_b.zero_().sum(0)
    configs = _gemm_configs(_BWD_SPACE, dict(BLOCK_T=64, BLOCK_D=_fit(d, 128), BLOCK_K=_fit(kd, 128)), dot_mode)
    launch(Launch(
        _tokenize_bwd_kernel,
        lambda meta: (triton.cdiv(d, meta["BLOCK_D"]), triton.cdiv(kd, meta["BLOCK_K"]), splits),
        (grad, pixels, keep_idx, mean, rstd, partial_w, partial_b, n_tokens, per_split, k, c, h, w, gw, g, d, kd,
         _scale(pixels.dtype)),
        dict(P=patch, CA=channel_agnostic, DOT_MODE=DOT_MODES[dot_mode]),
        configs, key=("D", "KD")))
    return partial_w.sum(0), partial_b.sum(0)


def masked_targets(pixels, masked_idx, mean, rstd, *, patch: int, channel_agnostic: bool) -> torch.Tensor:
    """(B, M, P) float32 standardized pixels of the masked patches, in the decoder layout."""
    b, c, h, w, gw, g, pv = _geometry(pixels, patch, channel_agnostic)
    m = masked_idx.shape[1]
    out = torch.empty(b, m, pv, dtype=torch.float32, device=pixels.device)
    if b * m == 0:
        return out
    block_p = min(256, triton.next_power_of_2(pv))
    launch(Launch(_masked_targets_kernel, lambda meta: (triton.cdiv(b * m, meta["BLOCK_T"]), triton.cdiv(pv, block_p)),
                  (pixels, masked_idx, mean, rstd, out, b * m, m, c, h, w, gw, g, pv, _scale(pixels.dtype)),
                  dict(P=patch, CA=channel_agnostic, BLOCK_P=block_p), [config(BLOCK_T=16)]))
    return out
