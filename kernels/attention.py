"""Triton flash attention (spec: maefast/ops/attention.py), forward and backward, and plain launchers.

softmax(q k^T * scale) v without materializing the scores: online softmax over key blocks in the forward
(saving the base-2 log-sum-exp per query row), recomputation in the backward:
_attention_fwd_kernel        one program per (query block, batch * head)
_attention_bwd_delta_kernel  delta = rowsum(dO * OUT)
_attention_bwd_dkdv_kernel   one program per (key block, batch * head), loops over query blocks
_attention_bwd_dq_kernel     one program per (query block, batch * head), loops over key blocks
Any sequence lengths (self- and cross-attention), head dims up to 128 (padded to a power of two), any
strides (q, k, v may be views of (B, N, H, d) projections). UPCAST=True runs the dots in fp32 (fp32 inputs,
and the interpreter, whose 16-bit dots are not exact); otherwise dots take bf16 / fp16 operands.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from maefast.kernels._common import Launch, config, emulate_rtne, launch, to_output
from maefast.kernels._common import interpreting as _interpreting

LOG2E = 1.4426950408889634  # the kernels work in base 2: exp(x) = exp2(x * log2(e))


@triton.jit
def _mm(a, b, UPCAST: tl.constexpr):
    if UPCAST:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _ln_rows(x, w_ptr, b_ptr, offs_d, d_mask, HEAD_DIM, eps):
    """LayerNorm over the head dim of x (rows, BLOCK_D): (y, x_hat, rstd) in fp32."""
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=1) / HEAD_DIM
    xc = tl.where(d_mask[None, :], x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=1) / HEAD_DIM + eps)
    x_hat = xc * rstd[:, None]
    w = tl.load(w_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    return x_hat * w[None, :] + b[None, :], x_hat, rstd


@triton.jit
def _ln_cols(x, w_ptr, b_ptr, offs_d, d_mask, HEAD_DIM, eps):
    """LayerNorm over the head dim of a transposed tile x (BLOCK_D, cols): y in fp32."""
    x = x.to(tl.float32)
    mean = tl.sum(x, axis=0) / HEAD_DIM
    xc = tl.where(d_mask[:, None], x - mean[None, :], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(xc * xc, axis=0) / HEAD_DIM + eps)
    w = tl.load(w_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    b = tl.load(b_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    return xc * rstd[None, :] * w[:, None] + b[:, None]


@triton.jit
def _ln_rows_backward(dy, x_hat, rstd, w_ptr, offs_d, d_mask, HEAD_DIM):
    """Gradient of LayerNorm's input from the gradient dy of its output (rows, BLOCK_D)."""
    w = tl.load(w_ptr + offs_d, mask=d_mask, other=0.0).to(tl.float32)
    dxh = dy * w[None, :]
    c1 = tl.sum(dxh, axis=1) / HEAD_DIM
    c2 = tl.sum(dxh * x_hat, axis=1) / HEAD_DIM
    return tl.where(d_mask[None, :], (dxh - c1[:, None] - x_hat * c2[:, None]) * rstd[:, None], 0.0)


