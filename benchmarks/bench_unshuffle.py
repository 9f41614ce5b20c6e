"""unshuffle: the fused decoder-input pass against the reference (clone + scatter + add), forward and backward.

Full mode (GPU): the ViT-L/8 MAE decoder input: batch 256, 1024 tokens, dim 512, mask 0.75, bf16, with GB/s
of the bytes it must move against the copy bandwidth measured in the same run. --quick: batch 16 on this
machine; the summary is the fused backend (C++ on a CPU, Triton on a GPU) against the reference, fwd + bwd.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402

import common  # noqa: E402
from maefast.ops.masking import random_masking  # noqa: E402
from maefast.ops.unshuffle import unshuffle, unshuffle_reference  # noqa: E402


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    device = common.pick_device(args.device)
    rec = common.Recorder("unshuffle", device, args.json_out)
    on_gpu = device.type == "cuda"
    batch = (32 if args.quick else 256) if on_gpu else (16 if args.quick else 64)
    tokens, dim, ratio, dtype = 1024, 512, 0.75, torch.bfloat16
    reps = args.reps or (20 if on_gpu else 7)
    copy_gbs = common.copy_bandwidth_gbs(device, 1024 if on_gpu else 256, reps=10 if on_gpu else 3)
    rec.emit(kind="device_rates", copy_GBps=round(copy_gbs, 1))
    torch.manual_seed(0)
    mask = random_masking(batch, tokens, ratio, device=device)
    kept = mask.keep_idx.shape[1]
    visible = torch.randn(batch, kept, dim, device=device, dtype=dtype, requires_grad=True)
    mask_token = torch.randn(dim, device=device, requires_grad=True)
    pos = torch.randn(tokens, dim, device=device)
    grad = torch.randn(batch, tokens, dim, device=device, dtype=dtype)
    item = visible.element_size()
    fwd_bytes = (batch * kept * dim + batch * tokens * dim) * item
    bwd_bytes = (batch * tokens * dim + batch * kept * dim) * item
    fused_name = "triton" if on_gpu else "cpp"
    fns = {"reference": unshuffle_reference, fused_name: lambda *a: unshuffle(*a, backend=fused_name)}
    exact = unshuffle_reference(visible.float(), mask.keep_idx, mask_token, pos)
    reference_error = (unshuffle_reference(visible, mask.keep_idx, mask_token, pos).float() - exact).abs().max().item()
    steps, correct = {}, {}
    for name, fn in fns.items():
        def forward(fn=fn):
            with torch.no_grad():
                return fn(visible, mask.keep_idx, mask_token, pos)

        def both(fn=fn):
            out = fn(visible, mask.keep_idx, mask_token, pos)
            torch.autograd.grad(out, (visible, mask_token), grad)

        correct[name] = (forward().float() - exact).abs().max().item() <= 2 * reference_error + 1e-6
        steps[name] = {"fwd": forward, "fwd+bwd": both}
    results = {}
    for label, nbytes in (("fwd", fwd_bytes), ("fwd+bwd", fwd_bytes + bwd_bytes)):
        times = common.time_interleaved({n: steps[n][label] for n in steps}, device, reps=reps)
        for name, ms in times.items():
            results[(name, label)] = ms
            rec.emit(case=f"b{batch}_L{tokens}_D{dim}", backend=name, **{"pass": label}, correct=correct[name],
                     **common.rates(ms, nbytes, None, copy_gbs))
    both = "fwd+bwd"
    rec.finish(results[(fused_name, both)], results[("reference", both)], backend=fused_name, **{"pass": both},
               fwd_ratio=round(results[("reference", "fwd")] / results[(fused_name, "fwd")], 3),
               of_copy_bw=round((fwd_bytes + bwd_bytes) / (results[(fused_name, both)] * 1e-3) / 1e9 / copy_gbs, 3))


if __name__ == "__main__":
    main()
