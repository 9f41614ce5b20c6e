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

Every backend that is not SDPA runs behind a torch.library custom op with a fake implementation, so that
torch.compile(fullgraph=True) sees one opaque op whatever the library does inside (FlashAttention-4, for one,
is a plain autograd.Function around CuTe-DSL launches, which dynamo cannot trace). What a backend needs is
imported once, by `prepare_backend` (configure_attention calls it at setup), never inside a forward. The
FlashAttention libraries are reached through their public `flash_attn_func` only: their backward entry points
are private and change between releases, so the backward op recomputes the library's forward under autograd
and takes its gradients (tuning times a backend forward and backward, so this cost is part of its figure).

qk-norm: `attention(q, k, v, q_norm=ln_q, k_norm=ln_k)` with LayerNorm(head_dim) modules computes
attention(ln_q(q), ln_k(k), v). The Triton kernel normalizes q and k tiles as it loads them (no normalized
copies in memory, LayerNorm backward and its parameter gradients inside the backward kernels); the other
backends apply the LayerNorms first, in the (B, N, H, d) memory layout the projections store q and k in, so
that q, k and v reach the kernel in one layout and its output merges heads without a copy.
"""
from __future__ import annotations

import importlib
import math
import time

import torch
import torch.nn.functional as F

from maefast.choices import ATTENTION_BACKENDS, FLASH_ATTENTION_MODULES, SDPA_KERNELS
from maefast.errors import MissingDependency, UserInputError, installed
from maefast.ops.backend import forced_backend

MAX_TRITON_HEAD_DIM = 128
_INSTALL_HINTS = {"triton": "python -m pip install triton", "flash_attn": "python -m pip install flash-attn",
                  "fa3": "build flash_attn_interface from flash-attention's hopper/ folder",
                  "fa4": "python -m pip install 'maefast[flash4]'"}


def attention_reference(q, k, v, scale: float | None = None) -> torch.Tensor:
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    scores = (q.float() @ k.float().transpose(-2, -1)) * scale
    return (scores.softmax(dim=-1) @ v.float()).to(q.dtype)


# ------------------------------------------------------------------------------ what a backend imports, once

_prepared: dict[str, object] = {}  # backend name -> the module its custom op calls


def prepare_backend(name: str) -> None:
    """Imports what backend `name` runs on (the Triton kernels, a FlashAttention module), once: a setup step
    (configure_attention calls it), so that no forward imports. Raises MissingDependency, naming the install,
    when the backend's package is missing."""
    if name in _prepared or name == "sdpa" or name in SDPA_KERNELS:
        return
    if name == "triton":
        module_name = "maefast.kernels.attention"
        if not installed("triton"):
            raise MissingDependency(f"attention backend 'triton' needs triton ({_INSTALL_HINTS['triton']})")
    elif name in FLASH_ATTENTION_MODULES:
        module_name = FLASH_ATTENTION_MODULES[name]
        if not installed(module_name):
            raise MissingDependency(f"attention backend {name!r} needs the {module_name} module, which is not "
                                    f"installed ({_INSTALL_HINTS[name]})")
    else:
        raise UserInputError(f"unknown attention backend {name!r}; expected 'auto' or one of {ATTENTION_BACKENDS}")
    _prepared[name] = importlib.import_module(module_name)


def _prepared_module(name: str):
    """The module of a prepared backend; prepares it first when a caller skipped setup (an eager call of
    attention() with this backend; inside a custom op, so never part of a traced graph)."""
    if name not in _prepared:
        prepare_backend(name)
    return _prepared[name]


def _in_heads_layout(x: torch.Tensor) -> torch.Tensor:
    """x (B, H, N, d) laid out as (B, N, H, d) (a copy only when it is not already): the fixed output layout
    of the attention custom ops, which their fake implementations state (_empty_in_heads_layout)."""
    return x.transpose(1, 2).contiguous().transpose(1, 2)


def _empty_in_heads_layout(like: torch.Tensor, head_dim: int | None = None) -> torch.Tensor:
    """An empty (B, H, N, head_dim or d) tensor like `like`, laid out as (B, N, H, d)."""
    b, h, n, d = like.shape
    return like.new_empty((b, n, h, head_dim or d)).transpose(1, 2)


# ------------------------------------------------------------------------------------------ triton custom op

