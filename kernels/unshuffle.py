"""Triton kernels of unshuffle (spec: maefast/ops/unshuffle.py) and plain launchers.

_unshuffle_fwd_kernel  out[b, l] = (visible[b, inverse[b, l]] or mask_token) + pos_embed[l], one pass
_unshuffle_bwd_kernel  grad_visible[b, k] = grad[b, keep_idx[b, k]]; mask-token gradient summed over the
                       masked rows (per-program partial sums, added up by the launcher)
inverse[b, l] is the position of token l in keep_idx[b], or -1 where l is masked.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from maefast.kernels._common import Launch, config, emulate_rtne, launch, to_output


@triton.jit
def _unshuffle_fwd_kernel(vis_ptr, inv_ptr, mask_ptr, pos_ptr, out_ptr, n_rows, L, K, D,
                          BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, EMULATE_RTNE: tl.constexpr):
    r = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    r_mask = r < n_rows
    d_mask = d < D
    k = tl.load(inv_ptr + r, mask=r_mask, other=-1)
    b = r // L
    position = r % L
    visible = k >= 0
    src = (b.to(tl.int64) * K + k)[:, None] * D + d[None, :]
    v = tl.load(vis_ptr + src, mask=(r_mask & visible)[:, None] & d_mask[None, :], other=0.0).to(tl.float32)
    token = tl.load(mask_ptr + d, mask=d_mask, other=0.0).to(tl.float32)
    value = tl.where(visible[:, None], v, token[None, :])
    value += tl.load(pos_ptr + position[:, None] * D + d[None, :], mask=r_mask[:, None] & d_mask[None, :],
                     other=0.0).to(tl.float32)
    tl.store(out_ptr + r[:, None].to(tl.int64) * D + d[None, :],
             to_output(value, out_ptr.dtype.element_ty, EMULATE_RTNE), mask=r_mask[:, None] & d_mask[None, :])


@triton.jit
def _unshuffle_bwd_kernel(grad_ptr, inv_ptr, gvis_ptr, partial_ptr, n_rows, rows_per_program, L, K, D,
                          BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    pid = tl.program_id(0)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    d_mask = d < D
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    start = pid * rows_per_program
    stop = tl.minimum(start + rows_per_program, n_rows)
    for r0 in range(start, stop, BLOCK_R):
        r = r0 + tl.arange(0, BLOCK_R)
        r_mask = r < stop
        k = tl.load(inv_ptr + r, mask=r_mask, other=-1)
        visible = k >= 0
        g = tl.load(grad_ptr + r[:, None].to(tl.int64) * D + d[None, :], mask=r_mask[:, None] & d_mask[None, :],
                    other=0.0)
        dst = ((r // L).to(tl.int64) * K + k)[:, None] * D + d[None, :]
        tl.store(gvis_ptr + dst, g, mask=(r_mask & visible)[:, None] & d_mask[None, :])
        acc += tl.sum(tl.where((r_mask & ~visible)[:, None], g.to(tl.float32), 0.0), axis=0)
    tl.store(partial_ptr + pid * D + d, acc, mask=d_mask)


def inverse_index(keep_idx: torch.Tensor, num_tokens: int) -> torch.Tensor:
    """(B, L) int32: position of each token in keep_idx, -1 where masked."""
    b, k = keep_idx.shape
    inverse = torch.full((b, num_tokens), -1, dtype=torch.int32, device=keep_idx.device)
    positions = torch.arange(k, dtype=torch.int32, device=keep_idx.device).expand(b, k)
    return inverse.scatter_(1, keep_idx, positions)


def _block_d(d: int) -> int:
    return min(256, max(16, triton.next_power_of_2(d)))


def unshuffle_forward(visible, inverse, mask_token, pos_embed) -> torch.Tensor:
    """visible (B, K, D), inverse (B, L) int32, mask_token (D,), pos_embed (L, D); contiguous."""
    b, k, d = visible.shape
    num_tokens = inverse.shape[1]
    out = torch.empty(b, num_tokens, d, dtype=visible.dtype, device=visible.device)
    n_rows = b * num_tokens
    if n_rows == 0 or d == 0:
        return out
    block_d = _block_d(d)
    launch(Launch(_unshuffle_fwd_kernel, lambda meta: (triton.cdiv(n_rows, meta["BLOCK_R"]), triton.cdiv(d, block_d)),
                  (visible, inverse, mask_token, pos_embed, out, n_rows, num_tokens, k, d),
                  dict(BLOCK_D=block_d, EMULATE_RTNE=emulate_rtne()),
                  [config(num_warps=4, BLOCK_R=max(1, 4096 // block_d))]))
    return out


def unshuffle_backward(grad, inverse, num_kept: int) -> tuple[torch.Tensor, torch.Tensor]:
    """grad (B, L, D) contiguous -> grad_visible (B, K, D) in grad's dtype, grad_mask_token (D,) float32."""
    b, num_tokens, d = grad.shape
    grad_visible = torch.empty(b, num_kept, d, dtype=grad.dtype, device=grad.device)
    n_rows = b * num_tokens
    block_d = _block_d(max(d, 1))
    block_r = max(1, 4096 // block_d)
    if grad.is_cuda:
        programs = 4 * torch.cuda.get_device_properties(grad.device).multi_processor_count
    else:
        programs = 4
    programs = max(1, min(programs, triton.cdiv(max(n_rows, 1), block_r)))
    rows_per_program = triton.cdiv(max(n_rows, 1), programs * block_r) * block_r
    programs = max(1, triton.cdiv(max(n_rows, 1), rows_per_program))
    partial = torch.empty(programs, d, dtype=torch.float32, device=grad.device)
    if n_rows == 0 or d == 0:
        return grad_visible, partial.zero_().sum(0)
    launch(Launch(_unshuffle_bwd_kernel, lambda meta: (programs, triton.cdiv(d, block_d)),
                  (grad, inverse, grad_visible, partial, n_rows, rows_per_program, num_tokens, num_kept, d),
                  dict(BLOCK_D=block_d), [config(num_warps=4, BLOCK_R=block_r)]))
    return grad_visible, partial.sum(0)
