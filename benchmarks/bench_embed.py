"""Embedding throughput: maefast's encoder against timm + SDPA (or, without timm, the reference's
pipeline on maefast's blocks) on the same weights, in one run.

    python benchmarks/bench_embed.py                      # GPU: ViT-L/8, 6 x 256 x 256, bf16
    python benchmarks/bench_embed.py --quick              # CPU smoke run, under a minute

Crops are random integer tensors already on the device (the loader has its own benchmark; `maefast
embed` reports end-to-end crops/s with the loader). Reports crops/s and MFU (FLOPs from maefast.flops,
matmul rate measured in the same run); the last line is the JSON summary.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_train import random_crops  # noqa: E402
from common import Recorder, matmul_tflops, parser, pick_device, time_interleaved  # noqa: E402
from reference_pipeline import reference_embed  # noqa: E402

import maefast  # noqa: E402
from maefast.flops import embedding_flops  # noqa: E402
from maefast.ops.patches import pixel_scale  # noqa: E402


def timm_baseline(encoder):
    """timm's VisionTransformer (ParallelScalingBlock, qk-norm, SDPA) holding the same weights."""
    import timm.models.vision_transformer as tv
    config = encoder.config
    model = tv.VisionTransformer(img_size=config.img_size, patch_size=config.patch_size, in_chans=config.in_chans,
                                 embed_dim=config.embed_dim, depth=config.depth, num_heads=config.num_heads,
                                 num_classes=0, global_pool=config.global_pool, class_token=True,
                                 init_values=config.init_values, block_fn=tv.ParallelScalingBlock,
                                 qkv_bias=False, qk_norm=True)
    model.load_state_dict(encoder.state_dict())
    model = model.to(encoder.cls_token.device).eval()

    def embed(pixels):
        images = F.instance_norm(pixels.float() / pixel_scale(pixels.dtype), eps=1e-5)
        return model.forward_features(images)[:, 1:].mean(dim=1)
    return embed


def main(argv=None) -> int:
    args_parser = parser(__doc__)
    args_parser.add_argument("--model", default="vit_large_patch8_256")
    args_parser.add_argument("--batch", type=int, default=128)
    args_parser.add_argument("--channels", type=int, default=6)
    args = args_parser.parse_args(argv)
    device = torch.device("cpu") if args.quick else pick_device(args.device)
    overrides = {"in_chans": args.channels}
    if args.quick:
        args.model, args.batch = "vit_debug_patch8_64", 64
        overrides.update(embed_dim=128, depth=4, num_heads=4)
    torch.manual_seed(0)
    encoder = maefast.create_model(args.model, **overrides).to(device).eval()
    pixels = random_crops(args.batch, args.channels, encoder.config.img_size, device)
    dtype = torch.bfloat16 if device.type == "cuda" else None
    use_timm = importlib.util.find_spec("timm") is not None
    baseline_fn = timm_baseline(encoder) if use_timm else (lambda x: reference_embed(encoder, x))

    def run(fn):
        def step():
            with torch.no_grad(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                fn(pixels)
        return step

    ms = time_interleaved({"maefast": run(encoder.embed), "baseline": run(baseline_fn)}, device,
                          reps=args.reps or (4 if args.quick else 10))
    ours, baseline = (args.batch / (ms[k] * 1e-3) for k in ("maefast", "baseline"))
    flops = embedding_flops(encoder.config, args.channels)
    matmul = matmul_tflops(device, dtype or torch.float32, n=8192 if device.type == "cuda" else 1024) * 1e12
    recorder = Recorder("embed", device, args.json_out)
    recorder.emit(kind="summary", model=args.model, batch=args.batch, channels=args.channels,
                  precision="bf16" if dtype else "fp32", baseline_kind="timm+sdpa" if use_timm else "reference-pipeline",
                  value=round(ours, 2), baseline=round(baseline, 2), ratio=round(ours / baseline, 3), unit="crops/s",
                  gflop_per_crop=round(flops / 1e9, 2), mfu=round(ours * flops / matmul, 4),
                  matmul_tflops=round(matmul / 1e12, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
