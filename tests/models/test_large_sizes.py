"""The ViT-H and ViT-G/8 registry entries (issue 23): every family has its variants, with the literature's dimensions,
and their parameter and FLOP counts equal counts made by hand from those dimensions (built on the meta device:
no memory; the same code path trains at small width in the other model tests)."""
from __future__ import annotations

import pytest
import torch

from maefast.models import create_model
from maefast.models.families import CA_ENCODER, CA_MAE, CLASSIFIER, ENCODER, MAE, family_of
from maefast.models.flops import embedding_flops

SIZES = {  # size: (patch, width, depth, heads, MLP width)
    "vit_huge_patch16_256": (16, 1280, 32, 16, 5120),
    "vit_gigantic_patch8_256": (8, 1664, 48, 16, 8192),
}
CHANNELS = 6
DECODER = (512, 8, 16)  # MAEConfig's default decoder: width, depth, heads


def meta(name: str, **overrides):
    with torch.device("meta"):
        return create_model(name, **{**family_of(name).build_options, **overrides})


def count(model) -> int:
    return sum(p.numel() for p in model.parameters())


def encoder_parameters(patch, width, depth, heads, mlp, channels=CHANNELS, channel_agnostic=False, max_chans=11):
    """By hand: patch projection, CLS token, positions (a fixed parameter, with the CLS slot), per block (norm,
    in-projection without bias, MLP bias, q and k norms per head, two out-projections with bias, LayerScale),
    final norm."""
    tokens = (256 // patch) ** 2 * (max_chans if channel_agnostic else 1)
    projection = (1 if channel_agnostic else channels) * patch * patch * width + width
    block = (2 * width + width * (mlp + 3 * width) + mlp + 2 * 2 * (width // heads) + width * width + width
             + mlp * width + width + width)
    return projection + width + (tokens + 1) * width + depth * block + 2 * width


def decoder_parameters(patch_values, encoder_width, stacks=1, channel_tokens=0, cross=False):
    """By hand: the projection from the encoder, the mask token, the blocks (norm, qkv with bias, out-projection,
    norm, MLP), the CA-MAE's cross-attention or the MAE's final norm, the pixel head."""
    dim, depth, _ = DECODER
    block = (2 * dim + dim * 3 * dim + 3 * dim + dim * dim + dim + 2 * dim + dim * 4 * dim + 4 * dim
             + 4 * dim * dim + dim)
    total = encoder_width * dim + dim + dim + stacks * depth * block + dim * patch_values + patch_values
    if cross:  # q, kv (no bias), out-projection; an MLP; three norms; one channel token per channel
        total += dim * dim + dim * 2 * dim + dim * dim + dim + dim * 4 * dim + 4 * dim + 4 * dim * dim + dim
        total += 3 * 2 * dim + channel_tokens * dim
    else:
        total += 2 * dim  # the decoder's final norm
    return total


@pytest.mark.parametrize("size", sorted(SIZES))
def test_every_family_has_the_size_with_its_dimensions_and_parameter_count(size):
    patch, width, depth, heads, mlp = SIZES[size]
    for family in (ENCODER, CA_ENCODER, MAE, CA_MAE, CLASSIFIER):
        name = family.variant(size)
        assert family_of(name) is family
        model = meta(name)
        vit = family.embedder(model) if family in (MAE, CA_MAE) else getattr(model, "encoder", model)
        config = vit.config
        assert (config.patch_size, config.embed_dim, config.depth, config.num_heads) == (patch, width, depth, heads)
        assert len(vit.blocks) == depth and vit.blocks[0].in_split[0] == mlp  # the MLP's width
        assert config.img_size == 256
    assert count(meta(ENCODER.variant(size))) == encoder_parameters(patch, width, depth, heads, mlp)
    assert count(meta(CA_ENCODER.variant(size))) == encoder_parameters(patch, width, depth, heads, mlp,
                                                                       channel_agnostic=True)
    mae = encoder_parameters(patch, width, depth, heads, mlp) + decoder_parameters(
        patch * patch * CHANNELS, width)
    assert count(meta(MAE.variant(size))) == mae
    camae = encoder_parameters(patch, width, depth, heads, mlp, channel_agnostic=True) + decoder_parameters(
        patch * patch, width, stacks=11, channel_tokens=11, cross=True)
    assert count(meta(CA_MAE.variant(size))) == camae


def test_vit_g8_is_the_size_of_phenom_2():
    """About 1.9 billion parameters (Kenyon-Dean et al. 2025): 1.84 billion in the encoder."""
    assert count(meta("vit_gigantic_patch8_256")) == pytest.approx(1.8434e9, rel=1e-4)
    assert count(meta("mae_vit_gigantic_patch8_256")) == pytest.approx(1.8697e9, rel=1e-4)
    assert count(meta("vit_huge_patch16_256")) == pytest.approx(0.6315e9, rel=1e-3)


@pytest.mark.parametrize("size", sorted(SIZES))
def test_flop_counts_equal_a_count_by_hand(size):
    patch, width, depth, heads, mlp = SIZES[size]
    grid = (256 // patch) ** 2

    def block(tokens):  # the fused in-projection, scores and weighted sum, the two out-projections
        return 2 * tokens * width * (mlp + 3 * width) + 2 * 2 * tokens * tokens * width + 2 * tokens * width * width \
            + 2 * tokens * mlp * width

    # embedding a crop: every token
    embed = 2 * grid * (CHANNELS * patch * patch) * width + depth * block(grid + 1)
    assert embedding_flops(meta(size).config, CHANNELS) == embed
    # a training step of the MAE: 3 x (encoder on the visible quarter, projection, decoder on every token, head)
    visible = grid // 4
    dim, decoder_depth, _ = DECODER
    tokens = grid + 1
    decoder_block = (2 * tokens * dim * 3 * dim + 2 * 2 * tokens * tokens * dim + 2 * tokens * dim * dim
                     + 2 * 2 * tokens * dim * 4 * dim)
    forward = (2 * visible * CHANNELS * patch * patch * width + depth * block(visible + 1)
               + 2 * (visible + 1) * width * dim + decoder_depth * decoder_block + 2 * tokens * dim * patch * patch
               * CHANNELS)
    mae = meta(MAE.variant(size))
    assert MAE.training_flops(mae, CHANNELS) == 3 * forward


def test_models_command_filters_and_prints_parameters_and_flops(capsys):
    """`maefast models '*gigantic*' --params --flops`: only the ViT-G/8 entries, each with its parameter count and
    the FLOPs of one crop (a training step for the MAE, an embedding for the encoder) as the library counts them."""
    from maefast.cli import main
    from maefast.cli.models import crop_flops
    assert main(["models", "*gigantic*", "--params", "--flops"]) == 0
    lines = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()}
    assert lines and all("gigantic" in name for name in lines)
    for name, kind in (("vit_gigantic_patch8_256", "embed"), ("mae_vit_gigantic_patch8_256", "train")):
        model = meta(name)
        assert f"{count(model) / 1e6:9.2f} M" in lines[name]
        assert f"{crop_flops(model) / 1e9:10.1f} GFLOP/crop ({kind})" in lines[name]
    assert crop_flops(meta("vit_gigantic_patch8_256")) == embedding_flops(meta("vit_gigantic_patch8_256").config,
                                                                          CHANNELS)
