"""Masked autoencoders: the MAE (C-channel ViT) and the channel-agnostic CA-MAE.

`loss, pred, mask = model(pixels)`: pixels (B, C, H, W) integer or float; pred (B, L, P) predictions of
every patch in the layout of ops.patches; mask (B, L), 1 where masked. The loss only looks at masked
patches; the output (a models.common.TrainingOutput) also names its terms: `model(pixels).parts` is
{"mse": ..., "fourier": ...}. Module names follow the public reference (`encoder`, `encoder_decoder_proj`, `decoder`,
`decoder_pred`), so its checkpoints map onto these modules key for key.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from maefast.errors import UserInputError
from maefast.fields import check_field_types
from maefast.models.common import TrainingOutput
from maefast.models.layers import Block, CrossAttention, Mlp, layer_norm, sincos_position_embedding, xavier_linear_
from maefast.models.vit import VisionTransformer, ViTConfig
from maefast.ops import mae_loss, masked_targets, random_masking, unshuffle
from maefast.ops.mae_loss import DEFAULT_FOURIER_WEIGHT, check_fourier_weight
from maefast.ops.masking import check_mask_ratio
from maefast.ops.patches import gather_tokens


@dataclass
class MAEConfig:
    encoder: ViTConfig = field(default_factory=ViTConfig)
    decoder_embed_dim: int = 512
    decoder_depth: int = 8
    decoder_num_heads: int = 16
    decoder_mlp_ratio: float = 4.0
    cross_attention_heads: int = 8  # CA-MAE decoder only
    decoder_channels: int | None = None  # CA-MAE: per-channel decoders (None: the encoder's max_in_chans)
    decoder_norm_eps: float = 1e-6  # the decoder's LayerNorms (the public OpenPhenom release code uses 1e-5)
    mask_ratio: float = 0.75
    norm_pix_loss: bool = False
    fourier_weight: float = DEFAULT_FOURIER_WEIGHT

    def validate(self) -> None:
        check_field_types(self)
        self.encoder.validate()
        check_mask_ratio(self.mask_ratio)
        check_fourier_weight(self.fourier_weight)
        if self.decoder_embed_dim % self.decoder_num_heads:
            raise UserInputError(f"decoder_embed_dim {self.decoder_embed_dim} is not divisible by "
                                 f"decoder_num_heads {self.decoder_num_heads}")
        if self.decoder_channels is not None and not 1 <= self.decoder_channels <= self.encoder.max_in_chans:
            raise UserInputError(f"decoder_channels must be in [1, max_in_chans={self.encoder.max_in_chans}], "
                             f"got {self.decoder_channels}")

    @property
    def num_decoder_channels(self) -> int:
        """CA-MAE: how many channels the decoder reconstructs (one decoder stack each)."""
        return self.encoder.max_in_chans if self.decoder_channels is None else self.decoder_channels


class MAEDecoder(nn.Module):
    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.blocks = nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = layer_norm(dim)

    def forward(self, tokens: torch.Tensor, channels: int) -> torch.Tensor:
        return self.norm(self.blocks(tokens))


class CAMAEDecoder(nn.Module):
    """The reference CA-MAE decoder: one cross-attention over all tokens, then a decoder per channel.

    Each channel's tokens (queries) attend to the tokens of every channel (context); the shared
    cross-attention and MLP run on all channels at once, the per-channel decoder stacks one by one.
    A learned channel token marks which channel a position belongs to.
    """

    def __init__(self, dim: int, depth: int, num_heads: int, mlp_ratio: float, max_channels: int,
                 cross_attention_heads: int):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.modality_tokens = nn.ParameterList([nn.Parameter(torch.zeros(1, 1, dim)) for _ in range(max_channels)])
        self.cross_attention = CrossAttention(dim, cross_attention_heads)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.decoders = nn.ModuleList([
            nn.Sequential(*[Block(dim, num_heads, mlp_ratio) for _ in range(depth)]) for _ in range(max_channels)])
        self.context_norm = layer_norm(dim)
        self.query_norm = layer_norm(dim)
        self.out_norm = layer_norm(dim)

    def forward(self, tokens: torch.Tensor, channels: int) -> torch.Tensor:
        cls, patches = tokens[:, :1], tokens[:, 1:]
        b, length, d = patches.shape
        per_channel = length // channels
        channel_marks = torch.cat([self.modality_tokens[c] for c in range(channels)], dim=1)
        patches = (patches.view(b, channels, per_channel, d) + channel_marks.view(1, channels, 1, d)).view(b, length, d)
        mixed = self.cross_attention(self.query_norm(patches), self.context_norm(patches))
        mixed = mixed + self.mlp(self.out_norm(mixed))
        outputs = [self.decoders[c](chunk) for c, chunk in enumerate(mixed.split(per_channel, dim=1))]
        return torch.cat([cls] + outputs, dim=1)


class MaskedAutoencoder(nn.Module):
    def __init__(self, config: MAEConfig):
        super().__init__()
        config.validate()
        self.config = config
        enc = config.encoder
        self.channel_agnostic = enc.channel_agnostic
        self.encoder = VisionTransformer(enc)
        dim = config.decoder_embed_dim
        self.encoder_decoder_proj = nn.Linear(enc.embed_dim, dim)
        if self.channel_agnostic:
            self.decoder = CAMAEDecoder(dim, config.decoder_depth, config.decoder_num_heads, config.decoder_mlp_ratio,
                                        config.num_decoder_channels, config.cross_attention_heads)
        else:
            self.decoder = MAEDecoder(dim, config.decoder_depth, config.decoder_num_heads, config.decoder_mlp_ratio)
        for module in self.decoder.modules():
            if isinstance(module, nn.LayerNorm):
                module.eps = config.decoder_norm_eps
        repeats = config.num_decoder_channels if self.channel_agnostic else 1
        self.register_buffer("decoder_pos_embed", sincos_position_embedding(dim, enc.grid_side, repeats),
                             persistent=False)
        patch_values = enc.patch_size ** 2 * (1 if self.channel_agnostic else enc.in_chans)
        self.decoder_pred = nn.Linear(dim, patch_values)
        self.reset_decoder_parameters()

    def reset_decoder_parameters(self) -> None:
        nn.init.normal_(self.decoder.mask_token, std=0.02)
        for module in [self.encoder_decoder_proj, self.decoder, self.decoder_pred]:
            for sub in module.modules():
                xavier_linear_(sub)

    @property
    def patch_size(self) -> int:
        return self.config.encoder.patch_size

    def num_tokens(self, channels: int) -> int:
        return self.encoder.num_tokens(channels)

    def target_channels(self, channels: int) -> int:
        """Channels inside one predicted patch vector."""
        return 1 if self.channel_agnostic else channels

    def forward(self, pixels: torch.Tensor, mask_ratio: float | None = None,
                noise: torch.Tensor | None = None) -> TrainingOutput:
        """Returns (loss, pred, mask) with the loss's parts (mse, fourier); see the module docstring. `noise`
        (B, L) fixes the mask."""
        self.encoder.check_pixels(pixels, fixed_size=True)  # the decoder's positions are those of img_size
        ratio = self.config.mask_ratio if mask_ratio is None else mask_ratio
        batch, channels = pixels.shape[:2]
        if self.channel_agnostic and channels > self.config.num_decoder_channels:
            raise ValueError(f"this CA-MAE's decoder reconstructs at most {self.config.num_decoder_channels} "
                             f"channels, got {channels} (its encoder embeds up to {self.config.encoder.max_in_chans})")
        num_tokens = self.encoder.num_tokens(channels)
        mask = random_masking(batch, num_tokens, ratio, device=pixels.device, noise=noise)
        latent = self.encoder.forward_encoder(pixels, mask)
        pred = self.forward_decoder(latent, mask.keep_idx, channels)
        targets = masked_targets(pixels, mask.masked_idx, self.patch_size, channel_agnostic=self.channel_agnostic)
        losses = mae_loss(gather_tokens(pred, mask.masked_idx), targets, channels=self.target_channels(channels),
                          norm_pix_loss=self.config.norm_pix_loss, fourier_weight=self.config.fourier_weight)
        return TrainingOutput(losses.loss, pred, mask.mask, {"mse": losses.mse, "fourier": losses.fourier})

    def forward_decoder(self, latent: torch.Tensor, keep_idx: torch.Tensor, channels: int) -> torch.Tensor:
        projected = self.encoder_decoder_proj(latent)
        positions = self.decoder_pos_embed[: self.encoder.num_tokens(channels)]
        tokens = unshuffle(projected[:, 1:], keep_idx, self.decoder.mask_token.view(-1), positions)
        tokens = torch.cat([projected[:, :1], tokens], dim=1)
        return self.decoder_pred(self.decoder(tokens, channels))[:, 1:]

    # The encoder's API, for embedding with an MAE directly (inference: maefast.models.common.inference).
    def forward_features(self, pixels):
        return self.encoder.forward_features(pixels)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.encoder.set_grad_checkpointing(enable)

    def forward_head(self, features, pre_logits: bool = False):
        return self.encoder.forward_head(features, pre_logits)

    def embed(self, pixels, pool: str = "mean", per_channel: bool = False):
        return self.encoder.embed(pixels, pool, per_channel)

    @property
    def num_blocks(self) -> int:
        return self.encoder.num_blocks

    def forward_intermediates(self, pixels, *args, **options):
        return self.encoder.forward_intermediates(pixels, *args, **options)

    def embed_blocks(self, pixels, blocks=None, pool: str = "mean", per_channel: bool = False):
        return self.encoder.embed_blocks(pixels, blocks, pool, per_channel)
