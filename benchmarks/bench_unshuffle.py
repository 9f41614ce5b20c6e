"""unshuffle: the fused decoder-input pass against the reference (clone + scatter + add), forward and backward.

    python -m benchmarks.bench_unshuffle            # GPU: batch 256
    python -m benchmarks.bench_unshuffle --quick    # CPU smoke run

Full mode (GPU): the ViT-L/8 MAE decoder input: batch 256, 1024 tokens, dim 512, mask 0.75, bf16, with GB/s
of the bytes it must move against the copy bandwidth measured in the same run. --quick: batch 16 on a CPU (32 on
a GPU). The summary is the fused backend (Triton on a GPU, C++ on a CPU) against the reference, fwd + bwd.
"""
from __future__ import annotations

import functools
import sys

import torch

from benchmarks import opcases
from maefast.ops.masking import random_masking
from maefast.ops.unshuffle import unshuffle, unshuffle_reference

TOKENS, DIM, RATIO, DTYPE = 1024, 512, 0.75, torch.bfloat16
PASSES = ("fwd", "fwd+bwd")


def backend_fns(device: torch.device) -> dict:
    fused = opcases.fused_backend("unshuffle", device)
    return {"reference": unshuffle_reference, fused: functools.partial(unshuffle, backend=fused)}


def build(device: torch.device, batch: int) -> opcases.OpCase:
    keep = random_masking(batch, TOKENS, RATIO, device=device).keep_idx
    kept = keep.shape[1]
    visible = torch.randn(batch, kept, DIM, device=device, dtype=DTYPE, requires_grad=True)
    mask_token = torch.randn(DIM, device=device, requires_grad=True)
    pos = torch.randn(TOKENS, DIM, device=device)
    grad = torch.randn(batch, TOKENS, DIM, device=device, dtype=DTYPE)
    moved = (batch * kept * DIM + batch * TOKENS * DIM) * DTYPE.itemsize  # each direction reads and writes this
    case = opcases.OpCase(nbytes={"fwd": moved, "fwd+bwd": 2 * moved})
    exact = unshuffle_reference(visible.float(), keep, mask_token, pos)
    rounded_error = (unshuffle_reference(visible, keep, mask_token, pos).float() - exact).abs().max().item()
    for backend, fn in backend_fns(device).items():
        def forward(fn=fn):
            with torch.no_grad():
                return fn(visible, keep, mask_token, pos)

        def both(fn=fn):
            torch.autograd.grad(fn(visible, keep, mask_token, pos), (visible, mask_token), grad)

        case.add(backend, forward, lambda _: {"fwd": forward, "fwd+bwd": both},
                 lambda out: (out.float() - exact).abs().max().item() <= 2 * rounded_error + 1e-6)
    return case


def plan(device: torch.device, quick: bool) -> list[opcases.CaseSpec]:
    batch = (32 if quick else 256) if device.type == "cuda" else (16 if quick else 64)
    return [opcases.CaseSpec("unshuffle", f"b{batch}_L{TOKENS}_D{DIM}", tuple(backend_fns(device)), PASSES,
                             functools.partial(build, device, batch))]


def summarize(rec, results: dict, device: torch.device) -> None:
    fused = opcases.fused_backend("unshuffle", device)
    name, measured = next(iter(results.items()), (None, {}))
    opcases.finish(rec, measured, (fused, "fwd+bwd"), ("reference", "fwd+bwd"), backend=fused, case=name,
                   **{"pass": "fwd+bwd"}, fwd_ratio=opcases.ratio(measured, ("reference", "fwd"), (fused, "fwd")))


def main(argv=None) -> int:
    return opcases.run_script("unshuffle", __doc__, plan, summarize, argv)


if __name__ == "__main__":
    sys.exit(main())
