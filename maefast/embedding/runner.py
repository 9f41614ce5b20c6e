"""The encoder over batches of tiles, as fast as the device allows.

`PooledEncoder(encoder, ...)(pixels)`: one eager forward of a batch of tiles to pooled float features (with
`blocks`, every chosen block's, from the same forward). On a GPU (precision bf16 or fp8) the encoder's weights are
cast to bf16 once, so no forward re-casts them, and the tokens stay bf16 from the tokenizer to the pooled feature;
on the CPU bf16 runs under autocast with fp32 weights. fp8 first converts the encoder's GEMMs that pay in FP8
(RunSetup.prepare, maefast.models.fp8; emulated on a CPU).

`TileEmbedder(pooled, batch_tiles, compile)(pixels)`: any number of tiles, `batch_tiles` per forward. Compiled,
every batch is padded to `batch_tiles` tiles, so that the shapes are fixed and, on CUDA, CUDA graphs replay the
forward ("reduce-overhead"). The embedding compiles the whole forward as one graph, not block by block as
training does (maefast.models.regions): one CUDA graph then replays everything, the tokenizer, the blocks and
the pooling, with no launch between them, which regional compilation would split into a graph per block with
eager ops in between; and an embedding job compiles one forward at one shape, once.

What the job decides before building them (the precision, compile, the attention kernel of each site, the tile
batch) comes from maefast.job_setup; these objects compute and never see the job's folder.
"""
from __future__ import annotations

import torch

from maefast.errors import UserInputError
from maefast.job_setup import RunSetup
from maefast.models.vit import take_indices


def embeds_blocks(encoder) -> bool:
    """Whether `encoder` gives block-wise embeddings (a ViT's embed_blocks; a MU-Net has no transformer blocks)."""
    return hasattr(encoder, "embed_blocks")


def resolve_blocks(blocks: str | list[int] | None, encoder) -> list[int] | None:
    """The 0-based blocks to embed (timm's forward_intermediates indices, ascending) of EmbedConfig.blocks: "all",
    "last", a list of indices (negative ones count from the end) or None (the final embedding only)."""
    if blocks is None:
        return None
    if not embeds_blocks(encoder):
        raise UserInputError(f"blocks needs a ViT encoder; {type(encoder).__name__} has no transformer blocks")
    depth = encoder.num_blocks
    if blocks == "all":
        return list(range(depth))
    if blocks == "last":
        return [depth - 1]
    return take_indices(depth, list(blocks))


class PooledEncoder:
    """`pooled(pixels)` -> (N, D) features of one batch of N tiles: the encoder's .embed, eager, no gradients;
    with `blocks` (resolve_blocks' indices), (N, K, D): each of the K blocks' embedding, all from one forward
    (the encoder's embed_blocks)."""

    def __init__(self, encoder, *, pool: str, per_channel: bool, setup: RunSetup, blocks: list[int] | None = None):
        self.setup, self.blocks = setup, blocks
        self.encoder = encoder.to(setup.device).eval()
        self.options = {} if pool == "mean" and not per_channel else {"pool": pool, "per_channel": per_channel}
        self.fp8 = setup.prepare(self.encoder)  # fp8: the report of the GEMMs converted; otherwise None
        bf16 = setup.dtype == torch.bfloat16
        # on a GPU the weights themselves become bf16; on the CPU autocast keeps fp32 weights for the reference
        self.weights_in_bf16 = bf16 and setup.device.type == "cuda"
        if self.weights_in_bf16:
            self.encoder.to(torch.bfloat16)
        self.autocast = bf16 and not self.weights_in_bf16

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(self.setup.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.blocks is not None:
                return self.encoder.embed_blocks(pixels, self.blocks, **self.options)
            return self.encoder.embed(pixels, **self.options)


class TileEmbedder:
    """`embedder(pixels)` -> (N, D) float32 features of N tiles (with blocks, (N, K, D)), run `batch_tiles` at a
    time."""

    def __init__(self, pooled: PooledEncoder, batch_tiles: int, compile: bool):
        self.pooled, self.batch_tiles, self.compiled = pooled, batch_tiles, compile
        self.run = pooled
        if compile:
            mode = "reduce-overhead" if pooled.setup.device.type == "cuda" else None  # CUDA graphs: fixed shapes
            self.run = torch.compile(pooled.__call__, fullgraph=True, mode=mode)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[0] > self.batch_tiles:
            return torch.cat([self(chunk) for chunk in pixels.split(self.batch_tiles)])
        count = pixels.shape[0]
        if self.compiled and count < self.batch_tiles:  # one fixed shape for every batch
            padding = pixels.new_zeros((self.batch_tiles - count, *pixels.shape[1:]))
            pixels = torch.cat([pixels, padding])
        # float() copies: CUDA graphs reuse their output buffer at the next call
        return self.run(pixels)[:count].float()
