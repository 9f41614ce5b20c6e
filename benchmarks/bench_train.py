"""Training throughput: maefast against the public reference's pipeline on the same weights, one run.

    python benchmarks/bench_train.py                       # GPU: MAE ViT-L/8 and CA-MAE ViT-B/16, bf16
    python benchmarks/bench_train.py --model camae_vit_base_patch16_256 --batch 64
    python benchmarks/bench_train.py --quick               # CPU smoke run, under a minute

Full training steps (forward, backward, AdamW step) on random integer crops already on the device, so
this measures the model, not the loader (benchmarks/bench_loader.py does that). Reports crops/s and
MFU (FLOPs from maefast.flops over the matmul rate measured in the same run); prints one JSON object
per model and, last, the JSON summary line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e import bench_device, emit, random_crops, time_steps  # noqa: E402
from reference_pipeline import reference_forward  # noqa: E402

import maefast  # noqa: E402
from maefast.flops import model_training_flops  # noqa: E402
from maefast.train.observe import measure_matmul_rate  # noqa: E402

QUICK = dict(model="mae_vit_debug_patch8_64", overrides=dict(embed_dim=128, depth=4, num_heads=4), batch=32)


def train_rate(model, step_fn, pixels, steps: int, warmup: int, autocast_dtype) -> float:
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    device = pixels.device

    def one_step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = step_fn(pixels)
        loss.backward()
        optimizer.step()

    seconds = time_steps(one_step, steps, warmup, device)
    return pixels.shape[0] * steps / seconds


def bench_model(name: str, overrides: dict, batch: int, steps: int, warmup: int, device, channels: int) -> dict:
    torch.manual_seed(0)
    model = maefast.create_model(name, **overrides).to(device)
    pixels = random_crops(batch, channels, model.config.encoder.img_size, device)
    autocast_dtype = torch.bfloat16 if device.type == "cuda" else None
    ours = train_rate(model, lambda x: model(x)[0], pixels, steps, warmup, autocast_dtype)
    baseline = train_rate(model, lambda x: reference_forward(model, x)[0], pixels, steps, warmup, autocast_dtype)
    flops = model_training_flops(model, channels)
    matmul = measure_matmul_rate(device, autocast_dtype or torch.float32)
    return {"bench": "train", "device": bench_device(device), "model": name, "batch": batch, "channels": channels,
            "precision": "bf16" if autocast_dtype else "fp32", "value": ours, "baseline": baseline,
            "ratio": ours / baseline, "unit": "crops/s", "gflop_per_crop": flops / 1e9,
            "mfu": ours * flops / matmul, "baseline_mfu": baseline * flops / matmul, "matmul_tflops": matmul / 1e12}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", action="append", help="MAE model name (repeatable)")
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--channels", type=int, default=6)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="small model on the CPU, under a minute")
    args = parser.parse_args(argv)
    device = torch.device("cuda" if torch.cuda.is_available() and not args.quick else "cpu")
    if args.quick:
        runs = [(QUICK["model"], QUICK["overrides"] | {"in_chans": args.channels}, args.batch or QUICK["batch"])]
        args.steps, args.warmup = min(args.steps, 5), 2
    else:
        names = args.model or ["mae_vit_large_patch8_256", "camae_vit_base_patch16_256"]
        runs = [(n, {"in_chans": args.channels} if n.startswith("mae_") else {}, args.batch or 64) for n in names]
    results = [bench_model(n, o, b, args.steps, args.warmup, device, args.channels) for n, o, b in runs]
    for result in results[:-1]:
        emit(result)
    emit(results[-1])  # the summary line: last
    return 0


if __name__ == "__main__":
    sys.exit(main())
