"""attention: every backend side by side (maefast's Triton flash attention, SDPA with PyTorch's own choice and
pinned to cudnn / flash / efficient / math, flash_attn and fa3 when installed), forward, backward and both.

    python -m benchmarks.bench_attention            # GPU: bf16, head dim 64, N = 257, 1025, 1537, 6145
    python -m benchmarks.bench_attention --quick    # CPU smoke run (GPU: N = 257 and 1025 only)

Full mode (GPU): ViT-L sequence lengths (16 heads, batch chosen so that each case does similar work), TFLOP/s
against the matmul rate measured in the same run, each backend checked against an fp32 reference (error at
most twice SDPA's bf16 error). Plus the encoder's qk-norm attention at N = 257 (training) and 1025 (embedding):
the Triton kernel with the LayerNorms fused against LayerNorm then each SDPA kernel, all under bf16 autocast as
in the model (the LayerNorm runs in fp32, q and k are cast back to bf16 before SDPA). For each case and pass
the rows `vs best sdpa` give the Triton kernel against the fastest SDPA backend, and `fastest` names the
backend that tune_attention would pick. On a CPU: SDPA against the explicit-softmax reference, fp32 (qk-norm:
bf16 autocast).
"""
from __future__ import annotations

import contextlib
import functools
import math
import sys

import torch
import torch.nn.functional as F

from benchmarks import opcases
from maefast.ops.attention import SDPA_KERNELS, attention, attention_reference, available_backends

GPU_CASES = [(64, 257), (16, 1025), (8, 1537), (2, 6145)]  # (batch, sequence length)
CPU_CASES = [(2, 257)]
HEADS, HEAD_DIM, EPS = 16, 64, 1e-6
PASSES = ("fwd", "bwd", "fwd+bwd")
SDPA_FAMILY = ("sdpa", *SDPA_KERNELS)


def precision(device: torch.device) -> torch.dtype:
    return torch.bfloat16 if device.type == "cuda" else torch.float32


def backend_names(device: torch.device) -> tuple[str, ...]:
    if device.type != "cuda":
        return ("reference", "sdpa")
    return tuple(available_backends(device, precision(device), HEAD_DIM))


def backend_fn(name: str):
    return reference if name == "reference" else functools.partial(attention, backend=name)


def reference(q, k, v, q_norm=None, k_norm=None):
    """The specification: explicit softmax in fp32 (autocast off), after the fp32 qk LayerNorms."""
    with torch.autocast(q.device.type, enabled=False):
        return attention_reference(*normed(q, k, q_norm, k_norm), v)


def normed(q, k, q_norm=None, k_norm=None):
    """LayerNorm(q), LayerNorm(k) in fp32 (the reference's qk-norm), or q and k as they are."""
    if q_norm is None:
        return q, k
    return (F.layer_norm(q.float(), (HEAD_DIM,), q_norm.weight, q_norm.bias, EPS),
            F.layer_norm(k.float(), (HEAD_DIM,), k_norm.weight, k_norm.bias, EPS))


