"""The encoder over batches of tiles, as fast as the device allows.

On a GPU (precision bf16): the encoder's weights are cast to bf16 once, so no forward re-casts them, and
the tokens stay bf16 from the tokenizer to the pooled feature; each attention site runs the kernel timed
fastest at the job's shapes (chosen once, recorded in <out>/attention.json and reused when the job
resumes); and the embedding is compiled with fixed shapes, every batch padded to the same number of tiles,
so that CUDA graphs replay it ("reduce-overhead"). The number of tiles per forward is, on a GPU, the largest
that still raises throughput and fits in memory with room to spare (timed once, recorded in
<out>/tile_batch.json and reused). On the CPU the same code runs eagerly (fp32 unless told otherwise), one
loader batch per forward, since compiling would cost more than short CPU jobs gain.
"""
from __future__ import annotations

import gc
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from maefast.errors import UserInputError
from maefast.io import read_json, write_json_atomic
from maefast.models.attention_setup import configure_attention, random_pixels, tune_attention

ATTENTION_FILE, TILE_BATCH_FILE = "attention.json", "tile_batch.json"
COMPILE_CHOICES = ("auto", "on", "off")
TILE_BATCH_CANDIDATES = (16, 32, 64, 128, 256, 512, 1024, 2048, 4096)
# A tuned batch may peak at this share of the GPU's memory: the rest is for the CUDA graphs' memory pool,
# compiled kernels' workspaces and a GPU-resident loader.
MEMORY_SHARE = 0.7
SATURATION_GAIN = 1.05  # a batch twice as large must be this much faster to be worth its memory


def resolve_precision(precision: str, device: torch.device) -> str:
    return ("bf16" if device.type == "cuda" else "fp32") if precision == "auto" else precision


@dataclass
class BatchTrial:
    tiles: int
    tiles_per_s: float | None = None
    peak_bytes: int | None = None
    outcome: str = "fits"  # fits | out of memory | over the memory share | no faster


def choose_tile_batch(measure: Callable[[int], tuple[float, int]], memory_limit: int,
                      candidates=TILE_BATCH_CANDIDATES) -> tuple[int, list[BatchTrial]]:
    """The tiles per forward: grows the batch through `candidates` while it fits and gets faster.

    measure(tiles) -> (tiles per second, peak memory in bytes), raising torch.OutOfMemoryError when the
    batch does not fit. The search stops at the first batch that runs out of memory, peaks above
    `memory_limit`, or gains less than SATURATION_GAIN over the best so far; the answer is the largest batch
    that fit and was no slower than a smaller one. Returns it and every trial."""
    trials: list[BatchTrial] = []
    best_rate = 0.0
    for tiles in candidates:
        trial = BatchTrial(tiles)
        trials.append(trial)
        try:
            trial.tiles_per_s, trial.peak_bytes = measure(tiles)
        except torch.OutOfMemoryError:
            trial.outcome = "out of memory"
        else:
            if trial.peak_bytes > memory_limit:
                trial.outcome = "over the memory share"
            elif trial.tiles_per_s < best_rate * SATURATION_GAIN:
                trial.outcome = "no faster"
        if trial.outcome == "out of memory":
            gc.collect()  # the failed batch's tensors, held by the exception until now
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        if trial.outcome != "fits":
            break
        best_rate = trial.tiles_per_s
    # the batch that stopped the growth still counts when it is no slower: the largest batch that fits
    fitting = [t.tiles for t in trials
               if t.outcome == "fits" or (t.outcome == "no faster" and t.tiles_per_s >= best_rate)]
    if not fitting:
        raise UserInputError(f"not even {candidates[0]} tiles per forward fit on the device "
                             f"({trials[0].outcome}); the encoder is too large for it")
    return max(fitting), trials


def measure_forward(forward: Callable[[torch.Tensor], torch.Tensor], tile_shape: tuple[int, int, int],
                    device: torch.device, repeats: int = 3) -> Callable[[int], tuple[float, int]]:
    """measure(tiles) for choose_tile_batch: a CUDA forward's tiles per second and peak memory (random
    16-bit pixels; one warm-up call, then `repeats` timed ones)."""
    def measure(tiles: int) -> tuple[float, int]:
        pixels = random_pixels((tiles, *tile_shape), device)
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        forward(pixels)
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        for _ in range(repeats):
            forward(pixels)
        torch.cuda.synchronize(device)
        return tiles * repeats / (time.perf_counter() - start), torch.cuda.max_memory_allocated(device)
    return measure


def resolve_blocks(blocks: str | list[int] | None, encoder) -> list[int] | None:
    """The 0-based blocks to embed (timm's forward_intermediates indices, ascending): "all", "last", a list of
    indices (negative ones count from the end) or None (the final embedding only, as without blocks)."""
    if blocks is None:
        return None
    if not hasattr(encoder, "embed_blocks"):
        raise UserInputError(f"--blocks needs a ViT encoder; {type(encoder).__name__} has no transformer blocks")
    from maefast.models.vit import take_indices
    depth = encoder.num_blocks
    if blocks == "all":
        return list(range(depth))
    if blocks == "last":
        return [depth - 1]
    if isinstance(blocks, str):
        raise UserInputError(f"blocks must be 'all', 'last' or block indices, got {blocks!r}")
    return take_indices(depth, list(blocks))


