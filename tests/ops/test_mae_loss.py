"""mae_loss: the fused Triton loss against the reference (docs/architecture.md, "The op contract")."""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from maefast.ops.mae_loss import NORM_PIX_EPS, mae_loss, mae_loss_reference, normalize_patches

from .helpers import assert_close_to, device_for, kernel_backends, poisoned_allocations

# (batch, masked patches, patch side, channels per patch, norm_pix_loss): ViT (p, q, c) and CA-MAE (C = 1)
CASES = [(2, 5, 8, 3, False), (1, 7, 4, 1, True), (2, 3, 8, 7, True), (3, 4, 8, 1, False), (1, 2, 16, 2, True)]


def run(fn, pred, target, channels, norm, weight):
    losses = fn(pred, target, channels=channels, norm_pix_loss=norm, fourier_weight=weight)
    (grad,) = torch.autograd.grad(losses.loss + 0.5 * losses.mse + 2.0 * losses.fourier, pred)
    return tuple(losses) + (grad,)


@pytest.mark.parametrize("backend", kernel_backends("triton"))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(map(str, c)))
def test_triton_mae_loss_matches_reference(backend, dtype, case):
    device = device_for(backend)
    batch, masked, side, channels, norm = case
    size = side * side * channels
    pred = torch.randn(batch, masked, size, device=device, requires_grad=True)
    target = torch.randn(batch, masked, size, device=device) * 2.0 + 0.5
    exact = run(mae_loss_reference, pred, target, channels, norm, 0.3)
    pred_low = pred.detach().to(dtype).requires_grad_()
    with poisoned_allocations():
        got = run(lambda *a, **kw: mae_loss(*a, **kw, backend=backend), pred_low, target, channels, norm, 0.3)
    low = run(mae_loss_reference, pred_low, target, channels, norm, 0.3) if dtype != torch.float32 else None
    for i, name in enumerate(["loss", "mse", "fourier", "grad"]):
        assert_close_to(got[i].float(), exact[i], low_precision_reference=None if low is None else low[i].float(),
                        atol=1e-6, rtol=2e-5, what=name)


class RecordedOps(TorchDispatchMode):
    """The ops that reach the dispatcher inside the block."""

    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("backend", kernel_backends("triton"))
def test_mae_loss_with_nothing_masked_is_zero(backend):
    """An empty set of masked patches goes through the fused op (its launcher skips the empty grid) and
    gives zero losses and an empty gradient, as the reference does."""
    pred = torch.randn(2, 0, 64, device=device_for(backend), requires_grad=True)
    target = torch.randn(2, 0, 64, device=pred.device)
    with RecordedOps() as recorded:
        losses = mae_loss(pred, target, channels=1, backend=backend)
        (grad,) = torch.autograd.grad(losses.loss, pred)
    assert "maefast.mae_loss.default" in recorded.names and "maefast.mae_loss_backward.default" in recorded.names
    assert [losses.loss.item(), losses.mse.item(), losses.fourier.item()] == [0.0, 0.0, 0.0]
    assert grad.shape == pred.shape


def test_mae_loss_rejects_bad_channels():
    with pytest.raises(ValueError, match="p\\*p\\*channels"):
        mae_loss(torch.randn(1, 2, 48), torch.randn(1, 2, 48), channels=5)


def test_norm_pix_loss_normalizes_each_patch_with_its_biased_variance():
    """norm_pix_loss's target, by hand for patches of 4 values: the mean squared deviation (divide by P = 4), not
    torch.var's default (divide by P - 1 = 3, as facebookresearch/mae), which would scale it by sqrt(3 / 4)."""
    target = torch.tensor([[[1.0, 2.0, 4.0, 9.0], [0.5, 0.5, 0.5, 2.5]]])
    mean = torch.tensor([4.0, 1.0])
    squared_deviations = torch.tensor([9.0 + 4.0 + 0.0 + 25.0, 3 * 0.25 + 2.25])
    expected = (target - mean[None, :, None]) / torch.sqrt(squared_deviations / 4 + NORM_PIX_EPS)[None, :, None]
    torch.testing.assert_close(normalize_patches(target), expected)
    pred = torch.zeros_like(target)  # the MSE of predicting zeros is the normalized targets' mean square
    losses = mae_loss_reference(pred, target, channels=1, norm_pix_loss=True, fourier_weight=0.0)
    torch.testing.assert_close(losses.mse, expected.square().mean())