def build(device: torch.device, batch: int, length: int, qk_norm: bool) -> opcases.OpCase:
    dtype = precision(device)
    # q, k, v as the models make them: strided views of one (B, N, 3 * H * d) projection
    x = torch.randn(batch, length, 3, HEADS, HEAD_DIM, device=device, dtype=dtype)
    leaves = [x[:, :, i].transpose(1, 2).detach().requires_grad_() for i in range(3)]
    norms = {}
    if qk_norm:
        norms = {name: torch.nn.LayerNorm(HEAD_DIM, eps=EPS).to(device) for name in ("q_norm", "k_norm")}
        for norm in norms.values():  # not the identity, so that a missing normalization shows
            torch.nn.init.normal_(norm.weight, 1.0, 0.1)
            torch.nn.init.normal_(norm.bias, 0.0, 0.1)
    # the model runs qk-norm attention under autocast: fp32 LayerNorm, then q and k cast back to bf16
    autocast = (functools.partial(torch.autocast, device.type, dtype=torch.bfloat16) if qk_norm
                else contextlib.nullcontext)
    grad = torch.randn_like(leaves[0])
    fwd_flops = 4 * batch * HEADS * length * length * HEAD_DIM
    case = opcases.OpCase(flops={"fwd": fwd_flops, "bwd": 2.5 * fwd_flops, "fwd+bwd": 3.5 * fwd_flops})
    exact = attention_reference(*normed(*(t.detach().float() for t in leaves[:2]), *norms.values()),
                                leaves[2].detach().float())
    with torch.no_grad(), autocast():
        sdpa_error = (attention(*leaves, backend="sdpa", **norms).float() - exact).abs().max().item()

    for name in backend_names(device):
        fn = backend_fn(name)

        def forward(fn=fn):
            with autocast():
                return fn(*leaves, **norms)

        def no_grad_forward(fn=fn):
            with torch.no_grad():
                forward(fn)

        def both(fn=fn):
            torch.autograd.grad(forward(fn), leaves, grad)

        def passes(out, both=both, no_grad_forward=no_grad_forward):
            return {"fwd": no_grad_forward, "fwd+bwd": both,
                    "bwd": lambda: torch.autograd.grad(out, leaves, grad, retain_graph=True)}

        case.add(name, forward, passes, lambda out: (out.float() - exact).abs().max().item() <= 2 * sdpa_error + 1e-3)
    return case


def plan(device: torch.device, quick: bool) -> list[opcases.CaseSpec]:
    cases = CPU_CASES if device.type != "cuda" else (GPU_CASES[:2] if quick else GPU_CASES)
    specs = [opcases.CaseSpec("attention", f"N{length}", backend_names(device), PASSES,
                              functools.partial(build, device, batch, length, False)) for batch, length in cases]
    specs += [opcases.CaseSpec("attention", f"N{length}_qknorm", backend_names(device), ("fwd+bwd",),
                               functools.partial(build, device, batch, length, True)) for batch, length in cases[:2]]
    return specs


def summarize(rec, results: dict, device: torch.device) -> None:
    """Per case and pass: the candidate (Triton on a GPU, SDPA on a CPU) against the fastest baseline (the SDPA
    backends on a GPU, the reference on a CPU), and the fastest backend of all; then the summary line."""
    candidate = "triton" if device.type == "cuda" else "sdpa"
    family = SDPA_FAMILY if candidate == "triton" else ("reference",)
    ratios: dict[str, dict[str, float]] = {}
    for case, measured in results.items():
        for label in PASSES:
            timed = {backend: ms for (backend, p), ms in measured.items() if p == label}
            baselines = {backend: ms for backend, ms in timed.items() if backend in family}
            if not timed:
                continue
            fastest = min(timed, key=timed.get)
            rec.emit(case=case, backend=fastest, **{"pass": label}, ms=round(timed[fastest], 4), vs="fastest")
            if candidate in timed and baselines:
                best = min(baselines, key=baselines.get)
                ratio = round(baselines[best] / timed[candidate], 3)
                ratios.setdefault(label, {})[case] = ratio
                rec.emit(case=case, backend=candidate, **{"pass": label}, ratio=ratio, vs=f"best {family[0]} ({best})")
    plain = {case: r for case, r in ratios.get("fwd+bwd", {}).items() if not case.endswith("qknorm")}
    geomean = math.exp(sum(map(math.log, plain.values())) / len(plain)) if plain else None
    rec.emit(kind="summary", backend=candidate, value=geomean and round(geomean, 3), baseline=1.0,
             ratio=geomean and round(geomean, 3), vs=f"best {family[0]}", **{"pass": "fwd+bwd"},
             unit=f"x best {family[0]} (geomean)",
             by_case={f"{case} {label}": r for label, per_case in ratios.items() for case, r in per_case.items()})


def main(argv=None) -> int:
    return opcases.run_script("attention", __doc__, plan, summarize, argv)


if __name__ == "__main__":
    sys.exit(main())
