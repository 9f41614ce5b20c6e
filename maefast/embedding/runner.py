"""The encoder over batches of tiles, as fast as the device allows.

On a GPU (precision bf16): the encoder's weights are cast to bf16 once, so no forward re-casts them, and
the tokens stay bf16 from the tokenizer to the pooled feature; each attention site runs the kernel timed
fastest at the job's shapes (chosen once, recorded in <out>/attention.json and reused when the job
resumes); and the embedding is compiled with fixed shapes, every batch padded to the same number of tiles,
so that CUDA graphs replay it ("reduce-overhead"). On the CPU the same code runs eagerly (fp32 unless told
otherwise), since compiling would cost more than short CPU jobs gain.
"""
from __future__ import annotations

from pathlib import Path

import torch

from maefast.io import read_json, write_json_atomic
from maefast.models.attention_setup import configure_attention, tune_attention

ATTENTION_FILE = "attention.json"
COMPILE_CHOICES = ("auto", "on", "off")


def resolve_precision(precision: str, device: torch.device) -> str:
    return ("bf16" if device.type == "cuda" else "fp32") if precision == "auto" else precision


class TileEmbedder:
    """`embedder(pixels)` -> (N, D) float32 features of N tiles (N at most `batch_tiles`)."""

    def __init__(self, encoder, *, pool: str, per_channel: bool, precision: str, device: torch.device,
                 batch_tiles: int, tile_shape: tuple[int, int, int], compile: str = "auto",
                 attention: str = "auto", out: Path | None = None, broadcast=lambda obj: obj):
        """out: the job's folder (where the attention choice is recorded; None on ranks other than 0);
        broadcast(obj) -> rank 0's obj, so that every rank of a torchrun job runs the same kernels."""
        self.device, self.batch_tiles, self.tile_shape = device, batch_tiles, tile_shape
        self.encoder = encoder.to(device).eval()
        self.options = {} if pool == "mean" and not per_channel else {"pool": pool, "per_channel": per_channel}
        bf16 = resolve_precision(precision, device) == "bf16"
        # on a GPU the weights themselves become bf16; on the CPU autocast keeps fp32 weights for the reference
        self.weights_in_bf16 = bf16 and device.type == "cuda"
        if self.weights_in_bf16:
            self.encoder.to(torch.bfloat16)
        self.autocast_dtype = torch.bfloat16 if bf16 and not self.weights_in_bf16 else None
        self.attention = self.choose_attention(attention, out, broadcast)
        self.compiled = (compile == "on") or (compile == "auto" and device.type == "cuda")
        self.run = self.forward
        if self.compiled:
            mode = "reduce-overhead" if device.type == "cuda" else None  # CUDA graphs: the shapes are fixed
            self.run = torch.compile(self.forward, fullgraph=True, mode=mode)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.autocast_dtype,
                                             enabled=self.autocast_dtype is not None):
            return self.encoder.embed(pixels, **self.options)

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        count = pixels.shape[0]
        if self.compiled and count < self.batch_tiles:  # one fixed shape for every batch
            padding = pixels.new_zeros((self.batch_tiles - count, *pixels.shape[1:]))
            pixels = torch.cat([pixels, padding])
        # float() copies: CUDA graphs reuse their output buffer at the next call
        return self.run(pixels)[:count].float()

    def choose_attention(self, requested: str, out: Path | None, broadcast) -> dict:
        """The attention backend per role: what a resumed job recorded, the user's choice, or (GPU, "auto")
        the fastest at this job's tile batch, timed once; rank 0's answer on every rank."""
        recorded = out / ATTENTION_FILE if out is not None else None
        result = None
        if recorded is not None and recorded.exists():
            result = {**read_json(recorded), "reused": True}
        elif requested == "auto" and self.device.type == "cuda":
            pixels = torch.randint(0, 65536, (self.batch_tiles, *self.tile_shape), dtype=torch.int32,
                                   device=self.device).to(torch.uint16)
            tuning = tune_attention(self.encoder, lambda: self.forward(pixels), needs_grad=False)
            result = {"choice": tuning.choice, "timings": tuning.timings}
            if recorded is not None:
                write_json_atomic(recorded, result)
        result = broadcast(result) or {"choice": requested}
        configure_attention(self.encoder, result["choice"])
        return result
