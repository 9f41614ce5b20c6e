"""mae_loss: the fused Triton loss (normalization, MSE, per-patch DFT GEMMs) against the reference.

Full mode (GPU): ViT-L/8 MAE, batch 256, 768 masked patches of 8 x 8 x 6, bf16 predictions, with and without
norm_pix_loss; forward and forward + backward, GB/s of the bytes read and written against the copy bandwidth
measured in the same run. --quick on a CPU: the reference only (the CPU path; the kernel needs a GPU), so the
summary's ratio is 1 by construction.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402

import common  # noqa: E402
from maefast.ops.mae_loss import mae_loss, mae_loss_reference  # noqa: E402


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    device = common.pick_device(args.device)
    rec = common.Recorder("mae_loss", device, args.json_out)
    on_gpu = device.type == "cuda"
    batch = (32 if args.quick else 256) if on_gpu else 8
    masked, side, channels = 768, 8, 6
    reps = args.reps or (20 if on_gpu else 5)
    copy_gbs = common.copy_bandwidth_gbs(device, 1024 if on_gpu else 256, reps=10 if on_gpu else 3)
    rec.emit(kind="device_rates", copy_GBps=round(copy_gbs, 1))
    torch.manual_seed(0)
    size = side * side * channels
    pred = torch.randn(batch, masked, size, device=device, dtype=torch.bfloat16, requires_grad=True)
    target = torch.randn(batch, masked, size, device=device)
    backends = {"reference": mae_loss_reference}
    if on_gpu:
        backends["triton"] = lambda *a, **kw: mae_loss(*a, **kw, backend="triton")
    fwd_bytes = pred.numel() * (pred.element_size() + 4)
    results = {}
    for norm in (False, True):
        exact = mae_loss_reference(pred.detach().float(), target, channels=channels, norm_pix_loss=norm)
        steps, correct = {}, {}
        for name, fn in backends.items():
            def forward(fn=fn):
                with torch.no_grad():
                    return fn(pred, target, channels=channels, norm_pix_loss=norm)

            def both(fn=fn):
                torch.autograd.grad(fn(pred, target, channels=channels, norm_pix_loss=norm).loss, pred)

            got = forward()
            correct[name] = bool(abs(got.loss.item() - exact.loss.item()) <= 1e-4 * abs(exact.loss.item()) + 1e-6)
            steps[name] = {"fwd": forward, "fwd+bwd": both}
        for label, nbytes in (("fwd", fwd_bytes), ("fwd+bwd", 2 * fwd_bytes + pred.numel() * pred.element_size())):
            times = common.time_interleaved({n: steps[n][label] for n in steps}, device, reps=reps)
            for name, ms in times.items():
                results[(name, norm, label)] = ms
                rec.emit(case=f"b{batch}_norm{int(norm)}", backend=name, **{"pass": label}, correct=correct[name],
                         **common.rates(ms, nbytes, None, copy_gbs))
    fused = "triton" if on_gpu else "reference"
    rec.finish(results[(fused, False, "fwd+bwd")], results[("reference", False, "fwd+bwd")], backend=fused,
               **{"pass": "fwd+bwd"}, norm_ratio=round(results[("reference", True, "fwd+bwd")] /
                                                       results[(fused, True, "fwd+bwd")], 3))


if __name__ == "__main__":
    main()
