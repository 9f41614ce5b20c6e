"""tokenize: fused backends against the reference and the public reference's conv-then-gather path.

    python -m benchmarks.bench_tokenize            # GPU: ViT-L/8 geometry, batch 256
    python -m benchmarks.bench_tokenize --quick    # CPU smoke run

Cases: ViT (C-channel projection) and CA-MAE (shared 1-channel projection). Passes: forward, and forward +
backward (weight and bias gradients). Baselines, measured in the same run:
  reference    maefast's tokenize_reference (standardize all, gather visible patches, GEMM)
  conv_gather  the public reference's path: standardize, embed every patch with a convolution (for CA-MAE
               one convolution per channel in a Python loop), add positions, gather the visible tokens
Full mode (GPU): ViT-L/8, 6 x 256 x 256 uint8, batch 256, mask 0.75, bf16 tokens, with GB/s against the copy
bandwidth measured in the same run. --quick: the same geometry at batch 8 (CA: 2) on a CPU (32 / 8 on a GPU).
The summary is the fused backend (Triton on a GPU, C++ on a CPU) against the reference, forward + backward, ViT.
Precision: the reference computes in fp32 and rounds once; the C++ forward does the same, while its weight
gradient of the bf16 gradient multiplies bf16 operands with fp32 accumulation (as autocast runs that product).
"""
from __future__ import annotations

import functools
import sys

import torch
import torch.nn.functional as F

from benchmarks import opcases
from maefast.ops.masking import random_masking
from maefast.ops.patches import gather_tokens, random_pixels, self_standardize
from maefast.ops.tokenize import tokenize, tokenize_reference

GEOMETRY = dict(channels=6, size=256, patch=8, dim=1024, ratio=0.75)
PASSES = ("fwd", "fwd+bwd")
OUT_DTYPE = torch.bfloat16


def conv_gather(pixels, keep_idx, weight, bias, pos_embed, *, channel_agnostic, out_dtype):
    """The public reference's tokenization: every patch embedded, then the visible ones gathered."""
    images = self_standardize(pixels)
    with torch.autocast(pixels.device.type, dtype=out_dtype, enabled=out_dtype != torch.float32):
        if channel_agnostic:
            per_channel = [F.conv2d(images[:, c:c + 1], weight, bias, stride=weight.shape[-1]).flatten(2)
                           for c in range(images.shape[1])]
            tokens = torch.cat(per_channel, dim=2).transpose(1, 2)
        else:
            tokens = F.conv2d(images, weight, bias, stride=weight.shape[-1]).flatten(2).transpose(1, 2)
        tokens = tokens + pos_embed.to(tokens.dtype)
    return gather_tokens(tokens, keep_idx).to(out_dtype)


def backend_fns(device: torch.device) -> dict:
    fused = opcases.fused_backend("tokenize", device)
    fns = {"reference": functools.partial(tokenize, backend="reference")}
    fns[fused] = functools.partial(tokenize, backend=fused)
    fns["conv_gather"] = conv_gather
    return fns


def build(device, batch, channel_agnostic, channels, size, patch, dim, ratio) -> opcases.OpCase:
    pixels = random_pixels(batch, channels, size, torch.uint8, device)
    tokens = (size // patch) ** 2 * (channels if channel_agnostic else 1)
    keep = random_masking(batch, tokens, ratio, device=device).keep_idx
    weight = (torch.randn(dim, 1 if channel_agnostic else channels, patch, patch, device=device) * 0.02)
    weight.requires_grad_()
    bias = (torch.randn(dim, device=device) * 0.02).requires_grad_()
    pos = torch.randn(tokens, dim, device=device)
    inputs = (pixels, keep, weight, bias, pos)
    options = dict(channel_agnostic=channel_agnostic)
    kept = keep.shape[1]
    pixel_bytes = pixels.numel() * pixels.element_size()
    visible_bytes = pixel_bytes * kept / tokens
    token_bytes = batch * kept * dim * OUT_DTYPE.itemsize
    flops = 2 * batch * kept * weight[0].numel() * dim
    case = opcases.OpCase(nbytes={"fwd": pixel_bytes + visible_bytes + token_bytes,
                                  "fwd+bwd": pixel_bytes + 2 * visible_bytes + 2 * token_bytes},
                          flops={"fwd": flops, "fwd+bwd": 2 * flops})
    exact = tokenize_reference(*inputs, **options, out_dtype=torch.float32).detach()
    rounded_error = (tokenize_reference(*inputs, **options, out_dtype=OUT_DTYPE).float() - exact).abs().max().item()
    grad = torch.randn(batch, kept, dim, device=device, dtype=OUT_DTYPE)
    for backend, fn in backend_fns(device).items():
        def forward(fn=fn):
            with torch.no_grad():
                return fn(*inputs, **options, out_dtype=OUT_DTYPE)

        def both(fn=fn):
            torch.autograd.grad(fn(*inputs, **options, out_dtype=OUT_DTYPE), (weight, bias), grad)

        # conv_gather's GEMM takes bf16 operands (autocast), so it may also err by their rounding: twice the bound;
        # in fp32 it must compute the reference's tokens
        slack = 2 if backend == "conv_gather" else 1

        def check(out, fn=fn, slack=slack) -> bool:
            in_fp32 = (fn(*inputs, **options, out_dtype=torch.float32).detach() - exact).abs().max().item()
            return (in_fp32 <= 1e-5 * exact.abs().max().item() + 1e-6
                    and (out.float() - exact).abs().max().item() <= slack * (2 * rounded_error + 1e-3))
        case.add(backend, forward, lambda _: {"fwd": forward, "fwd+bwd": both}, check)
    return case


def batches(device: torch.device, quick: bool) -> tuple[int, int]:
    """(ViT batch, CA-MAE batch)."""
    if device.type == "cuda":
        return (32, 8) if quick else (256, 256)
    return (8, 2) if quick else (32, 8)


def plan(device: torch.device, quick: bool) -> list[opcases.CaseSpec]:
    vit, ca = batches(device, quick)
    backends = tuple(backend_fns(device))
    return [opcases.CaseSpec("tokenize", f"{kind}_l8_b{batch}", backends, PASSES,
                             functools.partial(build, device, batch, kind == "ca", **GEOMETRY))
            for kind, batch in (("vit", vit), ("ca", ca))]


def summarize(rec, results: dict, device: torch.device) -> None:
    fused = opcases.fused_backend("tokenize", device)
    vit_case = next((name for name in results if name.startswith("vit")), None)
    ca_case = next((name for name in results if name.startswith("ca")), None)
    vit, ca = results.get(vit_case, {}), results.get(ca_case, {})
    both = "fwd+bwd"
    opcases.finish(rec, vit, (fused, both), ("reference", both), backend=fused, case=vit_case, **{"pass": both},
                   conv_gather_ratio=opcases.ratio(vit, ("conv_gather", both), (fused, both)),
                   ca_ratio=opcases.ratio(ca, ("reference", both), (fused, both)),
                   ca_loop_ratio=opcases.ratio(ca, ("conv_gather", both), (fused, both)),
                   fwd_ratio=opcases.ratio(vit, ("reference", "fwd"), (fused, "fwd")))


def main(argv=None) -> int:
    return opcases.run_script("tokenize", __doc__, plan, summarize, argv)


if __name__ == "__main__":
    sys.exit(main())
