"""tokenize: integer pixels -> visible patch tokens, and the standardized targets of the masked patches.

The reference below is the specification. Shapes:
    pixels      (B, C, H, W) uint8 / uint16 (or float already in [0, 1])
    keep_idx    (B, K) int64 token ids to embed (see ops.patches for the token order)
    weight      (D, C, p, p) for ViT, (D, 1, p, p) for CA-MAE (one projection shared by all channels)
    bias        (D,) or None
    pos_embed   (L, D) fixed position embedding of every token (CA-MAE: grid positions tiled per channel)
    -> tokens   (B, K, D) in `out_dtype` (default: the autocast dtype when autocast is on, else weight's)

Backends: "triton" (kernels/tokenize.py), "cpp" (csrc/tokenize.cpp), "reference". The fused backends
never build the full patch tensor: they standardize and gather only the visible patches, and the backward
(weight and bias gradients; pixels get none) gathers them again from the pixels and the per-(image,
channel) statistics saved by the forward. On a GPU the projection is a cuBLAS GEMM on the gathered
patches, with the positions (and bias) added in its epilogue; the C++ backend fuses the forward on the CPU.
"""
from __future__ import annotations

import torch

from maefast.ops import _cpp
from maefast.ops.backend import cpp_extension, select_backend
from maefast.ops.patches import embedding_patches, gather_tokens, patchify, self_standardize

IMPLEMENTED = ("reference", "triton", "cpp")


def default_out_dtype(weight: torch.Tensor) -> torch.dtype:
    device_type = weight.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def tokenize_reference(pixels, keep_idx, weight, bias, pos_embed, *, channel_agnostic: bool,
                       out_dtype: torch.dtype | None = None) -> torch.Tensor:
    patch_size = weight.shape[-1]
    patches = embedding_patches(self_standardize(pixels), patch_size, channel_agnostic)
    visible = gather_tokens(patches, keep_idx)
    tokens = visible @ weight.reshape(weight.shape[0], -1).float().t()
    if bias is not None:
        tokens = tokens + bias.float()
    tokens = tokens + gather_tokens(pos_embed.float().expand(pixels.shape[0], -1, -1), keep_idx)
    return tokens.to(out_dtype or default_out_dtype(weight))


def masked_targets_reference(pixels, masked_idx, patch_size: int, *, channel_agnostic: bool) -> torch.Tensor:
    """(B, M, P) float32: the self-standardized pixels of the masked patches, in the decoder's layout."""
    targets = patchify(self_standardize(pixels), patch_size, channel_agnostic)
    return gather_tokens(targets, masked_idx)


# ------------------------------------------------------------------------------------------ fused backends

def _kernel_pixels(pixels: torch.Tensor) -> torch.Tensor:
    """uint8 / uint16 stay integers; other floats become float32 (the reference's first step)."""
    if pixels.dtype not in (torch.uint8, torch.uint16, torch.float32):
        pixels = pixels.to(torch.float32)
    return pixels.contiguous()