@triton.jit
def _attention_fwd_kernel(Q, K, V, OUT, LSE, QW, QB, KW, KB, qk_scale, eps,
                          sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd, sob, soh, som, sod,
                          H, NQ, NK, HEAD_DIM,
                          BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                          UPCAST: tl.constexpr, EMULATE_RTNE: tl.constexpr, QK_NORM: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    m_mask = offs_m < NQ
    q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh
    q = tl.load(q_base + offs_m[:, None] * sqm + offs_d[None, :] * sqd, mask=m_mask[:, None] & d_mask[None, :],
                other=0.0)
    if QK_NORM:
        q, q_hat, q_rstd = _ln_rows(q, QW, QB, offs_d, d_mask, HEAD_DIM, eps)
        if not UPCAST:
            q = q.to(Q.dtype.element_ty)
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        n = start_n + offs_n
        n_mask = n < NK
        k = tl.load(k_base + n[None, :] * skn + offs_d[:, None] * skd, mask=n_mask[None, :] & d_mask[:, None],
                    other=0.0)
        if QK_NORM:
            k = _ln_cols(k, KW, KB, offs_d, d_mask, HEAD_DIM, eps)
            if not UPCAST:
                k = k.to(K.dtype.element_ty)
        v = tl.load(v_base + n[:, None] * svn + offs_d[None, :] * svd, mask=n_mask[:, None] & d_mask[None, :],
                    other=0.0)
        s = _mm(q, k, UPCAST) * qk_scale
        s = tl.where(n_mask[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, axis=1))
        p = tl.math.exp2(s - m_new[:, None])
        alpha = tl.math.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, axis=1)
        if UPCAST:
            acc = acc * alpha[:, None] + _mm(p, v, UPCAST)
        else:
            acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
        m_i = m_new
    acc = acc / l_i[:, None]
    o_base = OUT + b.to(tl.int64) * sob + h.to(tl.int64) * soh
    tl.store(o_base + offs_m[:, None] * som + offs_d[None, :] * sod, to_output(acc, OUT.dtype.element_ty, EMULATE_RTNE),
             mask=m_mask[:, None] & d_mask[None, :])
    tl.store(LSE + pid_bh.to(tl.int64) * NQ + offs_m, m_i + tl.math.log2(l_i), mask=m_mask)


@triton.jit
def _attention_bwd_delta_kernel(OUT, DO, DELTA, sob, soh, som, sod, sdb, sdh, sdm, sdd, H, NQ, HEAD_DIM,
                                BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (offs_m < NQ)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(OUT + b.to(tl.int64) * sob + h.to(tl.int64) * soh + offs_m[:, None] * som + offs_d[None, :] * sod,
                mask=mask, other=0.0).to(tl.float32)
    do = tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + offs_m[:, None] * sdm + offs_d[None, :] * sdd,
                 mask=mask, other=0.0).to(tl.float32)
    tl.store(DELTA + pid_bh.to(tl.int64) * NQ + offs_m, tl.sum(o * do, axis=1), mask=offs_m < NQ)


