"""Training throughput: maefast against the public reference's pipeline on the same weights, one run.

    python benchmarks/bench_train.py                       # GPU: MAE ViT-L/8 and CA-MAE ViT-B/16, bf16
    python benchmarks/bench_train.py --model camae_vit_base_patch16_256 --batch 64
    python benchmarks/bench_train.py --quick               # CPU smoke run, under a minute

Full training steps (forward, backward, AdamW step) on random integer crops already on the device, so
this measures the model, not the loader (bench_loader.py does that). Reports crops/s and MFU (FLOPs from
maefast.flops over the matmul rate measured in the same run); the last line is the JSON summary.
"""
from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Recorder, matmul_tflops, parser, pick_device, time_interleaved  # noqa: E402
from reference_pipeline import reference_forward  # noqa: E402

import maefast  # noqa: E402
from maefast.flops import model_training_flops  # noqa: E402

QUICK = dict(model="mae_vit_debug_patch8_64", overrides=dict(embed_dim=128, depth=4, num_heads=4), batch=32)


def random_crops(batch: int, channels: int, size: int, device) -> torch.Tensor:
    """Random uint16 crops (never zeros) on `device`."""
    return torch.randint(1, 65535, (batch, channels, size, size), dtype=torch.int32).to(torch.uint16).to(device)


def training_step(model, loss_fn, pixels, autocast_dtype):
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(pixels.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = loss_fn(pixels)
        loss.backward()
        optimizer.step()
    return step


def bench_model(recorder, name: str, overrides: dict, batch: int, reps: int, device, channels: int) -> dict:
    torch.manual_seed(0)
    model = maefast.create_model(name, **overrides).to(device)
    pixels = random_crops(batch, channels, model.config.encoder.img_size, device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    ms = time_interleaved({"maefast": training_step(model, lambda x: model(x)[0], pixels, dtype),
                           "reference": training_step(model, lambda x: reference_forward(model, x)[0], pixels, dtype)},
                          device, reps=reps)
    ours, baseline = (batch / (ms[k] * 1e-3) for k in ("maefast", "reference"))
    flops = model_training_flops(model, channels)
    matmul = matmul_tflops(device, dtype or torch.float32, n=8192 if device.type == "cuda" else 1024) * 1e12
    return recorder.emit(model=name, batch=batch, channels=channels, precision="bf16" if dtype else "fp32",
                         value=round(ours, 2), baseline=round(baseline, 2), ratio=round(ours / baseline, 3),
                         unit="crops/s", gflop_per_crop=round(flops / 1e9, 2), mfu=round(ours * flops / matmul, 4),
                         baseline_mfu=round(baseline * flops / matmul, 4), matmul_tflops=round(matmul / 1e12, 2))


def main(argv=None) -> int:
    args_parser = parser(__doc__)
    args_parser.add_argument("--model", action="append", help="MAE model name (repeatable)")
    args_parser.add_argument("--batch", type=int, default=None)
    args_parser.add_argument("--channels", type=int, default=6)
    args = args_parser.parse_args(argv)
    device = torch.device("cpu") if args.quick else pick_device(args.device)
    recorder = Recorder("train", device, args.json_out)
    if args.quick:
        runs = [(QUICK["model"], {**QUICK["overrides"], "in_chans": args.channels}, args.batch or QUICK["batch"])]
    else:
        names = args.model or ["mae_vit_large_patch8_256", "camae_vit_base_patch16_256"]
        runs = [(n, {"in_chans": args.channels} if n.startswith("mae_") else {}, args.batch or 64) for n in names]
    results = [bench_model(recorder, n, o, b, args.reps or (4 if args.quick else 10), device, args.channels)
               for n, o, b in runs]
    first = results[0]  # the summary: the first model (ViT-L/8 MAE by default), last line
    recorder.emit(kind="summary", **{k: first[k] for k in ("model", "value", "baseline", "ratio", "unit", "mfu")})
    return 0


if __name__ == "__main__":
    sys.exit(main())
