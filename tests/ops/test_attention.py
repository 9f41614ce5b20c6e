"""attention: the Triton flash-attention kernel against the reference, and the dispatcher (docs/architecture.md,
"The op contract")."""
import importlib

import pytest
import torch
import torch.nn.functional as F

from maefast.ops.attention import attention, attention_reference

from .helpers import assert_close_to, device_for, kernel_backends, poisoned_allocations

# maefast.ops re-exports the function under the module's name
attention_module = importlib.import_module("maefast.ops.attention")

# (batch, heads, query length, key length, head dim): self-attention, cross-attention, odd lengths and dims
CASES = [(2, 3, 17, 17, 16), (1, 2, 33, 20, 40), (1, 1, 5, 70, 64), (2, 1, 1, 9, 24), (1, 1, 19, 19, 128)]


def heads_view(batch, heads, length, dim, dtype, device):
    """(B, H, N, d) as the models make it: a transposed view of a (B, N, H * d) projection."""
    x = torch.randn(batch, length, heads * dim, device=device, dtype=dtype)
    return x.view(batch, length, heads, dim).transpose(1, 2).requires_grad_()


def run(fn, q, k, v, grad):
    out = fn(q, k, v)
    return (out,) + torch.autograd.grad((out.float() * grad).sum(), (q, k, v))