@torch.library.custom_op("maefast::flash_attention", mutates_args=())
def _flash_attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(out (B, H, Nq, d) laid out as (B, Nq, H, d), log-sum-exp (B * H, Nq) float32)."""
    return _prepared_module("triton").attention_forward(q, k, v, scale)


@_flash_attention_op.register_fake
def _(q, k, v, scale):
    b, h, nq, _ = q.shape
    return _empty_in_heads_layout(q), q.new_empty((b * h, nq), dtype=torch.float32)


@torch.library.custom_op("maefast::flash_attention_backward", mutates_args=())
def _flash_attention_backward_op(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                                 out: torch.Tensor, lse: torch.Tensor,
                                 scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _prepared_module("triton").attention_backward(grad, q, k, v, out, lse, scale)


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
    return _prepared_module("triton").attention_forward(q, k, v, scale, (q_weight, q_bias, k_weight, k_bias, eps))


@_flash_attention_qknorm_op.register_fake
def _(q, k, v, q_weight, q_bias, k_weight, k_bias, eps, scale):
    b, h, nq, _ = q.shape
    return _empty_in_heads_layout(q), q.new_empty((b * h, nq), dtype=torch.float32)


@torch.library.custom_op("maefast::flash_attention_qknorm_backward", mutates_args=())
def _flash_attention_qknorm_backward_op(
        grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
        q_weight: torch.Tensor, q_bias: torch.Tensor, k_weight: torch.Tensor, k_bias: torch.Tensor, eps: float,
        scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor,
                               torch.Tensor]:
    return _prepared_module("triton").attention_backward(grad, q, k, v, out, lse, scale,
                                                         (q_weight, q_bias, k_weight, k_bias, eps))


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


# ----------------------------------------------------------------------------- FlashAttention custom op

def _flash_attn_run(name: str, q, k, v, scale: float) -> torch.Tensor:
    """The library's flash_attn_func on (B, N, H, d) views of q, k, v (FlashAttention's layout; the models'
    (B, H, N, d) tensors are views of (B, N, H, d) projections, so this is free). Returns (B, H, N, d)."""
    run = _prepared_module(name).flash_attn_func
    out = run(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), softmax_scale=scale)
    out = out[0] if isinstance(out, tuple) else out  # some releases return (out, lse, ...)
    return _in_heads_layout(out.transpose(1, 2))


@torch.library.custom_op("maefast::flash_attn_library", mutates_args=())
def _flash_attn_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, backend: str) -> torch.Tensor:
    """FlashAttention 2 / 3 / 4 (`backend` names which): out (B, H, Nq, d) laid out as (B, Nq, H, d)."""
    return _flash_attn_run(backend, q, k, v, scale)


@_flash_attn_op.register_fake
def _(q, k, v, scale, backend):
    return _empty_in_heads_layout(q, v.shape[-1])


def _autograd_inside_op():
    """A context in which autograd records again inside a custom op's implementation, which the dispatcher runs
    with the autograd keys excluded (grad mode alone does not undo that)."""
    exclude = torch._C._dispatch_tls_local_exclude_set()
    for key in ("AutogradFunctionality", "AutogradOther", "AutogradNestedTensor", "ADInplaceOrView"):
        exclude = exclude.remove(getattr(torch._C.DispatchKey, key))
    return torch._C._ForceDispatchKeyGuard(torch._C._dispatch_tls_local_include_set(), exclude)


@torch.library.custom_op("maefast::flash_attn_library_backward", mutates_args=())
def _flash_attn_backward_op(grad: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                            backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(dq, dk, dv): the library's forward recomputed under autograd, then its own backward."""
    leaves = [t.detach().requires_grad_() for t in (q, k, v)]
    with _autograd_inside_op(), torch.enable_grad():
        out = _flash_attn_run(backend, *leaves, scale)
        grads = torch.autograd.grad(out, leaves, grad)
    return tuple(_in_heads_layout(g) for g in grads)


@_flash_attn_backward_op.register_fake
def _(grad, q, k, v, scale, backend):
    return _empty_in_heads_layout(q), _empty_in_heads_layout(k), _empty_in_heads_layout(v)


def _flash_attn_setup_context(ctx, inputs, output):
    q, k, v, scale, backend = inputs
    ctx.save_for_backward(q, k, v)
    ctx.scale, ctx.backend = scale, backend


def _flash_attn_backward(ctx, grad_out):
    q, k, v = ctx.saved_tensors
    dq, dk, dv = _flash_attn_backward_op(grad_out, q, k, v, ctx.scale, ctx.backend)
    return dq, dk, dv, None, None


_flash_attn_op.register_autograd(_flash_attn_backward, setup_context=_flash_attn_setup_context)


# ------------------------------------------------------------------------------------------------ backends

def _sdpa(q, k, v, scale):
    return F.scaled_dot_product_attention(q, k, v, scale=scale)


_SDPA_PINNED = {"flash": "FLASH_ATTENTION", "efficient": "EFFICIENT_ATTENTION", "cudnn": "CUDNN_ATTENTION",
                "math": "MATH"}


def _sdpa_pinned(kind: str):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    pinned = getattr(SDPBackend, _SDPA_PINNED[kind])

    def run(q, k, v, scale):
        with sdpa_kernel([pinned]):
            return F.scaled_dot_product_attention(q, k, v, scale=scale)
    return run


def _triton(q, k, v, scale):
    return _flash_attention_op(q, k, v, scale)[0]


