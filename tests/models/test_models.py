import pytest
import torch
import torch.utils._pytree as pytree

import maefast
from maefast.models.common import TrainingOutput
from maefast.ops.patches import random_pixels

DEBUG = "mae_vit_debug_patch8_64"
CA_DEBUG = "camae_vit_debug_patch8_64"


def parameter_count(name, **overrides):
    with torch.device("meta"):
        model = maefast.create_model(name, **overrides)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name, low, high", [
    ("vit_small_patch16_256", 21.9e6, 22.1e6),
    ("vit_base_patch16_256", 86.3e6, 86.5e6),
    ("vit_large_patch8_256", 303.0e6, 304.5e6),
])
def test_encoder_parameter_counts(name, low, high):
    assert low < parameter_count(name) < high


def test_vit_large_patch8_count_matches_the_architecture():
    dim, hidden, depth, patch, chans, grid = 1024, 4096, 24, 8, 6, 32
    norm = 2 * dim
    block = norm + dim * (hidden + 3 * dim) + hidden + 2 * (2 * 64) + (dim * dim + dim) + (hidden * dim + dim) + dim
    expected = depth * block + (chans * patch * patch * dim + dim) + dim + (1 + grid * grid) * dim + norm
    assert parameter_count("vit_large_patch8_256") == expected


def test_mae_decoder_defaults_to_8_blocks_of_512():
    with torch.device("meta"):
        model = maefast.create_model("mae_vit_large_patch8_256")
    assert len(model.decoder.blocks) == 8 and model.decoder.mask_token.shape[-1] == 512
    assert model.decoder_pred.out_features == 8 * 8 * 6


@pytest.mark.parametrize("name, channels", [(DEBUG, 3), (DEBUG, 1), (CA_DEBUG, 5), (CA_DEBUG, 1)])
def test_training_forward_shapes_and_gradients(name, channels):
    torch.manual_seed(0)
    overrides = {"in_chans": channels} if name == DEBUG else {"max_in_chans": 7}
    model = maefast.create_model(name, **overrides)
    pixels = random_pixels(2, channels, 64)
    loss, pred, mask = model(pixels)
    tokens = 64 * (channels if name == CA_DEBUG else 1)
    assert pred.shape == (2, tokens, 64 * (1 if name == CA_DEBUG else channels))
    assert mask.shape == (2, tokens) and (mask.sum(1) == tokens - int(tokens * 0.25)).all()
    loss.backward()
    assert torch.isfinite(loss)
    for key, parameter in model.named_parameters():
        if parameter.requires_grad and "modality_tokens" not in key and "decoders." not in key:
            assert parameter.grad is not None and parameter.grad.abs().sum() > 0, key


def test_fixed_noise_reproduces_the_mask_and_loss():
    model = maefast.create_model(DEBUG, in_chans=2, drop_path_rate=0.0)
    pixels = random_pixels(3, 2, 64)
    noise = torch.rand(3, 64)
    first = model(pixels, noise=noise)
    second = model(pixels, noise=noise)
    assert torch.equal(first[2], second[2]) and torch.allclose(first[0], second[0])
    assert not torch.equal(model(pixels, noise=torch.rand(3, 64))[2], first[2])


def test_mask_ratio_zero_has_nothing_to_reconstruct():
    model = maefast.create_model(DEBUG, in_chans=2)
    loss, _, mask = model(random_pixels(2, 2, 64), mask_ratio=0.0)
    assert mask.sum() == 0 and loss.item() == 0.0


def test_ca_mae_takes_any_channel_count_and_order():
    torch.manual_seed(0)
    encoder = maefast.create_model("ca_vit_debug_patch8_64", max_in_chans=6).eval()
    pixels = random_pixels(2, 4, 64, dtype=torch.uint16)
    with torch.no_grad():
        reference = encoder.embed(pixels)
        permuted = encoder.embed(pixels[:, [2, 0, 3, 1]])
        per_channel = encoder.embed(pixels, per_channel=True)
        assert encoder.embed(pixels[:, :1]).shape == (2, 64)
    # positions are shared by all channels, so the mean embedding does not depend on channel order
    torch.testing.assert_close(permuted, reference, rtol=1e-4, atol=1e-5)
    assert per_channel.shape == (2, 4 * 64)
    torch.testing.assert_close(per_channel.view(2, 4, 64).mean(1), reference, rtol=1e-4, atol=1e-5)


