"""FLOP accounting: the one place the code base counts model FLOPs (docs/architecture.md, "Performance accounting").

Counts matrix-multiply FLOPs (2 per multiply-add) of linear layers and attention; norms, activations
and the loss are left out, as is usual for MFU. The encoder counts visible tokens only; a training step
is 3 x the forward pass (backward = 2 x forward).
"""
from __future__ import annotations

from maefast.models.classifier import ClassifierConfig
from maefast.models.mae import MAEConfig
from maefast.models.munet import MUNetConfig
from maefast.models.vit import ViTConfig


def linear_flops(tokens: int, fan_in: int, fan_out: int) -> int:
    return 2 * tokens * fan_in * fan_out


def attention_flops(queries: int, keys: int, dim: int) -> int:
    return 2 * 2 * queries * keys * dim  # scores and weighted sum


def parallel_block_flops(tokens: int, dim: int, mlp_ratio: float) -> int:
    hidden = int(dim * mlp_ratio)
    return (linear_flops(tokens, dim, hidden + 3 * dim) + attention_flops(tokens, tokens, dim)
            + linear_flops(tokens, dim, dim) + linear_flops(tokens, hidden, dim))


def decoder_block_flops(tokens: int, dim: int, mlp_ratio: float, context: int | None = None) -> int:
    hidden = int(dim * mlp_ratio)
    context = tokens if context is None else context
    return (linear_flops(tokens, dim, 3 * dim) + attention_flops(tokens, context, dim)
            + linear_flops(tokens, dim, dim) + 2 * linear_flops(tokens, dim, hidden))


def patch_tokens(config: ViTConfig, channels: int) -> int:
    return config.num_patches * (channels if config.channel_agnostic else 1)


def encoder_forward_flops(config: ViTConfig, channels: int, visible_tokens: int | None = None) -> int:
    """One image through the encoder: patch embedding of the visible patches, then the blocks (+CLS)."""
    visible = patch_tokens(config, channels) if visible_tokens is None else visible_tokens
    patch_values = config.patch_size ** 2 * (1 if config.channel_agnostic else channels)
    embed = linear_flops(visible, patch_values, config.embed_dim)
    return embed + config.depth * parallel_block_flops(visible + 1, config.embed_dim, config.mlp_ratio)


def mae_forward_flops(config: MAEConfig, channels: int) -> int:
    enc = config.encoder
    tokens = patch_tokens(enc, channels)
    visible = int(tokens * (1.0 - config.mask_ratio))
    dim = config.decoder_embed_dim
    flops = encoder_forward_flops(enc, channels, visible)
    flops += linear_flops(visible + 1, enc.embed_dim, dim)
    if enc.channel_agnostic:
        # shared cross-attention + MLP over all tokens, then a decoder stack per channel
        hidden = int(dim * config.decoder_mlp_ratio)
        flops += (linear_flops(tokens, dim, dim) + linear_flops(tokens, dim, 2 * dim)
                  + attention_flops(tokens, tokens, dim) + linear_flops(tokens, dim, dim)
                  + 2 * linear_flops(tokens, dim, hidden))
        per_channel = tokens // channels
        flops += channels * config.decoder_depth * decoder_block_flops(per_channel, dim, config.decoder_mlp_ratio)
        patch_values = enc.patch_size ** 2
    else:
        flops += config.decoder_depth * decoder_block_flops(tokens + 1, dim, config.decoder_mlp_ratio)
        patch_values = enc.patch_size ** 2 * channels
    return flops + linear_flops(tokens + 1, dim, patch_values)


def mae_training_flops(config: MAEConfig, channels: int) -> int:
    """FLOPs of one training step per image (forward + backward)."""
    return 3 * mae_forward_flops(config, channels)


def embedding_flops(config: ViTConfig, channels: int) -> int:
    """FLOPs of embedding one crop (all tokens through the encoder)."""
    return encoder_forward_flops(config, channels)


# -- baselines: masked U-Net and weakly supervised classifier -----------------------------------------

def conv_flops(out_pixels: int, kernel: int, fan_in: int, fan_out: int) -> int:
    """A (transposed) convolution as a GEMM: 2 * output pixels * k * k * C_in * C_out.

    For a transposed conv with stride = kernel, pass the *input* pixels: each one is scattered once.
    """
    return 2 * out_pixels * kernel * kernel * fan_in * fan_out


def munet_forward_flops(config: MUNetConfig, channels: int) -> int:
    """One image through the MU-Net: the whole image, masked or not (convolutions cannot skip patches)."""
    widths, side = config.widths, config.img_size
    flops = conv_flops(side * side, 3, channels + 1, widths[0])  # stem: image + mask channel
    for stage, depth in enumerate(config.depths):
        pixels = (side >> stage) ** 2
        coarse = (side >> (stage + 1)) ** 2
        blocks = 2 * depth * conv_flops(pixels, 3, widths[stage], widths[stage])
        down = conv_flops(coarse, 2, widths[stage], widths[stage + 1])
        up = conv_flops(coarse, 2, widths[stage + 1], widths[stage])
        fuse = conv_flops(pixels, 1, 2 * widths[stage], widths[stage])
        flops += 2 * blocks + down + up + fuse  # encoder and decoder stages have the same blocks
    bottom = (side >> len(config.depths)) ** 2
    flops += 2 * config.bottleneck_depth * conv_flops(bottom, 3, widths[-1], widths[-1])
    return flops + conv_flops(side * side, 1, widths[0], channels)  # head


def classifier_forward_flops(config: ClassifierConfig, channels: int) -> int:
    """One image through the classifier: every token through the encoder, then the linear head."""
    return encoder_forward_flops(config.encoder_config(), channels) + linear_flops(1, config.embed_dim,
                                                                                   config.num_classes)
