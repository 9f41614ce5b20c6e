"""attention: softmax(q k^T * scale) v for self- and cross-attention.

    q (B, H, Nq, d), k and v (B, H, Nk, d) -> (B, H, Nq, d)

Backends (`ATTENTION_BACKENDS`):
  "triton"          maefast's flash attention (kernels/attention.py), forward and backward, custom op
  "sdpa"            torch.nn.functional.scaled_dot_product_attention, PyTorch's own choice of kernel, and
                    the same function pinned to one kernel: "cudnn", "flash", "efficient", "math"
  "flash_attn"      FlashAttention-2 (`flash_attn`), "fa3": FlashAttention-3 (`flash_attn_interface`), and
                    "fa4": FlashAttention-4 (`flash_attn.cute`, CuTe-DSL kernels for Hopper and Blackwell;
                    the `flash4` extra), when installed

The backend is chosen before the forward, never inside it: `attention(..., backend=name)` runs `name`;
"auto" (the default) is a fixed rule, "sdpa" unless MAEFAST_BACKEND forces the Triton kernel (also on CPU
tensors under TRITON_INTERPRET=1). Choosing the fastest backend for a model's shapes is a setup step
(maefast.models.attention_setup.tune_attention): it times the candidates once, outside any traced region,
and writes the winner into the model, where every rank and a resumed run read the same choice.

qk-norm: `attention(q, k, v, q_norm=ln_q, k_norm=ln_k)` with LayerNorm(head_dim) modules computes
attention(ln_q(q), ln_k(k), v). The Triton kernel normalizes q and k tiles as it loads them (no normalized
copies in memory, LayerNorm backward and its parameter gradients inside the backward kernels); the other
backends apply the LayerNorms first.
"""
from __future__ import annotations

import importlib.util
import math

import torch
import torch.nn.functional as F

from maefast.choices import ATTENTION_BACKENDS, FLASH_ATTENTION_MODULES, SDPA_KERNELS
from maefast.errors import UserInputError, installed
from maefast.ops.backend import forced_backend

MAX_TRITON_HEAD_DIM = 128


def attention_reference(q, k, v, scale: float | None = None) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


# ------------------------------------------------------------------------------------------ triton custom op