@triton.jit
def _attention_bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, QW, QB, KW, KB, GW, GB, qk_scale, sm_scale, eps,
                               sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                               sdb, sdh, sdm, sdd, sgkb, sgkh, sgkn, sgkd, sgvb, sgvh, sgvn, sgvd,
                               H, NQ, NK, HEAD_DIM,
                               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                               UPCAST: tl.constexpr, EMULATE_RTNE: tl.constexpr, QK_NORM: tl.constexpr):
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    n_mask = offs_n < NK
    nd_mask = n_mask[:, None] & d_mask[None, :]
    k_ptrs = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh + offs_n[:, None] * skn + offs_d[None, :] * skd
    v_ptrs = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh + offs_n[:, None] * svn + offs_d[None, :] * svd
    k = tl.load(k_ptrs, mask=nd_mask, other=0.0)
    if QK_NORM:
        k, k_hat, k_rstd = _ln_rows(k, KW, KB, offs_d, d_mask, HEAD_DIM, eps)
        if not UPCAST:
            k = k.to(K.dtype.element_ty)
    v = tl.load(v_ptrs, mask=nd_mask, other=0.0)
    q_base = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh
    do_base = DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh
    row_base = pid_bh.to(tl.int64) * NQ
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    for start_m in range(0, NQ, BLOCK_M):
        m = start_m + offs_m
        m_mask = m < NQ
        qT = tl.load(q_base + m[None, :] * sqm + offs_d[:, None] * sqd, mask=m_mask[None, :] & d_mask[:, None],
                     other=0.0)
        if QK_NORM:
            qT = _ln_cols(qT, QW, QB, offs_d, d_mask, HEAD_DIM, eps)
            if not UPCAST:
                qT = qT.to(Q.dtype.element_ty)
        lse = tl.load(LSE + row_base + m, mask=m_mask, other=0.0)
        sT = _mm(k, qT, UPCAST) * qk_scale  # (BLOCK_N, BLOCK_M)
        pT = tl.math.exp2(sT - lse[None, :])
        pT = tl.where(m_mask[None, :] & n_mask[:, None], pT, 0.0)
        do = tl.load(do_base + m[:, None] * sdm + offs_d[None, :] * sdd, mask=m_mask[:, None] & d_mask[None, :],
                     other=0.0)
        if UPCAST:
            dv += _mm(pT, do, UPCAST)
        else:
            dv += tl.dot(pT.to(do.dtype), do)
        delta = tl.load(DELTA + row_base + m, mask=m_mask, other=0.0)
        dpT = _mm(v, tl.trans(do), UPCAST)
        dsT = pT * (dpT - delta[None, :])
        if UPCAST:
            dk += _mm(dsT, tl.trans(qT), UPCAST)
        else:
            dk += tl.dot(dsT.to(qT.dtype), tl.trans(qT))
    dk_ptrs = DK + b.to(tl.int64) * sgkb + h.to(tl.int64) * sgkh + offs_n[:, None] * sgkn + offs_d[None, :] * sgkd
    dv_ptrs = DV + b.to(tl.int64) * sgvb + h.to(tl.int64) * sgvh + offs_n[:, None] * sgvn + offs_d[None, :] * sgvd
    dk = dk * sm_scale
    if QK_NORM:  # dk is the gradient of the normalized k: LayerNorm backward, and partial weight / bias grads
        slot = (pid_bh.to(tl.int64) * tl.num_programs(0) + pid_n) * HEAD_DIM
        tl.store(GW + slot + offs_d, tl.sum(dk * k_hat, axis=0), mask=d_mask)
        tl.store(GB + slot + offs_d, tl.sum(dk, axis=0), mask=d_mask)
        dk = _ln_rows_backward(dk, k_hat, k_rstd, KW, offs_d, d_mask, HEAD_DIM)
    tl.store(dk_ptrs, to_output(dk, DK.dtype.element_ty, EMULATE_RTNE), mask=nd_mask)
    tl.store(dv_ptrs, to_output(dv, DV.dtype.element_ty, EMULATE_RTNE), mask=nd_mask)


@triton.jit
def _attention_bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, QW, QB, KW, KB, GW, GB, qk_scale, sm_scale, eps,
                             sqb, sqh, sqm, sqd, skb, skh, skn, skd, svb, svh, svn, svd,
                             sdb, sdh, sdm, sdd, sgqb, sgqh, sgqm, sgqd, H, NQ, NK, HEAD_DIM,
                             BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr,
                             UPCAST: tl.constexpr, EMULATE_RTNE: tl.constexpr, QK_NORM: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = pid_bh // H
    h = pid_bh % H
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    d_mask = offs_d < HEAD_DIM
    m_mask = offs_m < NQ
    md_mask = m_mask[:, None] & d_mask[None, :]
    q_ptrs = Q + b.to(tl.int64) * sqb + h.to(tl.int64) * sqh + offs_m[:, None] * sqm + offs_d[None, :] * sqd
    q = tl.load(q_ptrs, mask=md_mask, other=0.0)
    if QK_NORM:
        q, q_hat, q_rstd = _ln_rows(q, QW, QB, offs_d, d_mask, HEAD_DIM, eps)
        if not UPCAST:
            q = q.to(Q.dtype.element_ty)
    do = tl.load(DO + b.to(tl.int64) * sdb + h.to(tl.int64) * sdh + offs_m[:, None] * sdm + offs_d[None, :] * sdd,
                 mask=md_mask, other=0.0)
    row_base = pid_bh.to(tl.int64) * NQ
    lse = tl.load(LSE + row_base + offs_m, mask=m_mask, other=0.0)
    delta = tl.load(DELTA + row_base + offs_m, mask=m_mask, other=0.0)
    k_base = K + b.to(tl.int64) * skb + h.to(tl.int64) * skh
    v_base = V + b.to(tl.int64) * svb + h.to(tl.int64) * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for start_n in range(0, NK, BLOCK_N):
        n = start_n + offs_n
        n_mask = n < NK
        kT = tl.load(k_base + n[None, :] * skn + offs_d[:, None] * skd, mask=n_mask[None, :] & d_mask[:, None],
                     other=0.0)
        if QK_NORM:
            kT = _ln_cols(kT, KW, KB, offs_d, d_mask, HEAD_DIM, eps)
            if not UPCAST:
                kT = kT.to(K.dtype.element_ty)
        vT = tl.load(v_base + n[None, :] * svn + offs_d[:, None] * svd, mask=n_mask[None, :] & d_mask[:, None],
                     other=0.0)
        s = _mm(q, kT, UPCAST) * qk_scale
        p = tl.math.exp2(s - lse[:, None])
        p = tl.where(n_mask[None, :], p, 0.0)
        dp = _mm(do, vT, UPCAST)
        ds = p * (dp - delta[:, None])
        if UPCAST:
            dq += _mm(ds, tl.trans(kT), UPCAST)
        else:
            dq += tl.dot(ds.to(kT.dtype), tl.trans(kT))
    dq_ptrs = DQ + b.to(tl.int64) * sgqb + h.to(tl.int64) * sgqh + offs_m[:, None] * sgqm + offs_d[None, :] * sgqd
    dq = dq * sm_scale
    if QK_NORM:
        slot = (pid_bh.to(tl.int64) * tl.num_programs(0) + pid_m) * HEAD_DIM
        tl.store(GW + slot + offs_d, tl.sum(dq * q_hat, axis=0), mask=d_mask)
        tl.store(GB + slot + offs_d, tl.sum(dq, axis=0), mask=d_mask)
        dq = _ln_rows_backward(dq, q_hat, q_rstd, QW, offs_d, d_mask, HEAD_DIM)
    tl.store(dq_ptrs, to_output(dq, DQ.dtype.element_ty, EMULATE_RTNE), mask=md_mask)


