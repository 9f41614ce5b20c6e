"""mae_loss: the fused Triton loss (normalization, MSE, per-patch DFT GEMMs) against the reference.

    python -m benchmarks.bench_mae_loss            # GPU: batch 256
    python -m benchmarks.bench_mae_loss --quick    # CPU smoke run

Full mode (GPU): ViT-L/8 MAE, batch 256, 768 masked patches of 8 x 8 x 6, bf16 predictions, with and without
norm_pix_loss; forward and forward + backward, GB/s of the bytes read and written against the copy bandwidth
measured in the same run. On a CPU maefast's path is the reference itself (the kernel needs a GPU), so the
summary's ratio is 1 by construction there.
"""
from __future__ import annotations

import functools
import sys

import torch

from benchmarks import opcases
from maefast.ops.mae_loss import mae_loss, mae_loss_reference

MASKED, SIDE, CHANNELS = 768, 8, 6
PASSES = ("fwd", "fwd+bwd")


def backend_fns(device: torch.device) -> dict:
    fused = opcases.fused_backend("mae_loss", device)
    return {"reference": mae_loss_reference, fused: functools.partial(mae_loss, backend=fused)}


def build(device: torch.device, batch: int, norm: bool) -> opcases.OpCase:
    size = SIDE * SIDE * CHANNELS
    pred = torch.randn(batch, MASKED, size, device=device, dtype=torch.bfloat16, requires_grad=True)
    target = torch.randn(batch, MASKED, size, device=device)
    read = pred.numel() * (pred.element_size() + target.element_size())
    case = opcases.OpCase(nbytes={"fwd": read, "fwd+bwd": 2 * read + pred.numel() * pred.element_size()})
    exact = mae_loss_reference(pred.detach().float(), target, channels=CHANNELS, norm_pix_loss=norm).loss.item()
    for backend, fn in backend_fns(device).items():
        def forward(fn=fn):
            with torch.no_grad():
                return fn(pred, target, channels=CHANNELS, norm_pix_loss=norm)

        def both(fn=fn):
            torch.autograd.grad(fn(pred, target, channels=CHANNELS, norm_pix_loss=norm).loss, pred)

        case.add(backend, forward, lambda _: {"fwd": forward, "fwd+bwd": both},
                 lambda out: abs(out.loss.item() - exact) <= 1e-4 * abs(exact) + 1e-6)
    return case


def plan(device: torch.device, quick: bool) -> list[opcases.CaseSpec]:
    batch = (32 if quick else 256) if device.type == "cuda" else 8
    backends = tuple(backend_fns(device))
    return [opcases.CaseSpec("mae_loss", f"b{batch}_norm{int(norm)}", backends, PASSES,
                             functools.partial(build, device, batch, norm)) for norm in (False, True)]


def summarize(rec, results: dict, device: torch.device) -> None:
    fused = opcases.fused_backend("mae_loss", device)
    plain = next((m for name, m in results.items() if name.endswith("norm0")), {})
    normed = next((m for name, m in results.items() if name.endswith("norm1")), {})
    both = "fwd+bwd"
    opcases.finish(rec, plain, (fused, both), ("reference", both), backend=fused, **{"pass": both},
                   norm_ratio=opcases.ratio(normed, ("reference", both), (fused, both)))


def main(argv=None) -> int:
    return opcases.run_script("mae_loss", __doc__, plan, summarize, argv)


if __name__ == "__main__":
    sys.exit(main())
