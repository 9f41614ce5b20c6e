"""attention: every backend side by side (Triton flash attention, flash_attn / FA3 when installed, SDPA and its
pinned kernels, and the timed dispatcher `auto`), forward, backward and both, bf16, head dim 64.

Full mode (GPU): ViT-L sequence lengths 257, 1025, 1537 and 6145 (16 heads, batch chosen so that each case
does similar work), TFLOP/s against the matmul rate measured in the same run, and a correctness check of the
Triton kernel against an fp32 reference (error at most twice SDPA's bf16 error). The summary compares the
dispatcher's choice with the best SDPA backend, forward + backward, over all lengths (geometric mean).
--quick on a CPU: SDPA (the CPU path) against the explicit-softmax reference at length 257.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import common  # noqa: E402
from maefast.ops import attention as attention_fn  # noqa: E402
from maefast.ops.attention import attention_reference, available_backends  # noqa: E402

GPU_CASES = [(64, 257), (16, 1025), (8, 1537), (2, 6145)]  # (batch, sequence length)
HEADS, HEAD_DIM = 16, 64


def qkv(batch, length, dtype, device):
    """q, k, v as the models make them: strided views of one (B, N, 3 * H * d) projection."""
    x = torch.randn(batch, length, 3, HEADS, HEAD_DIM, device=device, dtype=dtype)
    return [x[:, :, i].transpose(1, 2).requires_grad_() for i in range(3)]


def run(fn, q, k, v):
    return fn(q, k, v)


def gpu_case(rec, device, batch, length, reps, peak):
    q, k, v = qkv(batch, length, torch.bfloat16, device)
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    grad = torch.randn_like(q)
    fwd_flops = 4 * batch * HEADS * length * length * HEAD_DIM
    names = available_backends(q) + ["auto"]
    exact = attention_reference(*(t.detach().float() for t in (q, k, v)))
    sdpa_error = (F.scaled_dot_product_attention(q, k, v).float() - exact).abs().max().item()
    results = {}
    for name in names:
        fn = (lambda a, b, c: attention_fn(a, b, c)) if name == "auto" else (
            lambda a, b, c, name=name: attention_fn(a, b, c, backend=name))
        try:
            out = fn(*leaves)
        except (RuntimeError, ValueError, NotImplementedError) as error:
            rec.emit(case=f"N{length}", backend=name, skipped=str(error).splitlines()[0][:120])
            continue
        correct = None
        if name == "triton":
            correct = (out.float() - exact).abs().max().item() <= 2 * sdpa_error + 1e-3

        def forward(fn=fn):
            with torch.no_grad():
                fn(*leaves)

        def backward(out=out):
            torch.autograd.grad(out, leaves, grad, retain_graph=True)

        def both(fn=fn):
            torch.autograd.grad(fn(*leaves), leaves, grad)

        for label, step, flops in (("fwd", forward, fwd_flops), ("bwd", backward, 2.5 * fwd_flops),
                                   ("fwd+bwd", both, 3.5 * fwd_flops)):
            ms = common.time_ms(step, device, reps=reps)
            results[(name, label)] = ms
            rec.emit(case=f"N{length}", backend=name, **{"pass": label}, correct=correct,
                     **common.rates(ms, None, flops, None, peak))
    sdpa = [n for n in names if n.startswith("sdpa")]
    summary = {}
    for label in ("fwd", "bwd", "fwd+bwd"):
        best = min(results[(n, label)] for n in sdpa if (n, label) in results)
        for name in ("triton", "auto"):
            if (name, label) in results:
                summary[(name, label)] = best / results[(name, label)]
                rec.emit(case=f"N{length}", backend=name, **{"pass": label}, ratio=round(best / results[(name, label)], 3),
                         vs="best sdpa")
    return results, summary


def qk_norm_case(rec, device, batch, length, reps, peak):
    """The encoder's qk-norm attention: LayerNorm(q), LayerNorm(k) fused into the Triton kernel, against
    LayerNorm then the best SDPA backend (what the model does without the fused entry point)."""
    q, k, v = [t.detach().requires_grad_() for t in qkv(batch, length, torch.bfloat16, device)]
    norms = [torch.nn.LayerNorm(HEAD_DIM, eps=1e-6).to(device) for _ in range(2)]
    grad = torch.randn_like(q)
    fwd_flops = 4 * batch * HEADS * length * length * HEAD_DIM
    times = {}
    for name in ["triton"] + [n for n in available_backends(q) if n.startswith("sdpa")]:
        def both(name=name):
            out = attention_fn(q, k, v, backend=name, q_norm=norms[0], k_norm=norms[1])
            torch.autograd.grad(out, (q, k, v), grad)
        try:
            times[name] = common.time_ms(both, device, reps=reps)
        except (RuntimeError, ValueError, NotImplementedError) as error:
            rec.emit(case=f"N{length}_qknorm", backend=name, skipped=str(error).splitlines()[0][:120])
            continue
        rec.emit(case=f"N{length}_qknorm", backend=name, **{"pass": "fwd+bwd"},
                 **common.rates(times[name], None, 3.5 * fwd_flops, None, peak))
    best = min(t for n, t in times.items() if n != "triton")
    if "triton" in times:
        rec.emit(case=f"N{length}_qknorm", backend="triton", **{"pass": "fwd+bwd"}, ratio=round(best / times["triton"], 3),
                 vs="LayerNorm + best sdpa")


def main():
    args = common.parser(__doc__.splitlines()[0]).parse_args()
    device = common.pick_device(args.device)
    rec = common.Recorder("attention", device, args.json_out)
    torch.manual_seed(0)
    if device.type != "cuda":
        reps = args.reps or 5
        q, k, v = qkv(2, 257, torch.float32, device)
        grad = torch.randn_like(q)
        steps = {name: (lambda fn=fn: torch.autograd.grad(fn(q, k, v), (q, k, v), grad))
                 for name, fn in (("reference", attention_reference), ("sdpa", lambda *a: attention_fn(*a)))}
        times = common.time_interleaved(steps, device, reps=reps)
        for name, ms in times.items():
            rec.emit(case="N257", backend=name, **{"pass": "fwd+bwd"}, ms=round(ms, 4))
        rec.finish(times["sdpa"], times["reference"], backend="sdpa", case="N257", **{"pass": "fwd+bwd"},
                   note="CPU path is SDPA; the Triton kernel needs a GPU")
        return
    peak = common.matmul_tflops(device)
    rec.emit(kind="device_rates", matmul_TFLOPs=round(peak, 1))
    reps = args.reps or 10
    cases = GPU_CASES[:2] if args.quick else GPU_CASES
    ratios = {}
    for batch, length in cases:
        _, summary = gpu_case(rec, device, batch, length, reps, peak)
        for key, ratio in summary.items():
            ratios.setdefault(key, []).append(ratio)
    qk_norm_case(rec, device, *cases[0], reps, peak)
    geo = {key: math.exp(sum(map(math.log, values)) / len(values)) for key, values in ratios.items()}
    # value / baseline in ms of the longest case, ratio = geometric mean over the lengths
    rec.emit(kind="summary", value=round(geo.get(("auto", "fwd+bwd"), 0.0), 3), baseline=1.0,
             ratio=round(geo.get(("auto", "fwd+bwd"), 0.0), 3), unit="speedup vs best SDPA (geomean)",
             triton_fwd=round(geo.get(("triton", "fwd"), 0.0), 3), triton_bwd=round(geo.get(("triton", "bwd"), 0.0), 3),
             triton_fwd_bwd=round(geo.get(("triton", "fwd+bwd"), 0.0), 3),
             triton_min_fwd_bwd=round(min(ratios.get(("triton", "fwd+bwd"), [0.0])), 3))


if __name__ == "__main__":
    main()