# ---------------------------------------------------------------------------------------------------- launchers

# (BLOCK_M, BLOCK_N, num_warps, num_stages) tried by the autotuner on a GPU; the first is the fixed choice
# (MAEFAST_AUTOTUNE=0) for head dims up to 64, FIXED_LARGE_HEAD for larger head dims. None of them spills
# registers when built for sm_90 at head dim 64 with qk-norm (ptxas, tests/ops/sm90_check.py); the 4-warp
# dK/dV 32x128 and 64x128 and dQ 128x64 tiles, which did (up to 1.5 KB of spill traffic), are out.
_TUNE_SPACE = {
    "fwd": [(128, 64, 4, 3), (128, 128, 8, 3), (128, 64, 8, 3)],
    "dkdv": [(64, 64, 4, 2), (64, 128, 8, 2), (32, 128, 8, 2)],
    "dq": [(128, 32, 4, 2), (128, 64, 8, 2), (64, 64, 4, 2)],
}
_FIXED_LARGE_HEAD = {"fwd": (128, 64, 8, 3), "dkdv": (32, 64, 4, 2), "dq": (64, 32, 4, 2)}
_PLAIN = {"fwd": _attention_fwd_kernel, "dkdv": _attention_bwd_dkdv_kernel, "dq": _attention_bwd_dq_kernel}


def _configs(name: str, head_dim: int) -> list:
    if _interpreting():
        return [config(BLOCK_M=32, BLOCK_N=32)]
    space = list(_TUNE_SPACE[name])
    if head_dim > 64:
        space.insert(0, _FIXED_LARGE_HEAD[name])
    return [config(num_warps=w, num_stages=st, BLOCK_M=m, BLOCK_N=n) for m, n, w, st in space]


def _block_d(head_dim: int) -> int:
    return max(16, triton.next_power_of_2(head_dim))


def _upcast(q: torch.Tensor) -> bool:
    return _interpreting() or q.dtype == torch.float32


_KEY = ("NQ", "NK", "HEAD_DIM")


