"""The state-dict layout of the public reference MAE (recursionpharma/maes_microscopy, `MAEModel` of
huggingface_mae.py): every key and shape, in state-dict order, written from a reading of its modules.

    encoder.vit_backbone.*   timm VisionTransformer: cls_token, pos_embed (fixed sin-cos, CLS slot first;
                             tiled max_in_chans times for CA), patch_embed.proj (1 input channel for CA),
                             blocks.N.* (timm ParallelScalingBlock, no qkv bias: mlp_bias, in_norm,
                             in_proj, q_norm, k_norm, attn_out_proj, mlp_out_proj, ls.gamma),
                             fc_norm (global_pool "avg") or norm (global_pool "token")
    decoder.*                MAEDecoder: mask_token, pos_embeddings, blocks.N.* (timm Block), norm
                             CAMAEDecoder: mask_token, placeholder, pos_embeddings, modality_tokens.M,
                             cross_attention.{q,kv,proj} (q, kv without bias), mlp.{fc1,fc2},
                             decoders.M.N.* (timm Block), context_norm, query_norm, out_norm
    encoder_decoder_proj.*, decoder_pred.*
`decoder.pos_embeddings` is registered after the constructor (MAEModel assigns it), so it follows the
decoder's own parameters. input_norm, loss and fourier_loss hold no state.

tests/fixtures/make_openphenom_layout.py writes the OpenPhenom release's table from this function.
"""
from __future__ import annotations

import torch

from maefast.models.layers import sincos_position_embedding

# The OpenPhenom release (MAEModel in huggingface_mae.py): a CA-MAE ViT-S/16 at 256 x 256 whose encoder
# takes up to 11 channels, with a decoder of 8 blocks of width 512 for each of 6 channels.
OPENPHENOM = dict(embed_dim=384, depth=12, num_heads=6, mlp_ratio=4.0, patch_size=16, img_size=256, in_chans=6,
                  channel_agnostic=True, max_in_chans=11, global_pool="avg", decoder_embed_dim=512,
                  decoder_depth=8, decoder_mlp_ratio=4.0, num_modalities=6)


def linear(prefix: str, out_features: int, in_features: int, bias: bool = True) -> list:
    return [(f"{prefix}.weight", (out_features, in_features))] + ([(f"{prefix}.bias", (out_features,))] if bias else [])


def layer_norm(prefix: str, dim: int) -> list:
    return [(f"{prefix}.weight", (dim,)), (f"{prefix}.bias", (dim,))]


def parallel_block(prefix: str, dim: int, num_heads: int, mlp_ratio: float) -> list:
    hidden = int(mlp_ratio * dim)
    head = dim // num_heads
    return ([(f"{prefix}.mlp_bias", (hidden,))] + layer_norm(f"{prefix}.in_norm", dim)
            + linear(f"{prefix}.in_proj", hidden + 3 * dim, dim, bias=False)
            + layer_norm(f"{prefix}.q_norm", head) + layer_norm(f"{prefix}.k_norm", head)
            + linear(f"{prefix}.attn_out_proj", dim, dim) + linear(f"{prefix}.mlp_out_proj", dim, hidden)
            + [(f"{prefix}.ls.gamma", (dim,))])


def timm_block(prefix: str, dim: int, mlp_ratio: float) -> list:
    hidden = int(dim * mlp_ratio)
    return (layer_norm(f"{prefix}.norm1", dim) + linear(f"{prefix}.attn.qkv", 3 * dim, dim)
            + linear(f"{prefix}.attn.proj", dim, dim) + layer_norm(f"{prefix}.norm2", dim)
            + linear(f"{prefix}.mlp.fc1", hidden, dim) + linear(f"{prefix}.mlp.fc2", dim, hidden))


