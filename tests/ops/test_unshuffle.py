"""unshuffle: every fused backend against the reference (docs/architecture.md, "The op contract")."""
import pytest
import torch

from maefast.ops.backend import cpp_extension
from maefast.ops.masking import random_masking
from maefast.ops.unshuffle import unshuffle, unshuffle_reference

from .helpers import assert_close_to, device_for, kernel_backends, poisoned_allocations

# (batch, tokens, dim, mask ratio): token counts of 3x3, 7 channels x 3x3 (CA), 5x5 and 8x8 grids
CASES = [(2, 9, 40, 0.75), (3, 63, 24, 0.9), (2, 25, 48, 0.0), (1, 64, 20, 0.75)]


def run(fn, visible, keep_idx, mask_token, pos, grad):
    out = fn(visible, keep_idx, mask_token, pos)
    return (out,) + torch.autograd.grad((out.float() * grad).sum(), (visible, mask_token))


@pytest.mark.parametrize("backend", kernel_backends("cpp", "triton"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"B{c[0]}-L{c[1]}-D{c[2]}-m{c[3]}")
def test_unshuffle_matches_reference(backend, dtype, case):
    device = device_for(backend)
    batch, tokens, dim, ratio = case
    mask = random_masking(batch, tokens, ratio, device=device)
    visible = torch.randn(batch, mask.keep_idx.shape[1], dim, device=device, requires_grad=True)
    mask_token = torch.randn(dim, device=device, requires_grad=True)
    pos = torch.randn(tokens, dim, device=device)
    grad = torch.randn(batch, tokens, dim, device=device)
    exact = run(unshuffle_reference, visible, mask.keep_idx, mask_token, pos, grad)
    visible_low = visible.detach().to(dtype).requires_grad_()
    with poisoned_allocations():
        got = run(lambda *a: unshuffle(*a, backend=backend), visible_low, mask.keep_idx, mask_token, pos, grad)
    assert got[0].dtype == dtype and got[1].dtype == dtype
    low = None
    if dtype != torch.float32:
        low = run(unshuffle_reference, visible_low, mask.keep_idx, mask_token, pos, grad.to(dtype).float())
    for i, name in enumerate(["out", "grad visible", "grad mask token"]):
        assert_close_to(got[i].float(), exact[i], low_precision_reference=None if low is None else low[i].float(),
                        atol=1e-5, what=name)


@pytest.mark.parametrize("backend", kernel_backends("cpp"))
def test_unshuffle_rejects_repeated_ids(backend):
    keep = torch.tensor([[0, 2, 2]])
    with pytest.raises(ValueError):
        unshuffle(torch.randn(1, 3, 8), keep, torch.randn(8), torch.randn(5, 8), backend=backend)


@pytest.mark.parametrize("backend", kernel_backends("cpp"))
def test_unshuffle_custom_op_passes_opcheck(backend):
    mask = random_masking(2, 9, 0.5)
    args = (torch.randn(2, 4, 8, requires_grad=True), mask.keep_idx, torch.randn(8, requires_grad=True),
            torch.randn(9, 8), backend)
    torch.library.opcheck(torch.ops.maefast.unshuffle.default, args)


def test_cpp_mask_token_gradient_is_bitwise_reproducible():
    """Exact training resume needs run-to-run identical gradients: the C++ reduction over the masked rows
    must not depend on how OpenMP happens to share the rows among threads."""
    if cpp_extension() is None:
        pytest.skip("maefast._C is not built")
    batch, tokens, dim = 16, 1024, 64  # many 256-row chunks, so threads interleave
    mask = random_masking(batch, tokens, 0.75)
    visible = torch.randn(batch, mask.keep_idx.shape[1], dim, requires_grad=True)
    mask_token = torch.randn(dim, requires_grad=True)
    pos, grad = torch.randn(tokens, dim), torch.randn(batch, tokens, dim)
    first = run(lambda *a: unshuffle(*a, backend="cpp"), visible, mask.keep_idx, mask_token, pos, grad)[2]
    for _ in range(20):
        again = run(lambda *a: unshuffle(*a, backend="cpp"), visible, mask.keep_idx, mask_token, pos, grad)[2]
        assert torch.equal(again, first)
