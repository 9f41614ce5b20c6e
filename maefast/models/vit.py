"""The papers' ViT encoder, for C-channel input (ViT) or any channel count (channel-agnostic, CA-MAE).

Input is raw pixels (B, C, H, W), uint8 / uint16 (or float in [0, 1]): self-standardization, patch
embedding and positions happen in ops.tokenize. Parameter names follow timm's VisionTransformer
(`cls_token`, `pos_embed` with the CLS slot, `patch_embed.proj`, `blocks`, `norm`, `fc_norm`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from maefast.errors import UserInputError
from maefast.fields import check_field_types
from maefast.models.common import InputChannels, PatchGrid
from maefast.models.layers import ParallelBlock, layer_norm, sincos_position_embedding
from maefast.ops import all_tokens, tokenize
from maefast.ops.masking import Mask

GLOBAL_POOLS = ("token", "avg")
# size name -> ViTConfig fields: the papers' backbones (timm's sizes at 256 x 256), the sizes of every ViT family
VIT_SIZES: dict[str, dict] = {
    "vit_tiny_patch16_256": dict(patch_size=16, embed_dim=192, depth=12, num_heads=3, drop_path_rate=0.1),
    "vit_small_patch16_256": dict(patch_size=16, embed_dim=384, depth=12, num_heads=6, drop_path_rate=0.1),
    "vit_base_patch16_256": dict(patch_size=16, embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1),
    "vit_base_patch8_256": dict(patch_size=8, embed_dim=768, depth=12, num_heads=12, drop_path_rate=0.1),
    "vit_large_patch16_256": dict(patch_size=16, embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.3),
    "vit_large_patch8_256": dict(patch_size=8, embed_dim=1024, depth=24, num_heads=16, drop_path_rate=0.3),
    # a few-second CPU model for demos, tests and CI
    "vit_debug_patch8_64": dict(img_size=64, patch_size=8, embed_dim=64, depth=2, num_heads=4, drop_path_rate=0.0),
}


@dataclass
class ViTConfig(PatchGrid, InputChannels):
    img_size: int = 256
    patch_size: int = 16
    in_chans: int = 6
    embed_dim: int = 384
    depth: int = 12
    num_heads: int = 6
    mlp_ratio: float = 4.0
    qkv_bias: bool = False
    qk_norm: bool = True
    init_values: float | None = 1e-4
    drop_path_rate: float = 0.1
    global_pool: str = "token"   # timm meaning: "token" -> final norm on tokens, "avg" -> fc_norm after pooling
    channel_agnostic: bool = False
    max_in_chans: int = 11       # channel-agnostic only: the most channels an input may have
    channel_names: list[str] = field(default_factory=list)

    def validate(self) -> None:
        check_field_types(self)
        if self.img_size % self.patch_size:
            raise UserInputError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        if self.global_pool not in GLOBAL_POOLS:
            raise UserInputError(f"global_pool must be one of {GLOBAL_POOLS}, got {self.global_pool!r}")
        if self.in_chans < 1 or self.max_in_chans < 1:
            raise UserInputError(f"channel counts must be positive, got in_chans={self.in_chans}, "
                                 f"max_in_chans={self.max_in_chans}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise UserInputError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")
        if self.channel_names and len(self.channel_names) != self.in_chans:
            raise UserInputError(f"{len(self.channel_names)} channel_names given for in_chans={self.in_chans}")


class VisionTransformer(nn.Module):
    num_prefix_tokens = 1

    def __init__(self, config: ViTConfig):
        super().__init__()
        config.validate()
        self.config = config
        dim, patch = config.embed_dim, config.patch_size
        self.embed_dim = dim
        proj_in = 1 if config.channel_agnostic else config.in_chans
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(proj_in, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        repeats = config.max_in_chans if config.channel_agnostic else 1
        positions = sincos_position_embedding(dim, config.grid_side, repeats)
        cls_position = torch.zeros(1, dim)
        # A fixed, non-trained parameter (not a buffer) so that it travels in state dicts as in timm.
        self.pos_embed = nn.Parameter(torch.cat([cls_position, positions])[None], requires_grad=False)
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]  # linear decay rule
        self.blocks = nn.Sequential(*[
            ParallelBlock(dim, config.num_heads, config.mlp_ratio, config.qkv_bias, config.qk_norm,
                          config.init_values, rate) for rate in rates])
        use_fc_norm = config.global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else layer_norm(dim)
        self.fc_norm = layer_norm(dim) if use_fc_norm else nn.Identity()
        self.head = nn.Identity()
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """MAE initialization: xavier-uniform linears and patch projection, N(0, 0.02) CLS token."""
        weight = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        for module in self.blocks.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # -- input checks ------------------------------------------------------------------------------
    def check_pixels(self, pixels: torch.Tensor) -> None:
        config = self.config
        if pixels.ndim != 4:
            raise UserInputError(f"expected images (B, C, H, W), got shape {tuple(pixels.shape)}")
        channels, height, width = pixels.shape[1:]
        config.check_channels(channels, "the input")
        if height != width:
            raise UserInputError(f"images must be square, got {height}x{width}")
        if height % config.patch_size:
            raise UserInputError(f"image size {height} is not divisible by patch size {config.patch_size}")
        if height != config.img_size:
            raise UserInputError(f"model expects {config.img_size}x{config.img_size} images, got {height}x{width}")

    def num_tokens(self, channels: int) -> int:
        return self.config.num_patches * (channels if self.config.channel_agnostic else 1)

    def token_positions(self, channels: int) -> torch.Tensor:
        """(L, D) positions of the patch tokens for an input of `channels` channels."""
        return self.pos_embed[0, 1:1 + self.num_tokens(channels)]

    # -- forward -----------------------------------------------------------------------------------
    def embed_tokens(self, pixels: torch.Tensor, mask: Mask) -> torch.Tensor:
        """Visible tokens with the CLS token in front: (B, 1 + K, D)."""
        tokens = tokenize(pixels, mask.keep_idx, self.patch_embed.proj.weight, self.patch_embed.proj.bias,
                          self.token_positions(pixels.shape[1]), channel_agnostic=self.config.channel_agnostic)
        cls = (self.cls_token + self.pos_embed[:, :1]).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def forward_encoder(self, pixels: torch.Tensor, mask: Mask) -> torch.Tensor:
        return self.norm(self.blocks(self.embed_tokens(pixels, mask)))

    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: (B, 1 + L, D), as timm's forward_features."""
        self.check_pixels(pixels)
        mask = all_tokens(pixels.shape[0], self.num_tokens(pixels.shape[1]), pixels.device)
        return self.forward_encoder(pixels, mask)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's forward_head: pool (CLS token or mean of patch tokens), fc_norm, head."""
        if self.config.global_pool == "avg":
            pooled = features[:, self.num_prefix_tokens:].mean(dim=1)
        else:
            pooled = features[:, 0]
        pooled = self.fc_norm(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(pixels))

    def embed(self, pixels: torch.Tensor, pool: str = "mean", per_channel: bool = False) -> torch.Tensor:
        """Embeddings (B, D): mean of the patch tokens (default) or the CLS token.

        per_channel (CA-MAE only): the mean of each channel's tokens, concatenated to (B, C * D).
        """
        features = self.forward_features(pixels)
        if pool == "cls":
            if per_channel:
                raise UserInputError("per_channel pooling needs pool='mean'")
            return features[:, 0]
        if pool != "mean":
            raise UserInputError(f"pool must be 'mean' or 'cls', got {pool!r}")
        patches = features[:, self.num_prefix_tokens:]
        if not per_channel:
            return patches.mean(dim=1)
        if not self.config.channel_agnostic:
            raise UserInputError("per_channel pooling needs a channel-agnostic model")
        b, _, d = patches.shape
        return patches.reshape(b, pixels.shape[1], -1, d).mean(dim=2).reshape(b, -1)
