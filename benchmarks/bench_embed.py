"""Embedding throughput: maefast's encoder against timm and the reference pipeline on the same weights, eager and
compiled.

    python -m benchmarks.bench_embed                      # GPU: ViT-L/8, 6 x 256 x 256, bf16, batch 128
    python -m benchmarks.bench_embed --quick              # CPU smoke run (a debug encoder)

Crops are random integer tensors already on the device (the loader has its own benchmark; `maefast embed`
reports end-to-end crops/s with the loader). Variants (benchmarks/jobs.py): maefast as a user gets it on CUDA
(attention tuned at setup, torch.compile fullgraph), maefast eager, timm + SDPA eager and under torch.compile
(left out, with the reason, when timm is missing), the reference pipeline eager and under torch.compile. One
record per variant (crops/s, MFU, compile warm-up seconds apart), then the summary: maefast against every
baseline, `ratio` against the fastest, named in `vs`.
"""
from __future__ import annotations

import sys

import torch

import maefast
from benchmarks import common, jobs
from maefast.models.flops import embedding_flops


def main(argv=None) -> int:
    args_parser = common.parser(__doc__)
    args_parser.add_argument("--model", default=None, help="encoder name (default vit_large_patch8_256)")
    args_parser.add_argument("--batch", type=int, default=None, help="crops per step (default 128; --quick 32)")
    args_parser.add_argument("--channels", type=int, default=6)
    args = args_parser.parse_args(argv)
    device = torch.device("cpu") if args.quick else common.pick_device(args.device)
    rec = common.Recorder("embed", device, args.json_out)
    common.stop_on_sigterm()
    name = args.model or (jobs.QUICK_EMBED_MODEL if args.quick else "vit_large_patch8_256")
    batch = args.batch or (32 if args.quick else 128)
    matmul = jobs.matmul_rate(device)
    try:
        torch.manual_seed(0)
        encoder = maefast.create_model(name, in_chans=args.channels).to(device).eval()
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