@torch.library.custom_op("maefast::flash_attention", mutates_args=())
def _flash_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Nq, d) laid out as (B, Nq, H, d), log-sum-exp (B * H, Nq) float32)."""
    from maefast.kernels import attention as kernels
    return kernels.attention_forward(q, k, v, scale)


@_flash_attention_op.register_fake
def _(q, k, v, scale):
    b, h, nq, d = q.shape
    return q.new_empty((b, nq, h, d)).transpose(1, 2), q.new_empty((b * h, nq), dtype=torch.float32)


@torch.library.custom_op("maefast::flash_attention_backward", mutates_args=())
def _flash_attention_backward_op(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 out: torch.Tensor, lse: torch.Tensor,
                                 scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    from maefast.kernels import attention as kernels
    return kernels.attention_backward(grad, q, k, v, out, lse, scale)


@_flash_attention_backward_op.register_fake
def _(grad, q, k, v, out, lse, scale):
    return torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)


def _setup_context(ctx, inputs, output):
    q, k, v, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse)
    ctx.scale = scale


def _backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = _flash_attention_backward_op(grad_out, q, k, v, out, lse, ctx.scale)
    return dq, dk, dv, None


_flash_attention_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("maefast::flash_attention_qknorm", mutates_args=())
def _flash_attention_qknorm_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, q_weight: torch.Tensor,
                               q_bias: torch.Tensor, k_weight: torch.Tensor, k_bias: torch.Tensor, eps: float,
                               scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """attention(LayerNorm(q), LayerNorm(k), v) with both LayerNorms (over the head dim) inside the kernel."""
    from maefast.kernels import attention as kernels
    return kernels.attention_forward(q, k, v, scale, (q_weight, q_bias, k_weight, k_bias, eps))


@_flash_attention_qknorm_op.register_fake
def _(q, k, v, q_weight, q_bias, k_weight, k_bias, eps, scale):
    b, h, nq, d = q.shape
    return q.new_empty((b, nq, h, d)).transpose(1, 2), q.new_empty((b * h, nq), dtype=torch.float32)


@torch.library.custom_op("maefast::flash_attention_qknorm_backward", mutates_args=())
def _flash_attention_qknorm_backward_op(
        grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
        q_weight: torch.Tensor, q_bias: torch.Tensor, k_weight: torch.Tensor, k_bias: torch.Tensor, eps: float,
        scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor]:
    from maefast.kernels import attention as kernels
    return kernels.attention_backward(grad, q, k, v, out, lse, scale, (q_weight, q_bias, k_weight, k_bias, eps))


@_flash_attention_qknorm_backward_op.register_fake
def _(grad, q, k, v, out, lse, q_weight, q_bias, k_weight, k_bias, eps, scale):
    d = q.shape[-1]
    vector = q.new_empty((d,), dtype=torch.float32)
    return (torch.empty_like(q), torch.empty_like(k), torch.empty_like(v), vector, torch.empty_like(vector),
            torch.empty_like(vector), torch.empty_like(vector))


def _qknorm_setup_context(ctx, inputs, output):
    q, k, v, q_weight, q_bias, k_weight, k_bias, eps, scale = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, q_weight, q_bias, k_weight, k_bias)
    ctx.eps, ctx.scale = eps, scale


def _qknorm_backward(ctx, grad_out, grad_lse):
    q, k, v, out, lse, q_weight, q_bias, k_weight, k_bias = ctx.saved_tensors
    dq, dk, dv, dqw, dqb, dkw, dkb = _flash_attention_qknorm_backward_op(
        grad_out, q, k, v, out, lse, q_weight, q_bias, k_weight, k_bias, ctx.eps, ctx.scale)
    return (dq, dk, dv, dqw.to(q_weight.dtype), dqb.to(q_bias.dtype), dkw.to(k_weight.dtype),
            dkb.to(k_bias.dtype), None, None)


_flash_attention_qknorm_op.register_autograd(_qknorm_backward, setup_context=_qknorm_setup_context)


# ------------------------------------------------------------------------------------------------ backends

def _sdpa(q, k, v, scale):
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


def _sdpa_pinned(kind: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    pinned = {"flash": SDPBackend.FLASH_ATTENTION, "efficient": SDPBackend.EFFICIENT_ATTENTION,
              "cudnn": SDPBackend.CUDNN_ATTENTION, "math": SDPBackend.MATH}[kind]

    def run(q, k, v, scale):
        with sdpa_kernel([pinned]):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return run


def _flash_attn(module_name: str):
    module = importlib.import_module(module_name)

    def run(q, k, v, scale):  # (B, N, H, d) layout with a contiguous last dim
        out = module.flash_attn_func(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale)
        out = out[0] if isinstance(out, tuple) else out
        return out.transpose(1, 2)
    return run


def _triton(q, k, v, scale):
    return _flash_attention_op(q, k, v, scale)[0]


def backend_fn(name: str):
    if name == "triton":
        return _triton
    if name == "sdpa":
        return _sdpa
    if name in SDPA_KERNELS:
        return _sdpa_pinned(name)
    if name in FLASH_ATTENTION_MODULES:
        return _flash_attn(FLASH_ATTENTION_MODULES[name])
    raise UserInputError(f"unknown attention backend {name!r}; expected 'auto' or one of {ATTENTION_BACKENDS}")


def _norm_params(norm, head_dim: int):
    """(weight, bias, eps) of a LayerNorm over the head dim (an nn.LayerNorm with affine parameters)."""
    shape = tuple(getattr(norm, "normalized_shape", ()))
    if shape != (head_dim,) or getattr(norm, "weight", None) is None or getattr(norm, "bias", None) is None:
        raise ValueError(f"q_norm / k_norm must be LayerNorm({head_dim}) with weight and bias, got {norm!r}")
    return norm.weight, norm.bias, float(norm.eps)


def _to_autocast_dtype(q, k, v):
    """Under autocast, q, k and v in the autocast dtype, as SDPA takes them (qk-norm gives fp32 q and k next
    to a 16-bit v)."""
    if torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
        return q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v


def run_backend(name: str, q, k, v, scale: float, q_norm=None, k_norm=None) -> torch.Tensor:
    """Runs one backend; with q_norm / k_norm (LayerNorm over the head dim) the Triton kernel fuses them and
    the other backends apply them first."""
    d = q.shape[-1]
    if name == "triton" and not 1 <= d <= MAX_TRITON_HEAD_DIM:
        raise ValueError(f"the Triton attention kernel takes head dims up to {MAX_TRITON_HEAD_DIM}, got {d}")
    if name == "triton" and q_norm is not None and k_norm is not None:
        (qw, qb, eps_q), (kw, kb, eps_k) = _norm_params(q_norm, d), _norm_params(k_norm, d)
        if eps_q == eps_k:
            q, k, v = _to_autocast_dtype(q, k, v)
            return _flash_attention_qknorm_op(q, k, v, qw, qb, kw, kb, eps_q, scale)[0]
    if q_norm is not None:
        q = F.layer_norm(q, (d,), *_norm_params(q_norm, d))
    if k_norm is not None:
        k = F.layer_norm(k, (d,), *_norm_params(k_norm, d))
    q, k, v = _to_autocast_dtype(q, k, v)
    return backend_fn(name)(q, k, v, scale)


def available_backends(device: torch.device, dtype: torch.dtype, head_dim: int) -> list[str]:
    """The backends that may run on `device` for this dtype and head dim (each is still tried before it is
    chosen by timing: a pinned SDPA kernel may refuse a shape)."""
    if device.type != "cuda":
        return ["sdpa"]
    names = ["sdpa", *SDPA_KERNELS]
    sixteen_bit = dtype in (torch.float16, torch.bfloat16)
    if sixteen_bit and head_dim <= MAX_TRITON_HEAD_DIM and installed("triton"):
        names.insert(0, "triton")
    if sixteen_bit:
        names += [name for name, module in FLASH_ATTENTION_MODULES.items() if installed(module)]
    return names


def resolve_backend(backend: str) -> str:
    """A backend name for `backend`, which may be "auto": the Triton kernel when MAEFAST_BACKEND=triton forces
    it, else SDPA (PyTorch's own kernel choice). A pure function of its argument and the environment."""
    if backend != "auto":
        return backend
    return "triton" if forced_backend() == "triton" else "sdpa"


def attention(q, k, v, scale: float | None = None, *, backend: str = "auto", q_norm=None,
              k_norm=None) -> torch.Tensor:
    """softmax(q k^T * scale) v with the given backend (see the module docstring). q_norm / k_norm: optional
    LayerNorm(head_dim) modules applied to q and k first (qk-norm), fused into the Triton kernel."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return run_backend(resolve_backend(backend), q, k, v, scale, q_norm, k_norm)


def time_backend(name: str, q, k, v, scale: float | None = None, needs_grad: bool = True, reps: int = 5,
                 q_norm=None, k_norm=None) -> float:
    """Milliseconds per call of backend `name` (forward, plus backward when needs_grad) on q's CUDA device."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    leaves = [t.detach().requires_grad_(needs_grad) for t in (q, k, v)]
    grad = torch.randn(q.shape, dtype=q.dtype, device=q.device) if needs_grad else None

    def step():
        out = run_backend(name, *leaves, scale, q_norm, k_norm)
        if needs_grad:
            torch.autograd.grad(out, leaves, grad)

    with torch.enable_grad() if needs_grad else torch.no_grad():
        step()
        torch.cuda.synchronize(q.device)
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(reps):
            step()
        stop.record()
        torch.cuda.synchronize(q.device)
    return start.elapsed_time(stop) / reps
