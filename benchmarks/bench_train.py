"""Training throughput: maefast against the public reference's pipeline on the same weights, eager and compiled.

    python -m benchmarks.bench_train                       # GPU: MAE ViT-L/8 and CA-MAE ViT-B/16, bf16
    python -m benchmarks.bench_train --model camae_vit_base_patch16_256 --batch 64
    python -m benchmarks.bench_train --quick               # CPU smoke run (a debug model)

Full training steps (forward, backward, AdamW step) on random integer crops already on the device, so this
measures the model, not the loader (bench_loader does that; gpu_suite.sh runs `maefast train` on packed shards
for the end-to-end figure). Variants (benchmarks/jobs.py): maefast as a user gets it on CUDA (attention tuned
at setup, blocks compiled one by one as `maefast train` compiles them), maefast eager, the reference pipeline
eager and compiled block by block.
One record per variant (crops/s, MFU from maefast.models.flops over the matmul rate measured in the same run, compile
warm-up seconds apart), then per model a summary: maefast against every baseline, `ratio` against the fastest.
"""
from __future__ import annotations

import sys

import torch

import maefast
from benchmarks import common, jobs
from maefast.models.families import family_of

DEFAULT_MODELS = ["mae_vit_large_patch8_256", "camae_vit_base_patch16_256"]


def main(argv=None) -> int:
    args_parser = common.parser(__doc__)
    args_parser.add_argument("--model", action="append", help="MAE / CA-MAE model name (repeatable)")
    args_parser.add_argument("--batch", type=int, default=None, help="crops per step (default 64; --quick 16)")
    args_parser.add_argument("--channels", type=int, default=6)
    args = args_parser.parse_args(argv)
    device = torch.device("cpu") if args.quick else common.pick_device(args.device)
    rec = common.Recorder("train", device, args.json_out)
    common.stop_on_sigterm()
    names = args.model or ([jobs.QUICK_TRAIN_MODEL] if args.quick else DEFAULT_MODELS)
    batch = args.batch or (16 if args.quick else 64)
    reps = args.reps or (3 if args.quick else 10)
    matmul = jobs.job_matmul_rate(device)
    for name in names:
        if common.stopped():
            break
        try:
            torch.manual_seed(0)
            model = maefast.create_model(name, in_chans=args.channels).to(device)  # a CA-MAE takes any count
            pixels = jobs.random_crops(batch, args.channels, model.config.encoder.img_size, device)
            job = jobs.training_job(model, pixels)
        except common.TimeLimit as stop:
            rec.emit(kind="summary", case=name, value=None, ratio=None, skipped=f"{stop} (during setup)")
            break
        jobs.run_job(rec, job, device, reps, batch, family_of(model).training_flops(model, args.channels), matmul,
                     case=name, batch=batch, channels=args.channels)
        del job, model, pixels
    return 0


if __name__ == "__main__":
    sys.exit(main())
