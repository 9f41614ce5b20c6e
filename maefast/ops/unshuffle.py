"""unshuffle: the decoder input in one pass.

    visible    (B, K, D) decoder-embedded encoder tokens (no CLS), in keep_idx order
    keep_idx   (B, K) int64 token ids of the visible tokens
    mask_token (D,) learned token put at every masked position
    pos_embed  (L, D) fixed decoder position embedding
    -> (B, L, D): token order restored, mask tokens filled in, positions added

Backends: "triton" (kernels/unshuffle.py), "cpp" (csrc/unshuffle.cpp), "reference". The fused backends
write every output row once (no clone + scatter + add) and compute in float32, rounding once.
"""
from __future__ import annotations

import torch

from maefast.ops import _cpp
from maefast.ops.backend import cpp_extension, select_backend

IMPLEMENTED = ("reference", "triton", "cpp")


def unshuffle_reference(visible, keep_idx, mask_token, pos_embed) -> torch.Tensor:
    b, _, d = visible.shape
    num_tokens = pos_embed.shape[0]
    full = mask_token.to(visible.dtype).expand(b, num_tokens, d).clone()
    full = full.scatter(1, keep_idx.unsqueeze(-1).expand(-1, -1, d), visible)
    return full + pos_embed.to(visible.dtype)


@torch.library.custom_op("maefast::unshuffle", mutates_args=())
def _unshuffle_op(visible: torch.Tensor, keep_idx: torch.Tensor, mask_token: torch.Tensor, pos_embed: torch.Tensor,
                  backend: str) -> torch.Tensor:
    visible = visible.contiguous()
    keep_idx = keep_idx.contiguous()
    b, k, d = visible.shape
    num_tokens = pos_embed.shape[0]
    if backend == "triton":
        from maefast.kernels import unshuffle as kernels
        return kernels.unshuffle_forward(visible, kernels.inverse_index(keep_idx, num_tokens),
                                         mask_token.contiguous(), pos_embed.contiguous())
    out = torch.empty(b, num_tokens, d, dtype=visible.dtype)
    cpp_extension().unshuffle_forward(_cpp.buffer(visible), _cpp.kind(visible.dtype), b, k, d, _cpp.buffer(keep_idx),
                                      _cpp.buffer(mask_token.detach().float().contiguous()),
                                      _cpp.buffer(pos_embed.detach().float().contiguous()), num_tokens,
                                      _cpp.buffer(out))
    return out


@_unshuffle_op.register_fake
def _(visible, keep_idx, mask_token, pos_embed, backend):
    return visible.new_empty((visible.shape[0], pos_embed.shape[0], visible.shape[2]))


@torch.library.custom_op("maefast::unshuffle_backward", mutates_args=())
def _unshuffle_backward_op(grad: torch.Tensor, keep_idx: torch.Tensor,
                           backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_visible in grad's dtype, grad_mask_token float32)."""
    grad = grad.contiguous()
    keep_idx = keep_idx.contiguous()
    b, num_tokens, d = grad.shape
    k = keep_idx.shape[1]
    if backend == "triton":
        from maefast.kernels import unshuffle as kernels
        return kernels.unshuffle_backward(grad, kernels.inverse_index(keep_idx, num_tokens), k)
    grad_visible = torch.empty(b, k, d, dtype=grad.dtype)
    grad_mask = torch.empty(d, dtype=torch.float32)
    cpp_extension().unshuffle_backward(_cpp.buffer(grad), _cpp.kind(grad.dtype), b, k, d, _cpp.buffer(keep_idx),
                                       num_tokens, _cpp.buffer(grad_visible), _cpp.buffer(grad_mask))
    return grad_visible, grad_mask


@_unshuffle_backward_op.register_fake
def _(grad, keep_idx, backend):
    return (grad.new_empty((grad.shape[0], keep_idx.shape[1], grad.shape[2])),
            grad.new_empty((grad.shape[2],), dtype=torch.float32))


def _setup_context(ctx, inputs, output):
    visible, keep_idx, mask_token, pos_embed, backend = inputs
    ctx.save_for_backward(keep_idx)
    ctx.meta = (visible.dtype, mask_token.dtype, pos_embed.dtype, backend)


def _backward(ctx, grad):
    (keep_idx,) = ctx.saved_tensors
    visible_dtype, mask_dtype, pos_dtype, backend = ctx.meta
    grad_visible = grad_mask = grad_pos = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[2]:
        grad_visible, grad_mask = _unshuffle_backward_op(grad, keep_idx, backend)
        grad_visible = grad_visible.to(visible_dtype)
        grad_mask = grad_mask.to(mask_dtype)
    if ctx.needs_input_grad[3]:  # positions are fixed in the models; this is for completeness
        grad_pos = grad.float().sum(0).to(pos_dtype)
    return grad_visible, None, grad_mask, grad_pos, None


_unshuffle_op.register_autograd(_backward, setup_context=_setup_context)


def unshuffle(visible, keep_idx, mask_token, pos_embed, *, backend: str | None = None) -> torch.Tensor:
    backend = backend or select_backend("unshuffle", visible.device, IMPLEMENTED)
    if backend == "reference":
        return unshuffle_reference(visible, keep_idx, mask_token, pos_embed)
    return _unshuffle_op(visible, keep_idx, mask_token.reshape(-1), pos_embed, backend)