class TileEmbedder:
    """`embedder(pixels)` -> (N, D) float32 features of N tiles, run `batch_tiles` at a time; with `blocks`,
    (N, K, D): the embedding of each of the K blocks, all from one forward (embed_blocks)."""

    def __init__(self, encoder, *, pool: str, per_channel: bool, precision: str, device: torch.device,
                 batch_tiles: int | str, tile_shape: tuple[int, int, int], compile: str = "auto",
                 attention: str = "auto", out: Path | None = None, broadcast=lambda obj: obj,
                 loader_tiles: int = 64, blocks: list[int] | None = None):
        """batch_tiles: tiles per forward, or "auto" (on CUDA the largest batch that fits and gets faster,
        timed once; elsewhere `loader_tiles`, the tiles of one loader batch). out: the job's folder (where
        the tuned choices are recorded; None on ranks other than 0); broadcast(obj) -> rank 0's obj, so that
        every rank of a torchrun job runs the same kernels at the same batch."""
        self.device, self.tile_shape = device, tile_shape
        self.encoder = encoder.to(device).eval()
        self.options = {} if pool == "mean" and not per_channel else {"pool": pool, "per_channel": per_channel}
        self.blocks = resolve_blocks(blocks, encoder)
        bf16 = resolve_precision(precision, device) == "bf16"
        # on a GPU the weights themselves become bf16; on the CPU autocast keeps fp32 weights for the reference
        self.weights_in_bf16 = bf16 and device.type == "cuda"
        if self.weights_in_bf16:
            self.encoder.to(torch.bfloat16)
        self.autocast_dtype = torch.bfloat16 if bf16 and not self.weights_in_bf16 else None
        self.tile_batch = self.choose_tile_batch(batch_tiles, loader_tiles, out, broadcast)
        self.batch_tiles = self.tile_batch["tiles"]
        self.attention = self.choose_attention(attention, out, broadcast)
        self.compiled = (compile == "on") or (compile == "auto" and device.type == "cuda")
        self.run = self.forward
        if self.compiled:
            mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs: the shapes are fixed
            self.run = torch.compile(self.forward, fullgraph=True, mode=mode)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                             enabled=self.autocast_dtype is not None):
            if self.blocks is not None:
                return self.encoder.embed_blocks(pixels, self.blocks, **self.options)
            return self.encoder.embed(pixels, **self.options)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        if pixels.shape[0] > self.batch_tiles:
            return torch.cat([self(chunk) for chunk in pixels.split(self.batch_tiles)])
        count = pixels.shape[0]
        if self.compiled and count < self.batch_tiles:  # one fixed shape for every batch
            padding = pixels.new_zeros((self.batch_tiles - count, *pixels.shape[1:]))
            pixels = torch.cat([pixels, padding])
        # float() copies: CUDA graphs reuse their output buffer at the next call
        return self.run(pixels)[:count].float()

    def choose_tile_batch(self, requested: int | str, loader_tiles: int, out: Path | None, broadcast) -> dict:
        """{"tiles": tiles per forward, ...}: what a resumed job recorded, the user's number, or (CUDA,
        "auto") the batch choose_tile_batch finds with the eager forward; rank 0's answer on every rank."""
        if requested != "auto":
            return {"tiles": int(requested)}
        if self.device.type != "cuda":
            return {"tiles": loader_tiles}
        recorded = out / TILE_BATCH_FILE if out is not None else None
        result = None
        if recorded is not None and recorded.exists():
            result = {**read_json(recorded), "reused": True}
        else:
            total = torch.cuda.get_device_properties(self.device).total_memory
            tiles, trials = choose_tile_batch(measure_forward(self.forward, self.tile_shape, self.device),
                                              int(total * MEMORY_SHARE))
            result = {"tiles": tiles, "trials": [asdict(t) for t in trials]}
            if recorded is not None:
                write_json_atomic(recorded, result)
        return broadcast(result)

    def choose_attention(self, requested: str, out: Path | None, broadcast) -> dict:
        """The attention backend per role: what a resumed job recorded, the user's choice, or (GPU, "auto")
        the fastest at this job's tile batch, timed once; rank 0's answer on every rank."""
        recorded = out / ATTENTION_FILE if out is not None else None
        result = None
        if recorded is not None and recorded.exists():
            result = {**read_json(recorded), "reused": True}
        elif requested == "auto" and self.device.type == "cuda":
            pixels = random_pixels((self.batch_tiles, *self.tile_shape), self.device)
            tuning = tune_attention(self.encoder, lambda: self.forward(pixels), needs_grad=False)
            result = {"choice": tuning.choice, "timings": tuning.timings}
            if recorded is not None:
                write_json_atomic(recorded, result)
        result = broadcast(result) or {"choice": requested}
        configure_attention(self.encoder, result["choice"])
        return result