def reference_state_shapes(embed_dim: int, depth: int, num_heads: int, mlp_ratio: float, patch_size: int,
                           img_size: int, in_chans: int, channel_agnostic: bool, max_in_chans: int,
                           global_pool: str, decoder_embed_dim: int, decoder_depth: int,
                           decoder_mlp_ratio: float, num_modalities: int) -> dict[str, tuple]:
    """key -> shape of MAEModel's state dict, in order."""
    grid = (img_size // patch_size) ** 2
    d, dd = embed_dim, decoder_embed_dim
    vit = "encoder.vit_backbone"
    repeats = max_in_chans if channel_agnostic else 1
    entries = [(f"{vit}.cls_token", (1, 1, d)), (f"{vit}.pos_embed", (1, 1 + repeats * grid, d)),
               (f"{vit}.patch_embed.proj.weight", (d, 1 if channel_agnostic else in_chans, patch_size, patch_size)),
               (f"{vit}.patch_embed.proj.bias", (d,))]
    for n in range(depth):
        entries += parallel_block(f"{vit}.blocks.{n}", d, num_heads, mlp_ratio)
    entries += layer_norm(f"{vit}.fc_norm" if global_pool == "avg" else f"{vit}.norm", d)
    decoder_repeats = num_modalities if channel_agnostic else 1
    positions = ("decoder.pos_embeddings", (1, 1 + decoder_repeats * grid, dd))
    if channel_agnostic:
        entries += [("decoder.mask_token", (1, 1, dd)), ("decoder.placeholder", (1, 1, dd)), positions]
        entries += [(f"decoder.modality_tokens.{m}", (1, 1, dd)) for m in range(num_modalities)]
        entries += (linear("decoder.cross_attention.q", dd, dd, bias=False)
                    + linear("decoder.cross_attention.kv", 2 * dd, dd, bias=False)
                    + linear("decoder.cross_attention.proj", dd, dd)
                    + linear("decoder.mlp.fc1", int(dd * decoder_mlp_ratio), dd)
                    + linear("decoder.mlp.fc2", dd, int(dd * decoder_mlp_ratio)))
        for m in range(num_modalities):
            for n in range(decoder_depth):
                entries += timm_block(f"decoder.decoders.{m}.{n}", dd, decoder_mlp_ratio)
        for name in ("context_norm", "query_norm", "out_norm"):
            entries += layer_norm(f"decoder.{name}", dd)
    else:
        entries += [("decoder.mask_token", (1, 1, dd)), positions]
        for n in range(decoder_depth):
            entries += timm_block(f"decoder.blocks.{n}", dd, decoder_mlp_ratio)
        entries += layer_norm("decoder.norm", dd)
    out_values = patch_size ** 2 * (1 if channel_agnostic else in_chans)
    entries += linear("encoder_decoder_proj", dd, d) + linear("decoder_pred", out_values, dd)
    return dict(entries)


def reference_positions(dim: int, grid_side: int, repeats: int) -> torch.Tensor:
    """(1, 1 + repeats * grid_side**2, dim): fixed sin-cos positions with the reference's zero CLS slot."""
    return torch.cat([torch.zeros(1, dim), sincos_position_embedding(dim, grid_side, repeats)])[None]


def random_reference_state(shapes: dict[str, tuple], seed: int = 0, grid_side: int | None = None,
                           repeats: tuple[int, int] = (1, 1)) -> dict[str, torch.Tensor]:
    """Random values for every key, except the fixed sin-cos positions (encoder, decoder), computed as
    the reference does: grid_side and repeats (encoder, decoder) say how."""
    generator = torch.Generator().manual_seed(seed)
    state = {key: torch.randn(shape, generator=generator) for key, shape in shapes.items()}
    for key, count in zip(("encoder.vit_backbone.pos_embed", "decoder.pos_embeddings"), repeats):
        state[key] = reference_positions(shapes[key][-1], grid_side, count)
    if "decoder.placeholder" in state:
        state["decoder.placeholder"] = torch.zeros(shapes["decoder.placeholder"])
    return state
