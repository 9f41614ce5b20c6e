"""tokenize: fused backends against the reference and the public reference's conv-then-gather path.

Cases: ViT (C-channel projection) and CA-MAE (shared 1-channel projection). Passes: forward, and forward +
backward (weight and bias gradients). Baselines, measured in the same run:
  reference    maefast's tokenize_reference (standardize all, gather visible patches, GEMM)
  conv_gather  the public reference's path: standardize, embed every patch with a convolution (for CA-MAE
               one convolution per channel in a Python loop), add positions, gather the visible tokens
Full mode (GPU): ViT-L/8, 6 x 256 x 256 uint8, batch 256, mask 0.75, bf16 autocast, with GB/s against the
copy bandwidth measured in the same run. --quick: the same geometry at batch 8 (CA: 2) on this machine;
the summary line is the fused CPU backend (C++) against the reference, forward + backward, ViT.
Precision: tokens are bf16. The reference computes in fp32 and rounds once; the C++ forward does the same,
while its weight gradient of the bf16 gradient multiplies bf16 operands with fp32 accumulation (as autocast
runs that product; on CPUs with AMX / AVX512-BF16 this GEMM is ~3.5x faster than fp32).
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402
from maefast.ops.masking import random_masking  # noqa: E402
from maefast.ops.patches import gather_tokens, self_standardize  # noqa: E402
from maefast.ops.tokenize import tokenize, tokenize_reference  # noqa: E402


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


def fused(backend):
    return lambda *args, **kwargs: tokenize(*args, **kwargs, backend=backend)


def make_case(device, batch, channels, size, patch, dim, ratio, channel_agnostic):
    pixels = torch.randint(0, 256, (batch, channels, size, size), dtype=torch.int32, device=device).to(torch.uint8)
    tokens = (size // patch) ** 2 * (channels if channel_agnostic else 1)
    mask = random_masking(batch, tokens, ratio, device=device)
    weight = (torch.randn(dim, 1 if channel_agnostic else channels, patch, patch, device=device) * 0.02)
    bias = torch.randn(dim, device=device) * 0.02
    pos = torch.randn(tokens, dim, device=device)
    return pixels, mask.keep_idx, weight.requires_grad_(), bias.requires_grad_(), pos


def run_case(rec, device, name, case, backends, reps, copy_gbs, peak, out_dtype, channel_agnostic):
    pixels, keep, weight, bias, pos = case
    b, k = keep.shape
    d, kd = weight.shape[0], weight[0].numel()
    pixel_bytes = pixels.numel() * pixels.element_size()
    visible_bytes = pixel_bytes * k / ((pixels.shape[-1] // weight.shape[-1]) ** 2 *
                                       (pixels.shape[1] if channel_agnostic else 1))
    token_bytes = b * k * d * torch.empty((), dtype=out_dtype).element_size()
    fwd_bytes = pixel_bytes + visible_bytes + token_bytes
    both_bytes = fwd_bytes + token_bytes + visible_bytes
    flops = 2 * b * k * kd * d
    exact = tokenize_reference(pixels, keep, weight, bias, pos, channel_agnostic=channel_agnostic,
                               out_dtype=torch.float32).detach()
    low_error = (tokenize_reference(pixels, keep, weight, bias, pos, channel_agnostic=channel_agnostic,
                                    out_dtype=out_dtype).float() - exact).abs().max().item()
    grad = torch.randn(b, k, d, device=device, dtype=out_dtype)
    steps, correct = {}, {}
    for backend, fn in backends.items():
        def forward(fn=fn):
            with torch.no_grad():
                return fn(pixels, keep, weight, bias, pos, channel_agnostic=channel_agnostic, out_dtype=out_dtype)

        def both(fn=fn):
            out = fn(pixels, keep, weight, bias, pos, channel_agnostic=channel_agnostic, out_dtype=out_dtype)
            torch.autograd.grad(out, (weight, bias), grad)

        error = (forward().float() - exact).abs().max().item()
        correct[backend] = error <= 2 * low_error + 1e-3 if backend != "conv_gather" else None
        steps[backend] = {"fwd": forward, "fwd+bwd": both}
    results = {}
    for label, nbytes, nflops in (("fwd", fwd_bytes, flops), ("fwd+bwd", both_bytes, 2 * flops)):
        times = common.time_interleaved({b: steps[b][label] for b in steps}, device, reps=reps)
        for backend, ms in times.items():
            results[(backend, label)] = ms
            rec.emit(case=name, backend=backend, **{"pass": label}, correct=correct[backend],
                     **common.rates(ms, nbytes, nflops, copy_gbs, peak))
    return results


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    device = common.pick_device(args.device)
    rec = common.Recorder("tokenize", device, args.json_out)
    on_gpu = device.type == "cuda"
    reps = args.reps or (20 if on_gpu else 5)
    if on_gpu:
        batch, ca_batch = (32, 8) if args.quick else (256, 256)
        copy_gbs, peak = common.copy_bandwidth_gbs(device), common.matmul_tflops(device)
    else:
        batch, ca_batch = (8, 2) if args.quick else (32, 8)
        copy_gbs, peak = common.copy_bandwidth_gbs(device, 256, reps=3), None
    rec.emit(kind="device_rates", copy_GBps=round(copy_gbs, 1), matmul_TFLOPs=peak and round(peak, 1))
    fused_name = "triton" if on_gpu else "cpp"
    out_dtype = torch.bfloat16
    backends = {"reference": fused("reference"), fused_name: fused(fused_name), "conv_gather": conv_gather}
    geometry = dict(channels=6, size=256, patch=8, dim=1024, ratio=0.75)
    torch.manual_seed(0)
    vit = run_case(rec, device, f"vit_l8_b{batch}", make_case(device, batch, channel_agnostic=False, **geometry),
                   backends, reps, copy_gbs, peak, out_dtype, False)
    ca = run_case(rec, device, f"ca_l8_b{ca_batch}", make_case(device, ca_batch, channel_agnostic=True, **geometry),
                  backends, reps, copy_gbs, peak, out_dtype, True)
    both = "fwd+bwd"
    rec.finish(vit[(fused_name, both)], vit[("reference", both)], backend=fused_name, case=f"vit_l8_b{batch}",
               **{"pass": both},
               conv_gather_ratio=round(vit[("conv_gather", both)] / vit[(fused_name, both)], 3),
               ca_ratio=round(ca[("reference", both)] / ca[(fused_name, both)], 3),
               ca_loop_ratio=round(ca[("conv_gather", both)] / ca[(fused_name, both)], 3),
               fwd_ratio=round(vit[("reference", "fwd")] / vit[(fused_name, "fwd")], 3))


if __name__ == "__main__":
    main()
