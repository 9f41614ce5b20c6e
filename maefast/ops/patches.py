"""Pixel-level helpers shared by the ops: pixel scales, random pixels, self-standardization, patchify and
unpatchify.

Token order. ViT: one token per grid cell, row-major over the (H/p, W/p) grid. CA-MAE: one token per
(channel, grid cell), channel-major, so token t = c * G + g with G = (H/p) * (W/p).

Patch vector layout (what the decoder predicts and the loss compares). ViT: (p, q, c) with the channel
fastest, as in the public reference MAE; CA-MAE: (p, q). The patch-embedding weight keeps the
convolution layout (D, C, p, q).
"""
from __future__ import annotations

import torch

STANDARDIZE_EPS = 1e-5


def pixel_scale(dtype: torch.dtype) -> float:
    """The value that maps integer pixels to [0, 1]; floating input is taken as already scaled."""
    if dtype == torch.uint8:
        return 255.0
    if dtype == torch.uint16:
        return 65535.0
    if dtype.is_floating_point:
        return 1.0
    raise TypeError(f"pixels must be uint8, uint16 or floating point, got {dtype}")


def random_pixels(batch: int, channels: int, size: int, dtype: torch.dtype = torch.uint8, device="cpu",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """Fresh random (batch, channels, size, size) pixels on `device`: integers over the dtype's whole range
    (uint8, uint16), floats uniform in [0, 1). The inputs jobs are timed on while they are set up, and the
    tests' inputs (never all zeros). `generator` must live on `device`."""
    shape = (batch, channels, size, size)
    if dtype.is_floating_point:
        return torch.rand(shape, generator=generator, device=device, dtype=dtype)
    high = int(pixel_scale(dtype)) + 1
    return torch.randint(0, high, shape, generator=generator, device=device, dtype=torch.int32).to(dtype)


def self_standardize(pixels: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) pixels -> float32, each (image, channel) to zero mean and unit variance.

    Pixels are first scaled to [0, 1] by their dtype's maximum, then standardized with the biased
    variance and eps = 1e-5 (instance normalization without affine parameters, as in the papers).
    """
    x = pixels.to(torch.float32) / pixel_scale(pixels.dtype)
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = x.var(dim=(2, 3), unbiased=False, keepdim=True)
    return (x - mean) * torch.rsqrt(var + STANDARDIZE_EPS)


def grid_shape(height: int, width: int, patch_size: int) -> tuple[int, int]:
    return height // patch_size, width // patch_size


def patchify(images: torch.Tensor, patch_size: int, channel_agnostic: bool) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, P): ViT L = G, P = p*p*C in (p, q, c) order; CA L = C*G, P = p*p."""
    b, c, h, w = images.shape
    gh, gw = grid_shape(h, w, patch_size)
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    if channel_agnostic:
        return x.permute(0, 1, 2, 4, 3, 5).reshape(b, c * gh * gw, patch_size * patch_size)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, patch_size * patch_size * c)


def unpatchify(patches: torch.Tensor, patch_size: int, channels: int, grid: tuple[int, int],
               channel_agnostic: bool) -> torch.Tensor:
    """Inverse of `patchify`: (B, L, P) -> (B, C, H, W)."""
    b = patches.shape[0]
    gh, gw = grid
    if channel_agnostic:
        x = patches.reshape(b, channels, gh, gw, patch_size, patch_size).permute(0, 1, 2, 4, 3, 5)
    else:
        x = patches.reshape(b, gh, gw, patch_size, patch_size, channels).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, channels, gh * patch_size, gw * patch_size)


def embedding_patches(images: torch.Tensor, patch_size: int, channel_agnostic: bool) -> torch.Tensor:
    """(B, C, H, W) -> (B, L, K) in the layout the conv weight (D, C, p, q) flattens to.

    ViT K = C*p*p in (c, p, q) order; CA K = p*p (same as `patchify`).
    """
    if channel_agnostic:
        return patchify(images, patch_size, True)
    b, c, h, w = images.shape
    gh, gw = grid_shape(h, w, patch_size)
    x = images.reshape(b, c, gh, patch_size, gw, patch_size)
    return x.permute(0, 2, 4, 1, 3, 5).reshape(b, gh * gw, c * patch_size * patch_size)


def gather_tokens(tokens: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """tokens (B, L, D), index (B, K) -> (B, K, D)."""
    return torch.gather(tokens, 1, index.unsqueeze(-1).expand(-1, -1, tokens.shape[-1]))
