"""Masked U-Net (MU-Net): the convolutional masked autoencoder of Kraus et al. 2023 (arXiv 2309.16064).

`loss, pred, mask = model(pixels)`, as the MAE: pixels (B, C, H, W) integer or float in [0, 1]; the
image is self-standardized, a random fraction of its patches (patch_size x patch_size, drawn by
ops.random_masking) is zeroed, the mask is appended as one more input channel, and a U-Net reconstructs
the whole image. pred (B, L, P) is the reconstruction in the MAE's patch layout (ops.patches.patchify,
ViT order); mask (B, L) is 1 where masked. The loss (ops.mae_loss: MSE mixed with the per-patch Fourier
term) only looks at the masked patches, so copying visible pixels through the skips earns nothing.

`model.embed(pixels)` -> (B, D): the global average of the bottleneck features of the unmasked image.

Layout: stem conv -> encoder stages (residual conv blocks, then a stride-2 conv halving the grid) ->
bottleneck blocks -> decoder stages (2x transposed conv, concatenation with the encoder stage's output,
1x1 fusion conv, residual blocks) -> GroupNorm + GELU + 1x1 conv to C channels.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from maefast.errors import UserInputError
from maefast.fields import check_field_types
from maefast.models.common import (
    InputChannels,
    PatchGrid,
    TrainingOutput,
    field_names,
    inference,
    reject_unknown_options,
)
from maefast.ops import mae_loss, masked_targets, patchify, random_masking, self_standardize, unpatchify
from maefast.ops.mae_loss import DEFAULT_FOURIER_WEIGHT, check_fourier_weight
from maefast.ops.masking import check_mask_ratio
from maefast.ops.patches import gather_tokens


@dataclass
class MUNetConfig(PatchGrid, InputChannels):
    img_size: int = 256
    in_chans: int = 6
    patch_size: int = 16                 # masking granularity, as the MAE's patches
    widths: list[int] = field(default_factory=lambda: [64, 128, 256, 512])  # stage widths; the last is the bottleneck
    depths: list[int] = field(default_factory=lambda: [2, 2, 2])            # residual blocks per encoder/decoder stage
    bottleneck_depth: int = 2
    norm_groups: int = 32                # GroupNorm groups; every width must be divisible by it
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    fourier_weight: float = DEFAULT_FOURIER_WEIGHT
    channel_names: list[str] = field(default_factory=list)

    def validate(self) -> None:
        check_field_types(self)
        if len(self.widths) < 2:
            raise UserInputError(f"widths needs at least 2 entries (one stage and the bottleneck), got {self.widths}")
        if len(self.depths) != len(self.widths) - 1:
            raise UserInputError(f"depths needs one entry per stage before the bottleneck ({len(self.widths) - 1} "
                                 f"for widths {self.widths}), got {self.depths}")
        if any(d < 1 for d in self.depths) or self.bottleneck_depth < 1:
            raise UserInputError(f"depths and bottleneck_depth must be >= 1, got {self.depths}, "
                                 f"{self.bottleneck_depth}")
        bad = [w for w in self.widths if w < 1 or w % self.norm_groups]
        if bad:
            raise UserInputError(f"widths {bad} are not positive multiples of norm_groups {self.norm_groups}")
        if self.in_chans < 1:
            raise UserInputError(f"in_chans must be positive, got {self.in_chans}")
        if self.img_size % self.patch_size:
            raise UserInputError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.img_size % self.downsampling:
            raise UserInputError(f"img_size {self.img_size} is not divisible by {self.downsampling}, the U-Net's "
                                 f"total downsampling for {len(self.widths)} widths")
        if self.channel_names and len(self.channel_names) != self.in_chans:
            raise UserInputError(f"{len(self.channel_names)} channel_names given for in_chans={self.in_chans}")
        check_mask_ratio(self.mask_ratio)
        check_fourier_weight(self.fourier_weight)

    @property
    def downsampling(self) -> int:
        return 2 ** (len(self.widths) - 1)


class ResidualConvBlock(nn.Module):
    """x + conv3x3(gelu(norm(conv3x3(gelu(norm(x)))))), pre-activation as in ResNet v2."""

    def __init__(self, width: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, width)
        self.conv1 = nn.Conv2d(width, width, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        y = self.conv1(F.gelu(self.norm1(x)))
        return x + self.conv2(F.gelu(self.norm2(y)))


def conv_stack(width: int, depth: int, groups: int) -> nn.Sequential:
    return nn.Sequential(*[ResidualConvBlock(width, groups) for _ in range(depth)])


class EncoderStage(nn.Module):
    """Blocks at full resolution (their output is the skip), then a stride-2 conv to the next width."""

    def __init__(self, width: int, next_width: int, depth: int, groups: int):
        super().__init__()
        self.blocks = conv_stack(width, depth, groups)
        self.down = nn.Conv2d(width, next_width, kernel_size=2, stride=2)

    def forward(self, x):
        skip = self.blocks(x)
        return self.down(skip), skip


class DecoderStage(nn.Module):
    """2x transposed conv, concatenation with the skip, 1x1 fusion to the stage width, blocks."""

    def __init__(self, width: int, coarser_width: int, depth: int, groups: int):
        super().__init__()
        self.up = nn.ConvTranspose2d(coarser_width, width, kernel_size=2, stride=2)
        self.fuse = nn.Conv2d(2 * width, width, kernel_size=1)
        self.blocks = conv_stack(width, depth, groups)

    def forward(self, x, skip):
        return self.blocks(self.fuse(torch.cat([self.up(x), skip], dim=1)))


class MaskedUNet(nn.Module):
    def __init__(self, config: MUNetConfig):
        super().__init__()
        config.validate()
        self.config = config
        widths, groups = config.widths, config.norm_groups
        self.stem = nn.Conv2d(config.in_chans + 1, widths[0], 3, padding=1)  # + 1: the mask channel
        self.encoder = nn.ModuleList([EncoderStage(widths[i], widths[i + 1], depth, groups)
                                      for i, depth in enumerate(config.depths)])
        self.bottleneck = conv_stack(widths[-1], config.bottleneck_depth, groups)
        self.bottleneck_norm = nn.GroupNorm(groups, widths[-1])
        self.decoder = nn.ModuleList([DecoderStage(widths[i], widths[i + 1], depth, groups)
                                      for i, depth in reversed(list(enumerate(config.depths)))])
        self.head_norm = nn.GroupNorm(groups, widths[0])
        self.head = nn.Conv2d(widths[0], config.in_chans, 1)

    @property
    def encoder_channels(self) -> list[int]:
        return list(self.config.widths)

    @property
    def embed_dim(self) -> int:
        return self.config.widths[-1]

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    def num_tokens(self, channels: int) -> int:
        """Maskable patches per image (the MAE's token count, for throughput accounting)."""
        return self.config.num_patches

    # -- input checks ------------------------------------------------------------------------------
    def check_pixels(self, pixels: torch.Tensor) -> None:
        config = self.config
        if pixels.ndim != 4:
            raise UserInputError(f"expected images (B, C, H, W), got shape {tuple(pixels.shape)}")
        channels, height, width = pixels.shape[1:]
        config.check_channels(channels, "the input")
        if height != width:
            raise UserInputError(f"images must be square, got {height}x{width}")
        if height != config.img_size:
            raise UserInputError(f"model expects {config.img_size}x{config.img_size} images, got {height}x{width}")

    # -- forward -----------------------------------------------------------------------------------
    def encode(self, inputs: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C + 1, H, W) standardized image + mask channel -> (bottleneck (B, D, h, w), skips)."""
        x = self.stem(inputs)
        skips = []
        for stage in self.encoder:
            x, skip = stage(x)
            skips.append(skip)
        return self.bottleneck_norm(self.bottleneck(x)), skips

    def decode(self, bottleneck: torch.Tensor, skips: list[torch.Tensor]) -> torch.Tensor:
        """-> reconstruction (B, C, H, W) of the standardized image."""
        x = bottleneck
        for stage, skip in zip(self.decoder, reversed(skips)):
            x = stage(x, skip)
        return self.head(F.gelu(self.head_norm(x)))

    def pixel_mask(self, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) token mask -> (B, 1, H, W), 1 on the pixels of masked patches."""
        p, grid = self.config.patch_size, (self.config.grid_side, self.config.grid_side)
        values = mask.unsqueeze(-1).expand(-1, -1, p * p)
        return unpatchify(values, p, 1, grid, channel_agnostic=False)

    def forward(self, pixels: torch.Tensor, mask_ratio: float | None = None,
                noise: torch.Tensor | None = None) -> TrainingOutput:
        """Returns (loss, pred, mask) with the loss's parts (mse, fourier); see the module docstring. `noise`
        (B, L) fixes the mask."""
        self.check_pixels(pixels)
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        batch, channels = pixels.shape[:2]
        mask = random_masking(batch, self.config.num_patches, ratio, device=pixels.device, noise=noise)
        hidden = self.pixel_mask(mask.mask)
        standardized = self_standardize(pixels)
        reconstruction = self.decode(*self.encode(torch.cat([standardized * (1.0 - hidden), hidden], dim=1)))
        pred = patchify(reconstruction, self.patch_size, channel_agnostic=False)
        targets = masked_targets(pixels, mask.masked_idx, self.patch_size, channel_agnostic=False)
        losses = mae_loss(gather_tokens(pred, mask.masked_idx), targets, channels=channels,
                          norm_pix_loss=self.config.norm_pix_loss, fourier_weight=self.config.fourier_weight)
        return TrainingOutput(losses.loss, pred, mask.mask, {"mse": losses.mse, "fourier": losses.fourier})

    @inference
    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Bottleneck features of the unmasked image: (B, D, H / 2**S, W / 2**S)."""
        self.check_pixels(pixels)
        standardized = self_standardize(pixels)
        nothing_hidden = torch.zeros_like(standardized[:, :1])
        return self.encode(torch.cat([standardized, nothing_hidden], dim=1))[0]

    @inference
    def embed(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, D) global average of the bottleneck features; the decoder is not run."""
        return self.forward_features(pixels).mean(dim=(2, 3))


# name -> config fields
MUNET_SIZES: dict[str, dict] = {
    "munet_small_256": dict(widths=[64, 128, 256, 512], depths=[2, 2, 2], bottleneck_depth=2),
    "munet_base_256": dict(widths=[96, 192, 384, 768], depths=[2, 2, 3], bottleneck_depth=4),
    # a CPU model for tests and demos: a training step in a fraction of a second
    "munet_debug_64": dict(img_size=64, patch_size=8, widths=[16, 32, 64], depths=[1, 1], bottleneck_depth=1,
                           norm_groups=8),
}


def munet_factory(fields: dict):
    known = field_names(MUNetConfig)

    def build(**overrides):
        reject_unknown_options(overrides, MU_Net=known)
        return MaskedUNet(MUNetConfig(**{**fields, **overrides}))
    return build
