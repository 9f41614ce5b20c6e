"""attention: softmax(q k^T * scale) v for self- and cross-attention.

    q (B, H, Nq, d), k and v (B, H, Nk, d) -> (B, H, Nq, d)
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from maefast.ops.backend import select_backend

IMPLEMENTED = ("reference",)


def attention_reference(q, k, v, scale: float | None = None) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


def attention(q, k, v, scale: float | None = None) -> torch.Tensor:
    backend = select_backend("attention", q.device, IMPLEMENTED)
    if backend == "reference":
        # SDPA computes the reference's math with PyTorch's own fused kernels.
        return F.scaled_dot_product_attention(q, k, v, scale=scale)
    raise AssertionError(f"attention: backend {backend} is not wired")
