"""The baseline of the end-to-end benchmarks: the public reference MAE's computation on maefast's weights.

As in recursionpharma/maes_microscopy: float self-standardization of the whole image, a convolution that
embeds every patch (for CA-MAE one convolution per channel in a Python loop), argsort/gather masking of
the embedded tokens, SDPA attention in the blocks, mask tokens gathered back with restore indices, an
explicit-softmax cross-attention in the CA-MAE decoder, and a loss over all patches weighted by the
mask. The blocks are maefast's computed op by op as timm's ParallelScalingBlock does (forward_unfused,
parity-tested against timm), with every op forced to its PyTorch reference, so both sides share weights and
differ only in the pipeline and the block's fusion.

Every block goes through one function, `run_block(block, tokens)`; the compiled baseline passes
`compiled_run_block()`, which compiles that function once (regional compilation: identical blocks share one
graph), as maefast's compiled variant compiles its blocks.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from maefast.models.layers import ParallelBlock
from maefast.ops.backend import use_backend
from maefast.ops.mae_loss import mae_loss_reference
from maefast.ops.patches import patchify, pixel_scale


def run_block(block, tokens: torch.Tensor) -> torch.Tensor:
    """One block the reference's way: an encoder block op by op, as timm's ParallelScalingBlock computes it
    (maefast's blocks fuse the two out-projections); a decoder block as it is (timm's Block)."""
    return block.forward_unfused(tokens) if isinstance(block, ParallelBlock) else block(tokens)


def compiled_run_block():
    """run_block under torch.compile(fullgraph=True): one graph per kind of block, reused by identical ones."""
    return torch.compile(run_block, fullgraph=True)


def run_blocks(blocks, tokens: torch.Tensor, run=run_block) -> torch.Tensor:
    for block in blocks:
        tokens = run(block, tokens)
    return tokens


def embed_all_patches(encoder, images: torch.Tensor) -> torch.Tensor:
    proj = encoder.patch_embed.proj
    if encoder.config.channel_agnostic:
        per_channel = [proj(images[:, c:c + 1]) for c in range(images.shape[1])]
        return torch.stack(per_channel, dim=2).flatten(2).transpose(1, 2)
    return proj(images).flatten(2).transpose(1, 2)


def reference_masking(tokens: torch.Tensor, mask_ratio: float, noise: torch.Tensor):
    batch, length, dim = tokens.shape
    keep = int(length * (1 - mask_ratio))
    shuffled = torch.argsort(noise, dim=1)
    restore = torch.argsort(shuffled, dim=1)
    visible = torch.gather(tokens, 1, shuffled[:, :keep].unsqueeze(-1).repeat(1, 1, dim))
    mask = torch.ones(batch, length, device=tokens.device)
    mask[:, :keep] = 0
    return visible, torch.gather(mask, 1, restore), restore


def explicit_cross_attention(module, x, context):
    batch, queries, dim = x.shape
    heads = module.num_heads
    q = module.q(x).reshape(batch, queries, heads, -1).permute(0, 2, 1, 3)
    k, v = module.kv(context).reshape(batch, context.shape[1], 2, heads, -1).permute(2, 0, 3, 1, 4)
    attention = (q @ k.transpose(-2, -1)) * (dim // heads) ** -0.5
    return module.proj((attention.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, queries, dim))


def reference_ca_decoder(decoder, tokens: torch.Tensor, channels: int, run=run_block) -> torch.Tensor:
    patches = tokens[:, 1:]
    per_channel = patches.shape[1] // channels
    marks = torch.cat([decoder.modality_tokens[c].repeat(1, per_channel, 1) for c in range(channels)], dim=1)
    patches = patches + marks
    outputs = []
    for c in range(channels):
        chunk = patches[:, c * per_channel:(c + 1) * per_channel]
        chunk = explicit_cross_attention(decoder.cross_attention, decoder.query_norm(chunk),
                                         decoder.context_norm(patches))
        chunk = chunk + decoder.mlp(decoder.out_norm(chunk))
        outputs.append(run_blocks(decoder.decoders[c], chunk, run))
    return torch.cat([tokens[:, :1]] + outputs, dim=1)


def reference_forward(model, pixels: torch.Tensor, noise: torch.Tensor | None = None, run=run_block):
    """(loss, pred, mask) of `model` (a maefast MaskedAutoencoder) computed the reference's way; `run` runs
    each block (run_block, or compiled_run_block())."""
    with use_backend("reference"):
        encoder, config = model.encoder, model.config
        images = F.instance_norm(pixels.float() / pixel_scale(pixels.dtype), eps=1e-5)
        channels = images.shape[1]
        tokens = embed_all_patches(encoder, images).to(images.dtype)
        tokens = tokens + encoder.pos_embed[:, 1:1 + tokens.shape[1]]
        if noise is None:
            noise = torch.rand(tokens.shape[:2], device=tokens.device)
        visible, mask, restore = reference_masking(tokens, config.mask_ratio, noise)
        cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(visible.shape[0], -1, -1)
        latent = encoder.norm(run_blocks(encoder.blocks, torch.cat([cls, visible], dim=1), run))
        projected = model.encoder_decoder_proj(latent)
        missing = restore.shape[1] + 1 - projected.shape[1]
        filled = torch.cat([projected[:, 1:], model.decoder.mask_token.repeat(projected.shape[0], missing, 1)], dim=1)
        filled = torch.gather(filled, 1, restore.unsqueeze(-1).repeat(1, 1, projected.shape[2]))
        positions = model.decoder_pos_embed[: restore.shape[1]]
        decoder_in = torch.cat([projected[:, :1], filled + positions], dim=1)
        if model.channel_agnostic:
            decoded = reference_ca_decoder(model.decoder, decoder_in, channels, run)
        else:
            decoded = model.decoder.norm(run_blocks(model.decoder.blocks, decoder_in, run))
        pred = model.decoder_pred(decoded)[:, 1:]
        target = patchify(images, config.encoder.patch_size, model.channel_agnostic)
        # the reference computes the loss on every patch, then weights it by the mask
        masked = mask.bool()
        losses = mae_loss_reference(pred[masked].unsqueeze(0), target[masked].unsqueeze(0),
                                    channels=model.target_channels(channels), norm_pix_loss=config.norm_pix_loss,
                                    fourier_weight=config.fourier_weight)
        return losses.loss, pred, mask


def reference_embed(encoder, pixels: torch.Tensor, run=run_block) -> torch.Tensor:
    """Mean of the patch tokens, computed the reference's way (all patches embedded by convolution)."""
    with use_backend("reference"):
        images = F.instance_norm(pixels.float() / pixel_scale(pixels.dtype), eps=1e-5)
        tokens = embed_all_patches(encoder, images).to(images.dtype)
        tokens = tokens + encoder.pos_embed[:, 1:1 + tokens.shape[1]]
        cls = (encoder.cls_token + encoder.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
        features = encoder.norm(run_blocks(encoder.blocks, torch.cat([cls, tokens], dim=1), run))
        return features[:, 1:].mean(dim=1)