@pytest.mark.parametrize("backend", kernel_backends("triton"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_triton_attention_matches_reference(backend, dtype, case):
    device = device_for(backend)
    batch, heads, nq, nk, dim = case
    q = heads_view(batch, heads, nq, dim, torch.float32, device)
    k = heads_view(batch, heads, nk, dim, torch.float32, device)
    v = torch.randn(batch, heads, nk, dim, device=device, requires_grad=True)  # contiguous layout too
    grad = torch.randn(batch, heads, nq, dim, device=device)
    exact = run(attention_reference, q, k, v, grad)
    low_inputs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    with poisoned_allocations():
        got = run(lambda *a: attention(*a, backend="triton"), *low_inputs, grad)
    low = None
    if dtype != torch.float32:
        # the reference run in dtype: on a GPU, PyTorch's own 16-bit attention (SDPA); on the CPU the math
        # reference, which computes in fp32 and rounds once, as the interpreted kernel does
        low_fn = F.scaled_dot_product_attention if device.type == "cuda" else attention_reference
        low = run(low_fn, *low_inputs, grad.to(dtype).float())
    for i, name in enumerate(["out", "dq", "dk", "dv"]):
        assert got[i].dtype == dtype and got[i].shape == exact[i].shape
        assert_close_to(got[i].float(), exact[i], low_precision_reference=None if low is None else low[i].float(),
                        atol=1e-5, rtol=1e-4, what=name)


def test_cpu_attention_is_sdpa_and_matches_reference(monkeypatch):
    monkeypatch.delenv("MAEFAST_BACKEND", raising=False)
    q, k, v = (torch.randn(2, 3, 11, 16) for _ in range(3))
    assert_close_to(attention(q, k, v), attention_reference(q, k, v), atol=1e-5, what="out")
    assert attention_module.available_backends(q.device, q.dtype, 16) == ["sdpa"]
    assert attention_module.resolve_backend("auto") == "sdpa"
    monkeypatch.setenv("MAEFAST_BACKEND", "triton")
    assert attention_module.resolve_backend("auto") == "triton"
    assert attention_module.resolve_backend("cudnn") == "cudnn"  # a chosen backend is not overridden


def test_unknown_backend_is_refused():
    q = torch.randn(1, 1, 4, 8)
    with pytest.raises(ValueError, match="unknown attention backend"):
        attention(q, q, q, backend="nope")


@pytest.mark.parametrize("backend", kernel_backends("triton"))
def test_triton_attention_custom_op_passes_opcheck(backend):
    device = device_for(backend)
    q, k, v = (torch.randn(1, 2, 9, 16, device=device, requires_grad=True) for _ in range(3))
    torch.library.opcheck(torch.ops.maefast.flash_attention.default, (q, k, v, 0.25),
                          test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))


@pytest.mark.parametrize("backend", kernel_backends("triton"))
def test_attention_under_autocast_takes_mixed_dtypes(backend, monkeypatch):
    """qk-norm under autocast gives fp32 q and k beside a 16-bit v; attention runs them in the autocast dtype."""
    device = device_for(backend)
    monkeypatch.setenv("MAEFAST_BACKEND", backend)
    q, k = (torch.randn(1, 2, 9, 16, device=device) for _ in range(2))
    v = torch.randn(1, 2, 9, 16, device=device, dtype=torch.bfloat16)
    with torch.autocast(device.type, dtype=torch.bfloat16):
        out = attention(q, k, v)
    assert out.dtype == torch.bfloat16
    exact = attention_reference(q, k, v.float())
    assert (out.float() - exact).abs().max().item() < 0.05


@pytest.mark.parametrize("backend", kernel_backends("triton"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", [(2, 2, 17, 17, 16), (1, 3, 33, 20, 40)], ids=lambda c: "x".join(map(str, c)))
def test_triton_attention_with_fused_qk_norm_matches_reference(backend, dtype, case):
    device = device_for(backend)
    batch, heads, nq, nk, dim = case
    q = heads_view(batch, heads, nq, dim, torch.float32, device)
    k = heads_view(batch, heads, nk, dim, torch.float32, device)
    v = torch.randn(batch, heads, nk, dim, device=device, requires_grad=True)
    q_norm, k_norm = torch.nn.LayerNorm(dim, eps=1e-6).to(device), torch.nn.LayerNorm(dim, eps=1e-6).to(device)
    with torch.no_grad():
        for norm in (q_norm, k_norm):
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.1)
    params = [q_norm.weight, q_norm.bias, k_norm.weight, k_norm.bias]
    grad = torch.randn(batch, heads, nq, dim, device=device)

    def run_norm(fn, q, k, v, g):
        out = fn(q, k, v)
        return (out,) + torch.autograd.grad((out.float() * g).sum(), (q, k, v, *params))

    exact = run_norm(lambda q, k, v: attention_reference(q_norm(q), k_norm(k), v), q, k, v, grad)
    low_inputs = [t.detach().to(dtype).requires_grad_() for t in (q, k, v)]
    with poisoned_allocations():
        got = run_norm(lambda *a: attention(*a, backend="triton", q_norm=q_norm, k_norm=k_norm), *low_inputs, grad)
    low = None
    if dtype != torch.float32:
        low_fn = F.scaled_dot_product_attention if device.type == "cuda" else attention_reference
        low = run_norm(lambda q, k, v: low_fn(q_norm(q.float()).to(dtype), k_norm(k.float()).to(dtype), v),
                       *low_inputs, grad.to(dtype).float())
    names = ["out", "dq", "dk", "dv", "d q_norm.weight", "d q_norm.bias", "d k_norm.weight", "d k_norm.bias"]
    for i, name in enumerate(names):
        assert_close_to(got[i].float(), exact[i], low_precision_reference=None if low is None else low[i].float(),
                        atol=1e-5, rtol=1e-4, what=name)


def test_qk_norm_on_the_cpu_path_matches_reference(monkeypatch):
    monkeypatch.delenv("MAEFAST_BACKEND", raising=False)
    q, k, v = (torch.randn(2, 3, 11, 16) for _ in range(3))
    q_norm, k_norm = torch.nn.LayerNorm(16), torch.nn.LayerNorm(16)
    with torch.no_grad():
        q_norm.weight.uniform_(0.5, 1.5)
        k_norm.bias.normal_()
    got = attention(q, k, v, q_norm=q_norm, k_norm=k_norm)
    assert_close_to(got, attention_reference(q_norm(q), k_norm(k), v), atol=1e-5, what="out")
    with pytest.raises(ValueError, match="LayerNorm"):
        attention(q, k, v, q_norm=torch.nn.LayerNorm(8), k_norm=k_norm)
