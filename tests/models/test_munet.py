"""Masked U-Net: shapes, the masked-only objective, masking of the input, embeddings, checkpoints, FLOPs."""
import pytest
import torch
import torch.nn as nn

import maefast
from maefast.models.families import family_of
from maefast.models.flops import munet_forward_flops
from maefast.ops import mae_loss, patchify, self_standardize
from maefast.ops.patches import gather_tokens, random_pixels

DEBUG = "munet_debug_64"


def debug_model(channels=3, **overrides):
    torch.manual_seed(0)
    return maefast.create_model(DEBUG, in_chans=channels, **overrides)


@pytest.mark.parametrize("channels, dtype", [(3, torch.uint8), (1, torch.uint16), (6, torch.uint8)])
def test_shapes_and_gradients_reach_every_parameter(channels, dtype):
    model = debug_model(channels)
    pixels = random_pixels(2, channels, 64, dtype=dtype)
    loss, pred, mask = model(pixels)
    assert pred.shape == (2, 64, 8 * 8 * channels)  # 8x8 grid of 8x8 patches, (p, q, c) layout
    assert mask.shape == (2, 64) and (mask.sum(1) == 64 - int(64 * 0.25)).all()
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    for key, parameter in model.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, key


def test_loss_is_the_mae_loss_of_the_masked_patches_only():
    model = debug_model(fourier_weight=0.1)
    pixels = random_pixels(2, 3, 64)
    noise = torch.rand(2, 64)
    loss, pred, mask = model(pixels, noise=noise)
    masked_idx = torch.argsort(noise, dim=1)[:, 16:]
    targets = gather_tokens(patchify(self_standardize(pixels), 8, False), masked_idx)
    expected = mae_loss(gather_tokens(pred, masked_idx), targets, channels=3, fourier_weight=0.1).loss
    torch.testing.assert_close(loss, expected)
    # d loss / d pred: zero on every visible patch, nonzero on every masked one
    (grad,) = torch.autograd.grad(loss, pred)
    per_patch = grad.abs().sum(-1)
    assert (per_patch[mask == 0] == 0).all()
    assert (per_patch[mask == 1] > 0).all()