def test_embed_and_timm_api():
    model = maefast.create_model("vit_debug_patch8_64", in_chans=3).eval()
    pixels = random_pixels(2, 3, 64)
    with torch.no_grad():
        features = model.forward_features(pixels)
        assert features.shape == (2, 65, 64)
        torch.testing.assert_close(model.embed(pixels), features[:, 1:].mean(1))
        torch.testing.assert_close(model.embed(pixels, pool="cls"), features[:, 0])
        torch.testing.assert_close(model.forward_head(features), features[:, 0])


@pytest.mark.parametrize("shape, message", [
    ((2, 4, 64, 64), "the input has 4 channels; the model takes in_chans=3"),
    ((2, 3, 64, 56), "images must be square, got 64x56"),
    ((2, 3, 60, 60), "image size 60 is not a multiple of the patch size 8"),
    ((2, 3, 128, 128), "model expects 64x64 images, got 128x128"),
    ((3, 64, 64), r"expected images \(B, C, H, W\)"),
])
def test_bad_images_name_expected_and_given(shape, message):
    model = maefast.create_model(DEBUG, in_chans=3)
    with pytest.raises(ValueError, match=message):
        model(torch.randint(0, 255, shape, dtype=torch.uint8))


def test_too_many_channels_for_ca_mae():
    model = maefast.create_model(CA_DEBUG, max_in_chans=3)
    with pytest.raises(ValueError, match="the input has 4 channels; the model takes 1 to max_in_chans=3"):
        model(random_pixels(1, 4, 64))


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_bad_mask_ratio(ratio):
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        maefast.create_model(DEBUG, mask_ratio=ratio)
    model = maefast.create_model(DEBUG, in_chans=6)
    with pytest.raises(ValueError, match=r"mask_ratio must be in \[0, 1\)"):
        model(random_pixels(1, 6, 64), mask_ratio=ratio)


def test_bad_config_values():
    with pytest.raises(ValueError, match="unknown model 'vit_huge'"):
        maefast.create_model("vit_huge")
    with pytest.raises(TypeError, match=r"unknown model option\(s\) \['depht'\]"):
        maefast.create_model(DEBUG, depht=3)
    with pytest.raises(ValueError, match="img_size 60 is not divisible by patch_size 8"):
        maefast.create_model(DEBUG, img_size=60)
    with pytest.raises(ValueError, match=r"fourier_weight must be in \[0, 1\), got 1.0"):
        maefast.create_model(DEBUG, fourier_weight=1.0)


@pytest.mark.parametrize("name, options, parts", [
    (DEBUG, {"in_chans": 3}, ["mse", "fourier"]),
    (CA_DEBUG, {}, ["mse", "fourier"]),
    ("munet_debug_64", {"in_chans": 3}, ["mse", "fourier"]),
    ("wsl_vit_debug_patch8_64", {"in_chans": 3, "num_classes": 4}, []),
])
def test_the_training_forward_returns_its_loss_with_the_loss_parts(name, options, parts):
    """`loss, pred, mask = model(...)` still unpacks; the output also names the loss's terms, and the model keeps
    nothing of the forward (the loss parts used to reach the trainer through a model attribute)."""
    torch.manual_seed(0)
    model = maefast.create_model(name, **options)
    inputs = (random_pixels(2, 3, 64),) + ((torch.tensor([0, 3]),) if parts == [] else ())
    attributes = set(vars(model))
    output = model(*inputs)
    loss, pred, mask = output
    assert isinstance(output, TrainingOutput) and (output.loss, output.pred, output.mask) == (loss, pred, mask)
    assert list(output.parts) == parts and set(vars(model)) == attributes
    if parts:
        weight = model.config.fourier_weight
        torch.testing.assert_close(loss, (1 - weight) * output.parts["mse"] + weight * output.parts["fourier"])
    leaves, spec = pytree.tree_flatten(output)  # how FSDP2 and torch.compile see the output
    rebuilt = pytree.tree_unflatten(leaves, spec)
    assert isinstance(rebuilt, TrainingOutput) and rebuilt.loss is loss and list(rebuilt.parts) == parts
