"""The papers' ViT encoder, for C-channel input (ViT) or any channel count (channel-agnostic, CA-MAE).

Input is raw pixels (B, C, H, W), uint8 / uint16 (or float in [0, 1]): self-standardization, patch
embedding and positions happen in ops.tokenize. Parameter names follow timm's VisionTransformer
(`cls_token`, `pos_embed` with the CLS slot, `patch_embed.proj`, `blocks`, `norm`, `fc_norm`), and so does
`forward_intermediates`, the output of chosen blocks in one forward (what `embed_blocks` pools).
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
POOLS = ("mean", "cls")
OUTPUT_FORMATS = ("NCHW", "NLC")


def take_indices(depth: int, indices: int | list[int] | tuple[int, ...] | None) -> list[int]:
    """The blocks timm's forward_intermediates takes (`feature_take_indices`): None = every block, an int n =
    the last n blocks, a sequence = those 0-based block indices (negative ones count from the end). Returned
    sorted and without repeats: intermediates come out in block order."""
    if indices is None:
        indices = depth
    if isinstance(indices, int):
        if not 0 < indices <= depth:
            raise UserInputError(f"indices={indices}: take the last n blocks with 0 < n <= {depth}")
        return list(range(depth - indices, depth))
    chosen = []
    for index in indices:
        position = depth + index if index < 0 else index
        if not 0 <= position < depth:
            raise UserInputError(f"block {index} does not exist: the encoder has blocks 0..{depth - 1} "
                                 f"(or -{depth}..-1 from the end)")
        chosen.append(position)
    if not chosen:
        raise UserInputError("indices: choose at least one block")
    return sorted(set(chosen))


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

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

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

    def forward_intermediates(self, pixels: torch.Tensor, indices: int | list[int] | None = None,
                              return_prefix_tokens: bool = False, norm: bool = False, stop_early: bool = False,
                              output_fmt: str = "NCHW", intermediates_only: bool = False):
        """timm's forward_intermediates: the tokens after the chosen blocks, from one forward.

        indices: None (every block), n (the last n blocks) or 0-based block indices (negative from the end);
        the intermediates come out in block order. norm: pass each through the final norm (`self.norm`, as
        timm does; an identity for global_pool="avg" models). output_fmt: "NCHW" (B, D, H/p, W/p) patch grids
        or "NLC" (B, L, D) tokens (channel-agnostic encoders: NLC only, L = channels x patches).
        return_prefix_tokens: each intermediate becomes (patch tokens, CLS token (B, 1, D)).
        Returns the list when intermediates_only (the forward stops after the last chosen block), else
        (final features after the norm, as forward_features, the list); stop_early stops there as well.
        """
        if output_fmt not in OUTPUT_FORMATS:
            raise UserInputError(f"output_fmt must be one of {OUTPUT_FORMATS}, got {output_fmt!r}")
        if output_fmt == "NCHW" and self.config.channel_agnostic:
            raise UserInputError("a channel-agnostic encoder's tokens form no single patch grid: use output_fmt='NLC'")
        self.check_pixels(pixels)
        take = take_indices(len(self.blocks), indices)
        mask = all_tokens(pixels.shape[0], self.num_tokens(pixels.shape[1]), pixels.device)
        x = self.embed_tokens(pixels, mask)
        last = take[-1] if stop_early or intermediates_only else len(self.blocks) - 1
        intermediates = []
        for index in range(last + 1):
            x = self.blocks[index](x)
            if index in take:
                intermediates.append(self.norm(x) if norm else x)
        side = self.config.grid_side
        outputs = []
        for tokens in intermediates:
            patches = tokens[:, self.num_prefix_tokens:]
            if output_fmt == "NCHW":
                patches = patches.reshape(len(patches), side, side, -1).permute(0, 3, 1, 2).contiguous()
            outputs.append((patches, tokens[:, :self.num_prefix_tokens]) if return_prefix_tokens else patches)
        return outputs if intermediates_only else (self.norm(x), outputs)

    def embed(self, pixels: torch.Tensor, pool: str = "mean", per_channel: bool = False) -> torch.Tensor:
        """Embeddings (B, D): mean of the patch tokens (default) or the CLS token.

        per_channel (CA-MAE only): the mean of each channel's tokens, concatenated to (B, C * D).
        """
        features = self.forward_features(pixels)
        return self.pool_tokens(features[:, self.num_prefix_tokens:], features[:, 0], pool, per_channel,
                                pixels.shape[1])

    def embed_blocks(self, pixels: torch.Tensor, blocks: int | list[int] | None = None, pool: str = "mean",
                     per_channel: bool = False) -> torch.Tensor:
        """Embeddings of several blocks from one forward: (B, K, D) for the K chosen blocks (in block order;
        `blocks` as forward_intermediates' indices), each block's tokens passed through the final norm as
        timm's forward_intermediates(norm=True) does, then pooled as `embed` pools. The last block's
        embedding is `embed`'s."""
        intermediates = self.forward_intermediates(pixels, blocks, return_prefix_tokens=True, norm=True,
                                                   output_fmt="NLC", intermediates_only=True)
        return torch.stack([self.pool_tokens(patches, prefix[:, 0], pool, per_channel, pixels.shape[1])
                            for patches, prefix in intermediates], dim=1)

    def pool_tokens(self, patches: torch.Tensor, cls: torch.Tensor, pool: str, per_channel: bool,
                    channels: int) -> torch.Tensor:
        """(B, L, D) patch tokens and (B, D) CLS token -> (B, D) (or (B, C * D) per channel), as `embed` pools."""
        if pool not in POOLS:
            raise UserInputError(f"pool must be 'mean' or 'cls', got {pool!r}")
        if pool == "cls":
            if per_channel:
                raise UserInputError("per_channel pooling needs pool='mean'")
            return cls
        if not per_channel:
            return patches.mean(dim=1)
        if not self.config.channel_agnostic:
            raise UserInputError("per_channel pooling needs a channel-agnostic model")
        b, _, d = patches.shape
        return patches.reshape(b, channels, -1, d).mean(dim=2).reshape(b, -1)