def test_masked_content_does_not_reach_the_network_but_changes_the_loss():
    # Shuffling pixels inside one masked patch keeps every channel's mean and variance, so the
    # standardized visible pixels stay the same: the prediction must not move, the target does.
    model = debug_model().eval()
    pixels = random_pixels(1, 3, 64)
    noise = torch.rand(1, 64)
    with torch.no_grad():
        loss, pred, mask = model(pixels, noise=noise)
        row, col = divmod(int(torch.nonzero(mask[0])[0]), 8)
        shuffled = pixels.clone()
        patch = shuffled[0, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].reshape(3, -1)
        shuffled[0, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = patch[:, torch.randperm(64)].view(3, 8, 8)
        loss2, pred2, _ = model(shuffled, noise=noise)
        torch.testing.assert_close(pred2, pred, rtol=1e-5, atol=1e-5)
        assert abs(loss2.item() - loss.item()) > 1e-4
        # the same shuffle in a visible patch changes the input, so the prediction moves
        row, col = divmod(int(torch.nonzero(mask[0] == 0)[0]), 8)
        visible = pixels.clone()
        patch = visible[0, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8].reshape(3, -1)
        visible[0, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8] = patch[:, torch.randperm(64)].view(3, 8, 8)
        assert not torch.allclose(model(visible, noise=noise)[1], pred, atol=1e-5)


def test_fixed_noise_reproduces_and_mask_ratio_zero_has_no_loss():
    model = debug_model(2)
    pixels = random_pixels(3, 2, 64)
    noise = torch.rand(3, 64)
    first, second = model(pixels, noise=noise), model(pixels, noise=noise)
    assert torch.equal(first[2], second[2]) and torch.equal(first[0], second[0])
    assert not torch.equal(model(pixels, noise=torch.rand(3, 64))[2], first[2])
    loss, _, mask = model(pixels, mask_ratio=0.0)
    assert mask.sum() == 0 and loss.item() == 0.0


def test_embed_is_the_mean_of_the_unmasked_bottleneck():
    model = debug_model(4).eval()
    pixels = random_pixels(3, 4, 64, dtype=torch.uint16)
    with torch.no_grad():
        features = model.forward_features(pixels)
        assert features.shape == (3, 64, 16, 16)  # widths [16, 32, 64]: two halvings of 64
        embedding = model.embed(pixels)
        torch.testing.assert_close(embedding, features.mean((2, 3)))
        assert embedding.shape == (3, model.embed_dim) and model.encoder_channels == [16, 32, 64]
        # floats in [0, 1] are the same image as their integer pixels
        torch.testing.assert_close(model.embed(pixels.to(torch.float32) / 65535), embedding, rtol=1e-4, atol=1e-4)
        assert not torch.allclose(model.embed(random_pixels(3, 4, 64, dtype=torch.uint16)), embedding)


@pytest.mark.parametrize("shape, message", [
    ((2, 4, 64, 64), "the input has 4 channels; the model takes in_chans=3"),
    ((2, 3, 64, 56), "images must be square, got 64x56"),
    ((2, 3, 128, 128), "model expects 64x64 images, got 128x128"),
    ((3, 64, 64), r"expected images \(B, C, H, W\)"),
])
def test_bad_images_name_expected_and_given(shape, message):
    model = debug_model()
    with pytest.raises(ValueError, match=message):
        model(torch.randint(0, 255, shape, dtype=torch.uint8))
    with pytest.raises(ValueError, match=message):
        model.embed(torch.randint(0, 255, shape, dtype=torch.uint8))


def test_bad_configs():
    with pytest.raises(ValueError, match="img_size 60 is not divisible by patch_size 8"):
        maefast.create_model(DEBUG, img_size=60)
    with pytest.raises(ValueError, match="img_size 68 is not divisible by 8, the U-Net's total downsampling"):
        maefast.create_model(DEBUG, img_size=68, patch_size=4, widths=[16, 32, 64, 128], depths=[1, 1, 1])
    with pytest.raises(ValueError, match="depths needs one entry per stage"):
        maefast.create_model(DEBUG, depths=[1])
    with pytest.raises(ValueError, match=r"widths \[12\] are not positive multiples of norm_groups 8"):
        maefast.create_model(DEBUG, widths=[12, 32, 64])
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        maefast.create_model(DEBUG, mask_ratio=1.0)
    with pytest.raises(TypeError, match=r"unknown model option\(s\) \['depth'\]"):
        maefast.create_model(DEBUG, depth=3)
    with pytest.raises(TypeError, match="uint8, uint16 or floating point, got torch.int32"):
        debug_model()(torch.randint(0, 255, (1, 3, 64, 64), dtype=torch.int32))


def test_save_and_reload_gives_the_same_model(tmp_path):
    model = debug_model(5, widths=[8, 16, 32, 64], depths=[1, 2, 1], bottleneck_depth=2).eval()
    maefast.save_pretrained(model, tmp_path / "ckpt", channel_names=["DNA", "ER", "RNA", "AGP", "Mito"])
    restored = maefast.from_pretrained(tmp_path / "ckpt").eval()
    assert restored.config == model.config
    pixels, noise = random_pixels(2, 5, 64), torch.rand(2, 64)
    with torch.no_grad():
        torch.testing.assert_close(restored(pixels, noise=noise)[1], model(pixels, noise=noise)[1])
        torch.testing.assert_close(restored.embed(pixels), model.embed(pixels))


def count_conv_flops(model, pixels):
    """FLOPs of every convolution as executed, from forward hooks: the check on the analytic count."""
    total = [0]

    def hook(module, inputs, output):
        k = module.kernel_size[0] * module.kernel_size[1]
        if isinstance(module, nn.ConvTranspose2d):
            total[0] += 2 * inputs[0][0].numel() * k * module.out_channels
        else:
            total[0] += 2 * output[0].numel() * k * module.in_channels

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    with torch.no_grad():
        model(pixels)
    for handle in handles:
        handle.remove()
    return total[0]


@pytest.mark.parametrize("overrides", [{}, dict(widths=[8, 16, 24, 32], depths=[2, 1, 3], bottleneck_depth=2)])
def test_flops_match_the_executed_convolutions(overrides):
    model = debug_model(3, **overrides)
    executed = count_conv_flops(model, random_pixels(1, 3, 64))
    assert munet_forward_flops(model.config, 3) == executed
    assert family_of(model).training_flops(model, 3) == 3 * executed


def test_debug_model_learns():
    model = debug_model(2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    pixels = random_pixels(2, 2, 64)
    pixels[:, :, 16:48, 16:48] = 255  # structure a U-Net can fill in from the context
    noise = torch.rand(2, 64)
    first = model(pixels, noise=noise)[0].item()
    for _ in range(8):
        loss = model(pixels, noise=noise)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.9 * first
