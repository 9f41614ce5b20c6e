"""tokenize and masked_targets: every fused backend against the reference (docs/architecture.md, "The op contract")."""
import pytest
import torch

from maefast.ops.masking import random_masking
from maefast.ops.patches import embedding_patches, gather_tokens, random_pixels, self_standardize
from maefast.ops.tokenize import masked_targets, masked_targets_reference, tokenize, tokenize_reference

from .helpers import assert_close_to, device_for, kernel_backends, poisoned_allocations

# (channel_agnostic, channels, pixel dtype, image size, patch, mask ratio, embed dim)
CASES = [
    (False, 1, torch.uint8, 24, 8, 0.75, 40),     # 3 x 3 grid
    (False, 7, torch.uint16, 40, 8, 0.9, 24),     # 5 x 5 grid
    (False, 3, torch.uint8, 24, 4, 0.0, 48),      # 6 x 6 grid, nothing masked
    (False, 6, torch.float32, 24, 8, 0.75, 32),   # float pixels already in [0, 1]
    (True, 1, torch.uint16, 24, 8, 0.0, 40),
    (True, 7, torch.uint8, 24, 8, 0.75, 24),
    (True, 3, torch.float32, 40, 8, 0.9, 32),
]


def make_inputs(case, device, bias=True):
    ca, channels, dtype, size, patch, ratio, dim = case
    batch = 2
    pixels = random_pixels(batch, channels, size, dtype, device)
    pixels[0, 0] = pixels[0, 0, 0, 0]  # one constant plane: variance 0, standardized by eps alone
    num_tokens = (size // patch) ** 2 * (channels if ca else 1)
    mask = random_masking(batch, num_tokens, ratio, device=device)
    weight = torch.randn(dim, 1 if ca else channels, patch, patch, device=device, requires_grad=True)
    b = torch.randn(dim, device=device, requires_grad=True) if bias else None
    pos = torch.randn(num_tokens, dim, device=device)
    return pixels, mask, weight, b, pos


def low_precision_reference(pixels, keep_idx, weight, bias, pos, ca, dtype, round_operands):
    """The reference run in a 16-bit dtype. round_operands=False: computed in fp32 and rounded once, like
    tokenize_reference(out_dtype=dtype) (the C++ forward). True: 16-bit operands, as a patch embedding under
    autocast multiplies them (the Triton path's GEMMs; the C++ weight gradient of a bf16 gradient): patches
    and weight rounded to dtype, fp32 accumulation, rounded output."""
    if not round_operands:
        return tokenize_reference(pixels, keep_idx, weight, bias, pos, channel_agnostic=ca, out_dtype=dtype)
    patches = embedding_patches(self_standardize(pixels), weight.shape[-1], ca)
    visible = gather_tokens(patches, keep_idx).to(dtype).float()
    tokens = visible @ weight.reshape(weight.shape[0], -1).to(dtype).float().t()
    if bias is not None:
        tokens = tokens + bias.float()
    tokens = tokens + gather_tokens(pos.float().expand(pixels.shape[0], -1, -1), keep_idx)
    return tokens.to(dtype)


def grads(tokens, weight, bias, grad):
    params = [weight] + ([bias] if bias is not None else [])
    return torch.autograd.grad((tokens.float() * grad).sum(), params)


@pytest.mark.parametrize("backend", kernel_backends("cpp", "triton"))
@pytest.mark.parametrize("out_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: f"ca{int(c[0])}-C{c[1]}-{str(c[2])[6:]}-{c[3]}p{c[4]}-m{c[5]}")
def test_tokenize_matches_reference(backend, out_dtype, case):
    device = device_for(backend)
    pixels, mask, weight, bias, pos = make_inputs(case, device)
    ca = case[0]
    exact = tokenize_reference(pixels, mask.keep_idx, weight, bias, pos, channel_agnostic=ca, out_dtype=torch.float32)
    grad = torch.randn_like(exact)
    exact_grads = grads(exact, weight, bias, grad)
    with poisoned_allocations():
        tokens = tokenize(pixels, mask.keep_idx, weight, bias, pos, channel_agnostic=ca, out_dtype=out_dtype,
                          backend=backend)
        kernel_grads = grads(tokens, weight, bias, grad)
    assert tokens.dtype == out_dtype and tokens.shape == exact.shape
    low = None
    if out_dtype != torch.float32:
        low = low_precision_reference(pixels, mask.keep_idx, weight, bias, pos, ca, out_dtype, backend == "triton")
        low_for_grads = low_precision_reference(pixels, mask.keep_idx, weight, bias, pos, ca, out_dtype, True)
        low_grads = grads(low_for_grads, weight, bias, grad.to(out_dtype).float())
    assert_close_to(tokens.float(), exact, low_precision_reference=None if low is None else low.float(),
                    atol=1e-4, rtol=1e-5, what="tokens")
    for name, got, want, i in zip(["weight", "bias"], kernel_grads, exact_grads, range(2)):
        assert_close_to(got, want, low_precision_reference=None if low is None else low_grads[i],
                        atol=1e-3, rtol=1e-5, what=f"grad {name}")


@pytest.mark.parametrize("backend", kernel_backends("cpp", "triton"))
@pytest.mark.parametrize("case", CASES[:2] + CASES[4:6], ids=lambda c: f"ca{int(c[0])}-C{c[1]}-m{c[5]}")
def test_masked_targets_match_reference(backend, case):
    device = device_for(backend)
    pixels, mask, *_ = make_inputs(case, device)
    ca, patch = case[0], case[4]
    exact = masked_targets_reference(pixels, mask.masked_idx, patch, channel_agnostic=ca)
    with poisoned_allocations():
        got = masked_targets(pixels, mask.masked_idx, patch, channel_agnostic=ca, backend=backend)
    assert_close_to(got, exact, atol=1e-5, what="targets")


@pytest.mark.parametrize("backend", kernel_backends("cpp", "triton"))
def test_tokenize_without_bias_and_all_tokens(backend):
    device = device_for(backend)
    case = (False, 5, torch.uint8, 24, 8, 0.0, 40)
    pixels, _, weight, _, pos = make_inputs(case, device, bias=False)
    keep = torch.arange(9, device=device).flip(0).expand(2, 9)  # every token, in reverse order
    exact = tokenize_reference(pixels, keep, weight, None, pos, channel_agnostic=False)
    got = tokenize(pixels, keep, weight, None, pos, channel_agnostic=False, backend=backend)
    assert_close_to(got, exact, atol=1e-4, what="tokens")
    (gw,) = torch.autograd.grad(got.sum(), weight)
    (gw_exact,) = torch.autograd.grad(exact.sum(), weight)
    assert_close_to(gw, gw_exact, atol=1e-3, what="grad weight")


@pytest.mark.parametrize("backend", kernel_backends("cpp"))
def test_tokenize_autocast_gives_bf16(backend):
    pixels, mask, weight, bias, pos = make_inputs(CASES[0], torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tokens = tokenize(pixels, mask.keep_idx, weight, bias, pos, channel_agnostic=False, backend=backend)
    assert tokens.dtype == torch.bfloat16
    tokens.float().sum().backward()
    assert weight.grad is not None and weight.grad.dtype == torch.float32


@pytest.mark.parametrize("backend", kernel_backends("cpp"))
def test_tokenize_rejects_bad_token_ids(backend):
    pixels, mask, weight, bias, pos = make_inputs(CASES[0], torch.device("cpu"))
    bad = mask.keep_idx.clone()
    bad[0, 0] = 9  # the grid has 9 tokens: ids 0..8
    with pytest.raises((IndexError, ValueError)):
        tokenize(pixels, bad, weight, bias, pos, channel_agnostic=False, backend=backend)


@pytest.mark.parametrize("backend", kernel_backends("cpp"))
def test_tokenize_custom_op_passes_opcheck(backend):
    pixels, mask, weight, bias, pos = make_inputs(CASES[1], torch.device("cpu"))
    torch.library.opcheck(torch.ops.maefast.tokenize.default,
                          (pixels, mask.keep_idx, weight, bias, pos, False, torch.float32, backend))
    torch.library.opcheck(torch.ops.maefast.masked_targets.default, (pixels, mask.masked_idx, 8, False, backend))
