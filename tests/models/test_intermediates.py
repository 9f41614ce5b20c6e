"""forward_intermediates (timm's API) and embed_blocks against a plain loop over the encoder's blocks."""
import pytest
import torch

import maefast
from maefast.errors import UserInputError
from maefast.models.vit import take_indices
from maefast.ops import all_tokens
from maefast.ops.patches import random_pixels


def encoder(name="vit_debug_patch8_64", **overrides):
    torch.manual_seed(int(torch.randint(0, 10_000, ())))
    model = maefast.create_model(name, depth=4, **overrides).eval()
    for parameter in model.parameters():  # LayerScale starts at 1e-4: widen it so blocks differ visibly
        if parameter.ndim == 1 and parameter.requires_grad:
            parameter.data.normal_(0, 0.5)
    return model


def block_outputs(model, pixels):
    """Every block's tokens (B, 1 + L, D) by running the blocks one by one."""
    mask = all_tokens(pixels.shape[0], model.num_tokens(pixels.shape[1]), pixels.device)
    x, outputs = model.embed_tokens(pixels, mask), []
    for block in model.blocks:
        x = block(x)
        outputs.append(x)
    return outputs


@pytest.mark.parametrize("indices, expected", [(None, [0, 1, 2, 3]), (2, [2, 3]), ([1, -1], [1, 3]),
                                               ([3, 0, 3], [0, 3]), ((-4,), [0])])
def test_take_indices_follow_timm(indices, expected):
    assert take_indices(4, indices) == expected


@pytest.mark.parametrize("indices", [0, 5, [4], [-5], []])
def test_take_indices_refuse_missing_blocks(indices):
    with pytest.raises(UserInputError, match="block|indices"):
        take_indices(4, indices)


def test_forward_intermediates_match_the_blocks_values_and_gradients():
    model = encoder()
    pixels = random_pixels(3, 6, 64)
    reference = block_outputs(model, pixels)
    final, intermediates = model.forward_intermediates(pixels, [1, 3], norm=False, output_fmt="NLC")
    torch.testing.assert_close(final, model.forward_features(pixels))
    for got, index in zip(intermediates, [1, 3]):
        torch.testing.assert_close(got, reference[index][:, 1:])
    grids = model.forward_intermediates(pixels, [2], norm=True, intermediates_only=True)
    normed = model.norm(reference[2])[:, 1:]  # (B, 64, D) -> NCHW: (B, D, 8, 8), row-major patches
    torch.testing.assert_close(grids[0], normed.reshape(3, 8, 8, -1).permute(0, 3, 1, 2))
    (patches, prefix), = model.forward_intermediates(pixels, [0], return_prefix_tokens=True, output_fmt="NLC",
                                                      intermediates_only=True)
    torch.testing.assert_close(prefix, reference[0][:, :1])
    # gradients through an intermediate block reach the earlier blocks and the patch projection only
    loss = patches.square().mean()
    loss.backward()
    assert model.patch_embed.proj.weight.grad.abs().sum() > 0
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.blocks[1:].parameters())


def test_embed_blocks_pool_each_normed_block_and_the_last_is_embed():
    model = encoder()
    pixels = random_pixels(2, 6, 64)
    reference = block_outputs(model, pixels)
    blocks = model.embed_blocks(pixels, None)
    assert blocks.shape == (2, 4, 64)
    for index in range(4):
        torch.testing.assert_close(blocks[:, index], model.norm(reference[index])[:, 1:].mean(1))
    torch.testing.assert_close(blocks[:, -1], model.embed(pixels))
    cls = model.embed_blocks(pixels, [0, -1], pool="cls")
    torch.testing.assert_close(cls[:, 0], model.norm(reference[0])[:, 0])
    torch.testing.assert_close(cls[:, 1], model.embed(pixels, pool="cls"))


def test_channel_agnostic_blocks_per_channel_and_nlc_only():
    model = encoder("ca_vit_debug_patch8_64")
    pixels = random_pixels(2, 3, 64)
    reference = block_outputs(model, pixels)
    per_channel = model.embed_blocks(pixels, [1], per_channel=True)
    expected = model.norm(reference[1])[:, 1:].reshape(2, 3, 64, -1).mean(2).reshape(2, -1)
    torch.testing.assert_close(per_channel[:, 0], expected)
    torch.testing.assert_close(model.embed_blocks(pixels, 1, per_channel=True)[:, 0],
                               model.embed(pixels, per_channel=True))
    with pytest.raises(UserInputError, match="NLC"):
        model.forward_intermediates(pixels, [0])


def test_mae_and_classifier_delegate_to_their_encoder():
    mae = maefast.create_model("mae_vit_debug_patch8_64").eval()
    wsl = maefast.create_model("wsl_vit_debug_patch8_64", num_classes=3).eval()
    pixels = random_pixels(2, 6, 64)
    for model in (mae, wsl):
        torch.testing.assert_close(model.embed_blocks(pixels, [0, 1]), model.encoder.embed_blocks(pixels, [0, 1]))
    with pytest.raises(UserInputError, match="output_fmt"):
        mae.forward_intermediates(pixels, output_fmt="NHWC")
