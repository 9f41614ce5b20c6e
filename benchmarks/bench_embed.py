"""Embedding throughput: maefast's encoder against timm and the reference pipeline on the same weights, eager and
compiled.

    python -m benchmarks.bench_embed                      # GPU: ViT-L/8, 6 x 256 x 256, bf16, batch 128
    python -m benchmarks.bench_embed --quick              # CPU smoke run (a debug encoder)
    python -m benchmarks.bench_embed --tile-batch-search  # GPU: also the tiles-per-forward search of `maefast embed`

Crops are random integer tensors already on the device (the loader has its own benchmark; `maefast embed`
reports end-to-end crops/s with the loader). Variants (benchmarks/jobs.py): maefast as a user gets it on CUDA
(attention tuned at setup, the whole forward compiled with fixed shapes as `maefast embed` compiles it), maefast
eager, timm + SDPA eager and compiled block by block (left out, with the reason, when timm is missing), the
reference pipeline eager and compiled block by block. One
record per variant (crops/s, MFU, compile warm-up seconds apart), then the summary: maefast against every
baseline, `ratio` against the fastest, named in `vs`. --tile-batch-search first records each batch that
`maefast embed --tile-batch auto` tries (maefast.job_setup.choose_tile_batch: eager tiles/s and peak memory per
batch) and the one it picks.
"""
from __future__ import annotations

import sys

import torch

import maefast
from benchmarks import common, jobs
from maefast.embedding.runner import PooledEncoder
from maefast.job_setup import MEMORY_SHARE, RunSetup, choose_tile_batch
from maefast.models.attention_setup import configure_attention
from maefast.models.flops import embedding_flops


def search_tile_batch(rec: common.Recorder, encoder, channels: int, case: str) -> None:
    """One record per batch the CUDA tile-batch search of `maefast embed` tries, then its choice."""
    size = encoder.config.img_size
    setup = RunSetup.resolve(encoder.cls_token.device, compile=False)
    pooled = PooledEncoder(encoder, pool="mean", per_channel=False, setup=setup)
    configure_attention(pooled.encoder, "sdpa")
    tile_batch = choose_tile_batch("auto", 0, pooled, (channels, size, size), setup)
    for trial in tile_batch["trials"]:
        rec.emit(kind="tile_batch", case=case, tiles=trial["tiles"], outcome=trial["outcome"],
                 value=None if trial["tiles_per_s"] is None else round(trial["tiles_per_s"], 1), unit="crops/s",
                 peak_gib=None if trial["peak_bytes"] is None else round(trial["peak_bytes"] / 2**30, 2))
    rec.emit(kind="tile_batch_choice", case=case, tiles=tile_batch["tiles"], memory_share=MEMORY_SHARE)
    encoder.float()  # the runner made its weights bf16 in place


def main(argv=None) -> int:
    args_parser = common.parser(__doc__)
    args_parser.add_argument("--model", default=None, help="encoder name (default vit_large_patch8_256)")
    args_parser.add_argument("--batch", type=int, default=None, help="crops per step (default 128; --quick 32)")
    args_parser.add_argument("--channels", type=int, default=6)
    args_parser.add_argument("--tile-batch-search", action="store_true",
                             help="also record the tiles-per-forward search of `maefast embed` (CUDA only)")
    args = args_parser.parse_args(argv)
    device = torch.device("cpu") if args.quick else common.pick_device(args.device)
    rec = common.Recorder("embed", device, args.json_out)
    common.stop_on_sigterm()
    name = args.model or (jobs.QUICK_EMBED_MODEL if args.quick else "vit_large_patch8_256")
    batch = args.batch or (32 if args.quick else 128)
    matmul = jobs.job_matmul_rate(device)
    try:
        torch.manual_seed(0)
        encoder = maefast.create_model(name, in_chans=args.channels).to(device).eval()
        if args.tile_batch_search and device.type == "cuda":
            search_tile_batch(rec, encoder, args.channels, name)
        pixels = jobs.random_crops(batch, args.channels, encoder.config.img_size, device)
        job = jobs.embedding_job(encoder, pixels)
    except common.TimeLimit as stop:
        rec.emit(kind="summary", case=name, value=None, ratio=None, skipped=f"{stop} (during setup)")
        return 0
    jobs.run_job(rec, job, device, args.reps or (3 if args.quick else 10), batch,
                 embedding_flops(encoder.config, args.channels), matmul, case=name, batch=batch, channels=args.channels)
    return 0


if __name__ == "__main__":
    sys.exit(main())
