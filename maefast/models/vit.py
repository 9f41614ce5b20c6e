"""The papers' ViT encoder, for C-channel input (ViT) or any channel count (channel-agnostic, CA-MAE).

Input is raw pixels (B, C, H, W), uint8 / uint16 (or float in [0, 1]): self-standardization, patch
embedding and positions happen in ops.tokenize. Parameter names follow timm's VisionTransformer
(`cls_token`, `pos_embed` with the CLS slot, `patch_embed.proj`, `blocks`, `norm`, `fc_norm`, `head`), with
the papers' parallel blocks (timm's ParallelScalingBlock) or timm's standard Block (`block="standard"`).

As in timm: `model(pixels)` is the head's output (the pooled feature when num_classes=0), with gradients;
`forward_features` (all tokens after the final norm) and `embed` (the pooled feature) are inference entry
points (maefast.models.common.inference: no autograd, eval semantics whatever the module's mode);
`forward_tokens` is forward_features with gradients. Crops may be any square multiple of the patch size: at
another grid than the config's, sin-cos positions are recomputed for it, learned ones resized bicubically.
`forward_intermediates` gives the output of chosen blocks from one forward, with gradients as in timm (what
`embed_blocks` pools, as inference).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from maefast.errors import UserInputError
from maefast.fields import check_field_types
from maefast.models.common import InputChannels, PatchGrid, inference
from maefast.models.layers import Block, ParallelBlock, layer_norm, sincos_position_embedding, xavier_linear_
from maefast.ops import all_tokens, tokenize
from maefast.ops.masking import Mask

GLOBAL_POOLS = ("token", "avg")
BLOCKS = ("parallel", "standard")
POSITIONS = ("sincos", "learn")  # timm's pos_embed="learn": a trained table
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
    block: str = "parallel"      # parallel: the papers' (timm's ParallelScalingBlock); standard: timm's Block
    pos_embed: str = "sincos"    # sincos: fixed 2-D sin-cos positions (the papers'); learn: a trained table (timm)
    num_classes: int = 0         # timm's linear head on the pooled feature; 0: none (the model gives the feature)

    def validate(self) -> None:
        check_field_types(self)
        if self.img_size % self.patch_size:
            raise UserInputError(f"img_size {self.img_size} is not divisible by patch_size {self.patch_size}")
        for name, allowed in (("global_pool", GLOBAL_POOLS), ("block", BLOCKS), ("pos_embed", POSITIONS)):
            if getattr(self, name) not in allowed:
                raise UserInputError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.num_classes < 0:
            raise UserInputError(f"num_classes must be >= 0 (0: no head), got {self.num_classes}")
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
        self.embed_dim = self.num_features = dim  # timm's names of the pooled feature's width
        self.grad_checkpointing = False
        proj_in = 1 if config.channel_agnostic else config.in_chans
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(proj_in, dim, kernel_size=patch, stride=patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        repeats = config.max_in_chans if config.channel_agnostic else 1
        positions = sincos_position_embedding(dim, config.grid_side, repeats)
        cls_position = torch.zeros(1, dim)
        # A parameter (not a buffer) so that it travels in state dicts as in timm; trained only when "learn".
        self.pos_embed = nn.Parameter(torch.cat([cls_position, positions])[None],
                                      requires_grad=config.pos_embed == "learn")
        rates = [config.drop_path_rate * i / max(config.depth - 1, 1) for i in range(config.depth)]  # linear decay rule
        self.blocks = nn.Sequential(*[self.make_block(rate) for rate in rates])
        use_fc_norm = config.global_pool == "avg"
        self.norm = nn.Identity() if use_fc_norm else layer_norm(dim)
        self.fc_norm = layer_norm(dim) if use_fc_norm else nn.Identity()
        self.head = nn.Linear(dim, config.num_classes) if config.num_classes else nn.Identity()
        self.reset_parameters()

    def make_block(self, drop_path: float) -> nn.Module:
        config = self.config
        if config.block == "standard":
            return Block(config.embed_dim, config.num_heads, config.mlp_ratio, config.qkv_bias, config.qk_norm,
                         config.init_values, drop_path, role="encoder")
        return ParallelBlock(config.embed_dim, config.num_heads, config.mlp_ratio, config.qkv_bias, config.qk_norm,
                             config.init_values, drop_path)

    def reset_parameters(self) -> None:
        """MAE initialization: xavier-uniform linears and patch projection, N(0, 0.02) CLS token."""
        weight = self.patch_embed.proj.weight.data
        nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        if self.config.pos_embed == "learn":
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in [*self.blocks.modules(), self.head]:
            xavier_linear_(module)

    # -- timm's model API ----------------------------------------------------------------------------
    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward instead of keeping them (less memory, one more
        forward of the blocks); only where gradients are computed."""
        self.grad_checkpointing = enable

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """A new (freshly initialized) head for `num_classes` classes (0: none). The pooling decides where the final
        norm sits (token: on the tokens; avg: fc_norm after pooling), so it is chosen when the model is created."""
        if global_pool is not None and global_pool != self.config.global_pool:
            raise UserInputError(f"global_pool={global_pool!r}: this model was built with global_pool="
                                 f"{self.config.global_pool!r}, which places its final norm; build it with "
                                 f"create_model(name, global_pool={global_pool!r}) instead")
        if num_classes < 0:
            raise UserInputError(f"num_classes must be >= 0 (0: no head), got {num_classes}")
        self.config.num_classes = num_classes
        device, dtype = self.cls_token.device, self.cls_token.dtype
        self.head = nn.Linear(self.embed_dim, num_classes, device=device, dtype=dtype) if num_classes else nn.Identity()
        xavier_linear_(self.head)

    # -- input checks ------------------------------------------------------------------------------
    def check_pixels(self, pixels: torch.Tensor, fixed_size: bool = False) -> None:
        """Square images of any multiple of the patch size (fixed_size: of img_size, as an MAE's decoder needs)."""
        config = self.config
        if pixels.ndim != 4:
            raise UserInputError(f"expected images (B, C, H, W), got shape {tuple(pixels.shape)}")
        channels, height, width = pixels.shape[1:]
        config.check_channels(channels, "the input")
        if height != width:
            raise UserInputError(f"images must be square, got {height}x{width}")
        if height % config.patch_size or height == 0:
            raise UserInputError(f"image size {height} is not a multiple of the patch size {config.patch_size}")
        if fixed_size and height != config.img_size:
            raise UserInputError(f"model expects {config.img_size}x{config.img_size} images, got {height}x{width}")

    def grid_side_of(self, pixels: torch.Tensor) -> int:
        return pixels.shape[-1] // self.config.patch_size

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def num_tokens(self, channels: int, grid_side: int | None = None) -> int:
        grid = self.config.grid_side if grid_side is None else grid_side
        return grid * grid * (channels if self.config.channel_agnostic else 1)

    def token_positions(self, channels: int, grid_side: int | None = None) -> torch.Tensor:
        """(L, D) positions of the patch tokens for `channels` channels on a grid_side x grid_side patch grid (default:
        the config's, whose positions are pos_embed's). On another grid, sin-cos positions are those of that grid;
        learned ones are the stored table resized bicubically (timm's resample_abs_pos_embed)."""
        config = self.config
        grid = config.grid_side if grid_side is None else grid_side
        if grid == config.grid_side:
            return self.pos_embed[0, 1:1 + self.num_tokens(channels)]
        repeats = channels if config.channel_agnostic else 1
        if config.pos_embed == "sincos":
            return sincos_position_embedding(config.embed_dim, grid, repeats).to(self.pos_embed)
        side, dim = config.grid_side, config.embed_dim
        stored = self.pos_embed[0, 1:1 + repeats * side * side].reshape(repeats, side, side, dim).permute(0, 3, 1, 2)
        resized = F.interpolate(stored.float(), size=(grid, grid), mode="bicubic", antialias=True,
                                align_corners=False)
        return resized.permute(0, 2, 3, 1).reshape(repeats * grid * grid, dim).to(self.pos_embed.dtype)

    # -- forward -----------------------------------------------------------------------------------
    def embed_tokens(self, pixels: torch.Tensor, mask: Mask) -> torch.Tensor:
        """Visible tokens with the CLS token in front: (B, 1 + K, D)."""
        positions = self.token_positions(pixels.shape[1], self.grid_side_of(pixels))
        tokens = tokenize(pixels, mask.keep_idx, self.patch_embed.proj.weight, self.patch_embed.proj.bias,
                          positions, channel_agnostic=self.config.channel_agnostic)
        cls = (self.cls_token + self.pos_embed[:, :1]).to(tokens.dtype).expand(tokens.shape[0], -1, -1)
        return torch.cat([cls, tokens], dim=1)

    def run_blocks(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            for block in self.blocks:
                tokens = checkpoint(block, tokens, use_reentrant=False)
            return tokens
        return self.blocks(tokens)

    def forward_encoder(self, pixels: torch.Tensor, mask: Mask) -> torch.Tensor:
        return self.norm(self.run_blocks(self.embed_tokens(pixels, mask)))

    def forward_tokens(self, pixels: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: (B, 1 + L, D), with gradients and the module's mode (what the model's
        forward trains through); forward_features is its inference form."""
        self.check_pixels(pixels)
        mask = all_tokens(pixels.shape[0], self.num_tokens(pixels.shape[1], self.grid_side_of(pixels)), pixels.device)
        return self.forward_encoder(pixels, mask)

    @inference
    def forward_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """All tokens after the final norm: (B, 1 + L, D), as timm's forward_features, as inference."""
        return self.forward_tokens(pixels)

    def forward_head(self, features: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """timm's forward_head: pool (CLS token or mean of patch tokens), fc_norm, head."""
        if self.config.global_pool == "avg":
            pooled = features[:, self.num_prefix_tokens:].mean(dim=1)
        else:
            pooled = features[:, 0]
        pooled = self.fc_norm(pooled)
        return pooled if pre_logits else self.head(pooled)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """timm's forward: the head's output (the pooled feature without a head), with gradients."""
        return self.forward_head(self.forward_tokens(pixels))

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
        side = self.grid_side_of(pixels)
        mask = all_tokens(pixels.shape[0], self.num_tokens(pixels.shape[1], side), pixels.device)
        x = self.embed_tokens(pixels, mask)
        last = take[-1] if stop_early or intermediates_only else len(self.blocks) - 1
        intermediates = []
        for index in range(last + 1):
            x = self.blocks[index](x)
            if index in take:
                intermediates.append(self.norm(x) if norm else x)
        outputs = []
        for tokens in intermediates:
            patches = tokens[:, self.num_prefix_tokens:]
            if output_fmt == "NCHW":
                patches = patches.reshape(len(patches), side, side, -1).permute(0, 3, 1, 2).contiguous()
            outputs.append((patches, tokens[:, :self.num_prefix_tokens]) if return_prefix_tokens else patches)
        return outputs if intermediates_only else (self.norm(x), outputs)

    @inference
    def embed(self, pixels: torch.Tensor, pool: str = "mean", per_channel: bool = False) -> torch.Tensor:
        """Embeddings (B, D): mean of the patch tokens (default) or the CLS token, as inference.

        per_channel (CA-MAE only): the mean of each channel's tokens, concatenated to (B, C * D).
        """
        features = self.forward_features(pixels)
        return self.pool_tokens(features[:, self.num_prefix_tokens:], features[:, 0], pool, per_channel,
                                pixels.shape[1])

    @inference
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
