"""Self-standardization, masking and the MAE loss: the math the papers define."""
import math

import pytest
import torch
import torch.nn.functional as F

from maefast.ops import mae_loss, patchify, random_masking, self_standardize, unpatchify
from maefast.ops.patches import random_pixels


@pytest.mark.parametrize("dtype, scale", [(torch.uint8, 255.0), (torch.uint16, 65535.0)])
def test_self_standardization_is_instance_norm_of_scaled_pixels(dtype, scale):
    pixels = random_pixels(3, 5, 16, dtype=dtype)
    out = self_standardize(pixels)
    expected = F.instance_norm(pixels.to(torch.float32) / scale, eps=1e-5)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    assert torch.allclose(out.mean((2, 3)), torch.zeros(3, 5), atol=1e-5)
    assert torch.allclose(out.std((2, 3), unbiased=False), torch.ones(3, 5), atol=1e-3)


def test_self_standardization_rejects_signed_integers():
    with pytest.raises(TypeError, match="uint8, uint16 or floating point, got torch.int32"):
        self_standardize(torch.ones(1, 1, 4, 4, dtype=torch.int32))


@pytest.mark.parametrize("channel_agnostic", [False, True])
def test_patchify_roundtrip(channel_agnostic):
    images = torch.randn(2, 3, 24, 24)
    patches = patchify(images, 8, channel_agnostic)
    assert patches.shape == ((2, 27, 64) if channel_agnostic else (2, 9, 192))
    torch.testing.assert_close(unpatchify(patches, 8, 3, (3, 3), channel_agnostic), images)
    # ViT patch vectors are (p, q, c): the first C values are pixel (0, 0) of every channel
    if not channel_agnostic:
        torch.testing.assert_close(patches[:, 0, :3], images[:, :, 0, 0])


def test_masking_counts_and_fixed_noise():
    noise = torch.rand(4, 50)
    mask = random_masking(4, 50, 0.75, noise=noise)
    assert mask.keep_idx.shape == (4, 12) and mask.masked_idx.shape == (4, 38)
    assert (mask.mask.sum(1) == 38).all()
    for row in range(4):
        assert set(mask.keep_idx[row].tolist()).isdisjoint(mask.masked_idx[row].tolist())
        assert mask.keep_idx[row].tolist() == torch.argsort(noise[row])[:12].tolist()
        assert (mask.mask[row, mask.keep_idx[row]] == 0).all()
    with pytest.raises(ValueError, match=r"noise must have shape \(4, 50\), got \(4, 49\)"):
        random_masking(4, 50, 0.75, noise=torch.rand(4, 49))


def test_masked_mse_and_fourier_mix():
    pred, target = torch.randn(2, 5, 48), torch.randn(2, 5, 48)  # patch 4, 3 channels
    out = mae_loss(pred, target, channels=3, fourier_weight=0.25)
    mse = ((pred - target) ** 2).mean()

    def spectrum(x):
        return torch.fft.fft2(x.view(2, 5, 4, 4, 3).permute(0, 1, 4, 2, 3), norm="ortho").abs()

    fourier = (spectrum(pred) - spectrum(target)).abs().mean()
    torch.testing.assert_close(out.mse, mse)
    torch.testing.assert_close(out.fourier, fourier)
    torch.testing.assert_close(out.loss, 0.75 * mse + 0.25 * fourier)
    assert math.isclose(mae_loss(pred, target, channels=3, fourier_weight=0.0).loss.item(), mse.item(), rel_tol=1e-6)


def test_fourier_term_is_one_dft_per_patch_and_channel():
    # A pure phase shift keeps DFT magnitudes: the Fourier term is zero, the MSE is not.
    target = torch.randn(1, 1, 16)
    shifted = torch.roll(target.view(1, 1, 4, 4), shifts=1, dims=3).reshape(1, 1, 16)
    out = mae_loss(shifted, target, channels=1, fourier_weight=0.5)
    assert out.fourier.item() < 1e-5 and out.mse.item() > 0.1


def test_norm_pix_loss_normalizes_each_target_patch():
    pred, target = torch.randn(2, 3, 16), torch.randn(2, 3, 16) * 5 + 3
    normalized = (target - target.mean(-1, keepdim=True)) / (target.var(-1, unbiased=False, keepdim=True) + 1e-6).sqrt()
    out = mae_loss(pred, target, channels=1, norm_pix_loss=True, fourier_weight=0.0)
    torch.testing.assert_close(out.loss, ((pred - normalized) ** 2).mean())