def _stats(pixels: torch.Tensor, backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    b, c, h, w = pixels.shape
    if backend == "triton":
        from maefast.kernels import tokenize as kernels
        return kernels.tokenize_stats(pixels)
    mean = torch.empty(b, c, dtype=torch.float32)
    rstd = torch.empty(b, c, dtype=torch.float32)
    cpp_extension().tokenize_stats(_cpp.buffer(pixels), _cpp.kind(pixels.dtype), b * c, h * w,
                                   _cpp.buffer(mean), _cpp.buffer(rstd))
    return mean, rstd


@torch.library.custom_op("maefast::tokenize", mutates_args=())
def _tokenize_op(pixels: torch.Tensor, keep_idx: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                 pos_embed: torch.Tensor, channel_agnostic: bool, out_dtype: torch.dtype,
                 backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (tokens, mean, rstd); mean / rstd (B, C) are kept for the backward."""
    pixels = _kernel_pixels(pixels)
    keep_idx = keep_idx.contiguous()
    b, c, h, w = pixels.shape
    d, patch = weight.shape[0], weight.shape[-1]
    mean, rstd = _stats(pixels, backend)
    pos = pos_embed.contiguous()
    if backend == "triton":
        return _triton_tokens(pixels, keep_idx, weight, bias, pos, mean, rstd, channel_agnostic, out_dtype), mean, rstd
    tokens = torch.empty(b, keep_idx.shape[1], d, dtype=out_dtype)
    cpp_extension().tokenize_forward(
        _cpp.buffer(pixels), _cpp.kind(pixels.dtype), b, c, h, w, patch, channel_agnostic, _cpp.buffer(keep_idx),
        keep_idx.shape[1], _cpp.buffer(mean), _cpp.buffer(rstd),
        _cpp.buffer(weight.detach().reshape(d, -1).float().contiguous()), d,
        None if bias is None else _cpp.buffer(bias.detach().float().contiguous()),
        _cpp.buffer(pos.detach().float().contiguous()), _cpp.buffer(tokens), _cpp.kind(out_dtype))
    return tokens, mean, rstd


@_tokenize_op.register_fake
def _(pixels, keep_idx, weight, bias, pos_embed, channel_agnostic, out_dtype, backend):
    b, c = pixels.shape[:2]
    tokens = pixels.new_empty((b, keep_idx.shape[1], weight.shape[0]), dtype=out_dtype)
    return tokens, pixels.new_empty((b, c), dtype=torch.float32), pixels.new_empty((b, c), dtype=torch.float32)


@torch.library.custom_op("maefast::tokenize_backward", mutates_args=())
def _tokenize_backward_op(grad: torch.Tensor, pixels: torch.Tensor, keep_idx: torch.Tensor, mean: torch.Tensor,
                          rstd: torch.Tensor, embed_dim: int, patch: int, channel_agnostic: bool,
                          backend: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_weight (D, KD), grad_bias (D,)) in float32."""
    pixels = _kernel_pixels(pixels)
    keep_idx = keep_idx.contiguous()
    grad = grad.contiguous()
    if backend == "triton":
        return _triton_weight_grads(grad, pixels, keep_idx, mean, rstd, embed_dim, patch, channel_agnostic)
    # CPU: the C++ kernel gathers the standardized visible patches (never all of them), and the weight
    # gradient is one GEMM through PyTorch's BLAS, measured faster here than a hand-written GEMM.
    channels = 1 if channel_agnostic else pixels.shape[1]
    kd = patch * patch * channels
    patches = _cpp_standardized_patches(pixels, keep_idx, mean, rstd, patch, channel_agnostic)
    flat_grad = grad.reshape(-1, embed_dim)
    if flat_grad.dtype == torch.bfloat16:
        # A bf16 gradient (bf16 tokens, as under autocast): the GEMM takes bf16 operands with fp32
        # accumulation, as autocast runs this product, on the CPU's bf16 units (AMX / AVX512-BF16).
        grad_weight = (flat_grad.t() @ patches.reshape(-1, kd).to(torch.bfloat16)).float()
    else:
        grad_weight = flat_grad.float().t() @ patches.reshape(-1, kd)
    # patches come in the decoder layout (p, q, c); the weight is laid out (c, p, q)
    grad_weight = grad_weight.view(embed_dim, patch, patch, channels).permute(0, 3, 1, 2).reshape(embed_dim, kd)
    grad_bias = flat_grad.float().sum(0)
    return grad_weight, grad_bias


@_tokenize_backward_op.register_fake
def _(grad, pixels, keep_idx, mean, rstd, embed_dim, patch, channel_agnostic, backend):
    kd = patch * patch * (1 if channel_agnostic else pixels.shape[1])
    return grad.new_empty((embed_dim, kd), dtype=torch.float32), grad.new_empty((embed_dim,), dtype=torch.float32)


def _tokenize_setup_context(ctx, inputs, output):
    pixels, keep_idx, weight, bias, pos_embed, channel_agnostic, out_dtype, backend = inputs
    _, mean, rstd = output
    ctx.save_for_backward(pixels, keep_idx, mean, rstd)
    ctx.weight_meta = (tuple(weight.shape), weight.dtype)
    ctx.bias_dtype = None if bias is None else bias.dtype
    ctx.pos_meta = (tuple(pos_embed.shape), pos_embed.dtype)
    ctx.channel_agnostic = channel_agnostic
    ctx.backend = backend


def _tokenize_backward(ctx, grad_tokens, grad_mean, grad_rstd):
    pixels, keep_idx, mean, rstd = ctx.saved_tensors
    weight_shape, weight_dtype = ctx.weight_meta
    grad_weight = grad_bias = grad_pos = None
    if ctx.needs_input_grad[2] or ctx.needs_input_grad[3]:
        grad_weight, grad_bias = _tokenize_backward_op(grad_tokens, pixels, keep_idx, mean, rstd, weight_shape[0],
                                                       weight_shape[-1], ctx.channel_agnostic, ctx.backend)
        grad_weight = grad_weight.view(weight_shape).to(weight_dtype)
        grad_bias = grad_bias.to(ctx.bias_dtype) if ctx.bias_dtype is not None else None
    if ctx.needs_input_grad[4]:  # positions are fixed in the models; this is for completeness
        pos_shape, pos_dtype = ctx.pos_meta
        grad_pos = grad_tokens.new_zeros(pos_shape, dtype=torch.float32).index_add_(
            0, keep_idx.reshape(-1), grad_tokens.reshape(-1, pos_shape[1]).float()).to(pos_dtype)
    return None, None, grad_weight, grad_bias, grad_pos, None, None, None


_tokenize_op.register_autograd(_tokenize_backward, setup_context=_tokenize_setup_context)


@torch.library.custom_op("maefast::masked_targets", mutates_args=())
def _masked_targets_op(pixels: torch.Tensor, masked_idx: torch.Tensor, patch_size: int, channel_agnostic: bool,
                       backend: str) -> torch.Tensor:
    pixels = _kernel_pixels(pixels)
    masked_idx = masked_idx.contiguous()
    mean, rstd = _stats(pixels, backend)
    if backend == "triton":
        from maefast.kernels import tokenize as kernels
        return kernels.gather_patches(pixels, masked_idx, mean, rstd, patch=patch_size,
                                      channel_agnostic=channel_agnostic, channels_last=True, dtype=torch.float32)
    return _cpp_standardized_patches(pixels, masked_idx, mean, rstd, patch_size, channel_agnostic)


def _triton_tokens(pixels, keep_idx, weight, bias, pos, mean, rstd, channel_agnostic: bool,
                   out_dtype: torch.dtype) -> torch.Tensor:
    """The GPU forward: the Triton kernel gathers the standardized visible patches in the projection's layout
    and dtype, and one GEMM projects them with the gathered positions (plus the bias) as its C input."""
    from maefast.kernels import tokenize as kernels
    b, k = keep_idx.shape
    d, patch = weight.shape[0], weight.shape[-1]
    patches = kernels.gather_patches(pixels, keep_idx, mean, rstd, patch=patch, channel_agnostic=channel_agnostic,
                                     channels_last=False, dtype=out_dtype).view(b * k, -1)
    table = pos.float() if bias is None else pos.float() + bias.detach().float()
    base = table.index_select(0, keep_idx.reshape(-1)).to(out_dtype)
    tokens = torch.addmm(base, patches, weight.detach().reshape(d, -1).to(out_dtype).t())
    return tokens.view(b, k, d)


def _triton_weight_grads(grad, pixels, keep_idx, mean, rstd, embed_dim: int, patch: int,
                         channel_agnostic: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The GPU backward: the visible patches gathered again, in the gradient's dtype (the 16-bit operands
    of autocast's convolution backward), and one GEMM, grad^T @ patches, accumulated and returned in fp32;
    the bias gradient is the gradient's column sum in fp32."""
    from maefast.kernels import tokenize as kernels
    flat_grad = grad.reshape(-1, embed_dim)
    patches = kernels.gather_patches(pixels, keep_idx, mean, rstd, patch=patch, channel_agnostic=channel_agnostic,
                                     channels_last=False, dtype=grad.dtype)
    return _mm_float32(flat_grad.t(), patches.reshape(flat_grad.shape[0], -1)), flat_grad.float().sum(0)


def _mm_float32(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a @ b with fp32 accumulation and an fp32 result, whatever the operands' dtype (cuBLAS with an fp32
    output on a GPU; the same arithmetic on CPU tensors, where that GEMM variant does not exist)."""
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=torch.float32)
    return a.float() @ b.float()


def _cpp_standardized_patches(pixels, index, mean, rstd, patch: int, channel_agnostic: bool) -> torch.Tensor:
    """(B, N, P) float32: the standardized patches at `index`, in the decoder layout (C++ gather)."""
    b, c, h, w = pixels.shape
    size = patch * patch * (1 if channel_agnostic else c)
    out = torch.empty(b, index.shape[1], size, dtype=torch.float32)
    cpp_extension().masked_targets(_cpp.buffer(pixels), _cpp.kind(pixels.dtype), b, c, h, w, patch,
                                   channel_agnostic, _cpp.buffer(index), index.shape[1], _cpp.buffer(mean),
                                   _cpp.buffer(rstd), _cpp.buffer(out))
    return out


@_masked_targets_op.register_fake
def _(pixels, masked_idx, patch_size, channel_agnostic, backend):
    size = patch_size * patch_size * (1 if channel_agnostic else pixels.shape[1])
    return pixels.new_empty((pixels.shape[0], masked_idx.shape[1], size), dtype=torch.float32)


# ------------------------------------------------------------------------------------------------ public

def tokenize(pixels, keep_idx, weight, bias, pos_embed, *, channel_agnostic: bool,
             out_dtype: torch.dtype | None = None, backend: str | None = None) -> torch.Tensor:
    """Visible tokens (B, K, D); see the module docstring. `backend` overrides the automatic choice."""
    out_dtype = out_dtype or default_out_dtype(weight)
    backend = backend or select_backend("tokenize", pixels.device, IMPLEMENTED)
    if backend == "reference":
        with torch.autocast(pixels.device.type, enabled=False):
            return tokenize_reference(pixels, keep_idx, weight, bias, pos_embed,
                                      channel_agnostic=channel_agnostic, out_dtype=out_dtype)
    tokens, _, _ = _tokenize_op(pixels, keep_idx, weight, bias, pos_embed, channel_agnostic, out_dtype, backend)
    return tokens


def masked_targets(pixels, masked_idx, patch_size: int, *, channel_agnostic: bool,
                   backend: str | None = None) -> torch.Tensor:
    backend = backend or select_backend("tokenize", pixels.device, IMPLEMENTED)
    if backend == "reference":
        return masked_targets_reference(pixels, masked_idx, patch_size, channel_agnostic=channel_agnostic)
    return _masked_targets_op(pixels, masked_idx, patch_size, channel_agnostic, backend)