def backend_fn(name: str):
    """softmax(q k^T * scale) v by backend `name`: a function of (q, k, v, scale)."""
    if name == "triton":
        return _triton
    if name == "sdpa":
        return _sdpa
    if name in SDPA_KERNELS:
        return _sdpa_pinned(name)
    if name in FLASH_ATTENTION_MODULES:
        return lambda q, k, v, scale: _flash_attn_op(q, k, v, scale, name)
    raise UserInputError(f"unknown attention backend {name!r}; expected 'auto' or one of {ATTENTION_BACKENDS}")


def _norm_params(norm, head_dim: int):
    """(weight, bias, eps) of a LayerNorm over the head dim (an nn.LayerNorm with affine parameters)."""
    shape = tuple(getattr(norm, "normalized_shape", ()))
    if shape != (head_dim,) or getattr(norm, "weight", None) is None or getattr(norm, "bias", None) is None:
        raise ValueError(f"q_norm / k_norm must be LayerNorm({head_dim}) with weight and bias, got {norm!r}")
    return norm.weight, norm.bias, float(norm.eps)


def head_layer_norm(x: torch.Tensor, norm) -> torch.Tensor:
    """LayerNorm over the head dim of x (B, H, N, d), computed in the (B, N, H, d) layout: the result is a
    (B, H, N, d) view of (B, N, H, d) memory, the layout of the projections' q, k and v, so a kernel that
    follows q's layout for its output (cuDNN) writes it ready to merge heads without a copy."""
    d = x.shape[-1]
    return F.layer_norm(x.transpose(1, 2), (d,), *_norm_params(norm, d)).transpose(1, 2)


def _to_autocast_dtype(q, k, v):
    """Under autocast, q, k and v in the autocast dtype, as SDPA takes them (qk-norm gives fp32 q and k next
    to a 16-bit v)."""
    if torch.is_autocast_enabled(q.device.type):
        dtype = torch.get_autocast_dtype(q.device.type)
        return q.to(dtype), k.to(dtype), v.to(dtype)
    return q, k, v


def run_backend(name: str, q, k, v, scale: float, q_norm=None, k_norm=None) -> torch.Tensor:
    """Runs one backend; with q_norm / k_norm (LayerNorm over the head dim) the Triton kernel fuses them and
    the other backends apply them first (head_layer_norm)."""
    d = q.shape[-1]
    if name == "triton" and not 1 <= d <= MAX_TRITON_HEAD_DIM:
        raise ValueError(f"the Triton attention kernel takes head dims up to {MAX_TRITON_HEAD_DIM}, got {d}")
    if name == "triton" and q_norm is not None and k_norm is not None:
        (qw, qb, eps_q), (kw, kb, eps_k) = _norm_params(q_norm, d), _norm_params(k_norm, d)
        if eps_q == eps_k:
            q, k, v = _to_autocast_dtype(q, k, v)
            return _flash_attention_qknorm_op(q, k, v, qw, qb, kw, kb, eps_q, scale)[0]
    if q_norm is not None:
        q = head_layer_norm(q, q_norm)
    if k_norm is not None:
        k = head_layer_norm(k, k_norm)
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


def heads_like(shape: tuple[int, int, int, int], dtype: torch.dtype, device: torch.device,
               generator: torch.Generator | None = None) -> torch.Tensor:
    """Fresh N(0, 1) values of shape (B, H, N, d) laid out as (B, N, H, d): the layout of the models' q, k, v
    (views of one projection) and of the gradient that reaches the attention output when heads merge."""
    b, h, n, d = shape
    return torch.randn((b, n, h, d), dtype=dtype, device=device, generator=generator).transpose(1, 2)


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_backend(name: str, q, k, v, scale: float | None = None, needs_grad: bool = True, reps: int = 5,
                 q_norm=None, k_norm=None) -> float:
    """Milliseconds per call of backend `name` (forward, plus backward when needs_grad) on q, k, v as given
    (their layout included), with the gradient of the output in the layout merging heads gives it. CUDA
    events on a GPU, the wall clock elsewhere. Nothing it allocates outlives the call."""
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    leaves = [t.detach().requires_grad_(needs_grad) for t in (q, k, v)]
    grad = heads_like(tuple(q.shape[:3]) + (v.shape[-1],), q.dtype, q.device) if needs_grad else None

    def step():
        out = run_backend(name, *leaves, scale, q_norm, k_norm)
        if needs_grad:
            torch.autograd.grad(out, leaves, grad)

    with torch.enable_grad() if needs_grad else torch.no_grad():
        step()
        _synchronize(q.device)
        if q.device.type == "cuda":
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            for _ in range(reps):
                step()
            stop.record()
            torch.cuda.synchronize(q.device)
            return start.elapsed_time(stop) / reps
        began = time.perf_counter()
        for _ in range(reps):
            step()
        return (time.perf_counter() - began) * 1e3 / reps