def attention_forward(q, k, v, scale: float, norms=None) -> tuple[torch.Tensor, torch.Tensor]:
    """q (B, H, Nq, d), k / v (B, H, Nk, d), any strides -> out (B, H, Nq, d) laid out as (B, Nq, H, d), and
    the base-2 log-sum-exp (B * H, Nq) float32. norms = (q_weight, q_bias, k_weight, k_bias, eps) applies
    LayerNorm over the head dim to q and k inside the kernel (qk-norm)."""
    b, h, nq, d = q.shape
    nk = k.shape[2]
    out = torch.empty(b, nq, h, d, dtype=q.dtype, device=q.device).transpose(1, 2)
    lse = torch.empty(b * h, nq, dtype=torch.float32, device=q.device)
    if b * h * nq == 0:
        return out, lse
    qw, qb, kw, kb, eps = norms if norms is not None else (q, q, q, q, 0.0)
    launch(Launch(
        _attention_fwd_kernel, lambda meta: (triton.cdiv(nq, meta["BLOCK_M"]), b * h),
        (q, k, v, out, lse, qw, qb, kw, kb, scale * LOG2E, eps, *q.stride(), *k.stride(), *v.stride(),
         *out.stride(), h, nq, nk, d),
        dict(BLOCK_D=_block_d(d), UPCAST=_upcast(q), EMULATE_RTNE=emulate_rtne(), QK_NORM=norms is not None),
        _configs("fwd", d), key=_KEY))
    return out, lse


def attention_backward(grad_out, q, k, v, out, lse, scale: float, norms=None):
    """(dq, dk, dv), plus (dq_weight, dq_bias, dk_weight, dk_bias) in float32 when norms are given."""
    b, h, nq, d = q.shape
    nk = k.shape[2]
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    # per-program partial sums of the LayerNorm parameter gradients, sized for the smallest block (32)
    partial_k = partial_q = (lse, lse)  # never written without norms
    if norms is not None:
        partial_k = torch.zeros(2, b * h * triton.cdiv(max(nk, 1), 32), d, dtype=torch.float32, device=q.device)
        partial_q = torch.zeros(2, b * h * triton.cdiv(max(nq, 1), 32), d, dtype=torch.float32, device=q.device)
    qw, qb, kw, kb, eps = norms if norms is not None else (q, q, q, q, 0.0)

    def finish():
        grads = (dq, dk, dv)
        if norms is None:
            return grads
        return grads + (partial_q[0].sum(0), partial_q[1].sum(0), partial_k[0].sum(0), partial_k[1].sum(0))

    if b * h * nq * nk == 0:
        dq.zero_(), dk.zero_(), dv.zero_()
        return finish()
    delta = torch.empty(b * h, nq, dtype=torch.float32, device=q.device)
    block_d = _block_d(d)
    launch(Launch(_attention_bwd_delta_kernel, lambda meta: (triton.cdiv(nq, meta["BLOCK_M"]), b * h),
                  (out, grad_out, delta, *out.stride(), *grad_out.stride(), h, nq, d),
                  dict(BLOCK_D=block_d), [config(BLOCK_M=64)]))
    strides = (*q.stride(), *k.stride(), *v.stride(), *grad_out.stride())
    sizes = (h, nq, nk, d)
    flags = dict(BLOCK_D=block_d, UPCAST=_upcast(q), EMULATE_RTNE=emulate_rtne(), QK_NORM=norms is not None)
    launch(Launch(
        _attention_bwd_dkdv_kernel, lambda meta: (triton.cdiv(nk, meta["BLOCK_N"]), b * h),
        (q, k, v, grad_out, lse, delta, dk, dv, qw, qb, kw, kb, partial_k[0], partial_k[1], scale * LOG2E, scale, eps,
         *strides, *dk.stride(), *dv.stride(), *sizes),
        flags, _configs("dkdv", d), key=_KEY))
    launch(Launch(
        _attention_bwd_dq_kernel, lambda meta: (triton.cdiv(nq, meta["BLOCK_M"]), b * h),
        (q, k, v, grad_out, lse, delta, dq, qw, qb, kw, kb, partial_q[0], partial_q[1], scale * LOG2E, scale, eps,
         *strides, *dq.stride(), *sizes),
        flags, _configs("dq", d), key=_KEY))
    return finish()
