"""Loader throughput: crops/s and bytes read per format (PNG files, packed shards), DALI against the
PyTorch fallback with the same number of CPU workers, in one run.

    python -m benchmarks.bench_loader --quick            # < 1 minute on a 2-core CPU machine
    python -m benchmarks.bench_loader --device cuda      # the GPU path (DALI output on the GPU)

Data: a synthetic RxRx-style screen rendered into a temporary folder (or --data DIR, an existing
dataset) and its packed copy. Each run iterates one warm-up epoch (DataLoader workers started, first
DALI pipeline built), then times whole epochs (a DALI pipeline is rebuilt per epoch and counted). Bytes read: the
compressed files for PNG; for packed shards the crops' bytes (the region-of-interest read).
The last line is one JSON object: value = DALI crops/s on PNG, baseline = fallback crops/s on PNG,
ratio = value / baseline, plus the packed figures: packed_over_png (DALI on packed shards against DALI
on PNG, i.e. against maefast's fast PNG path) and packed_over_png_fallback (against the fallback on PNG).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch


def run_once(dataset, backend: str, args, epochs: int) -> dict:
    """One warm-up epoch (pipelines built, workers started), then `epochs` timed epochs."""
    from maefast.data import make_loader
    loader = make_loader(dataset, batch_size=args.batch, crop_size=args.crop, crops_per_image=args.crops_per_image,
                         seed=0, device=args.device, backend=backend, num_workers=args.workers)
    for _ in loader:
        pass
    crops, images = 0, []
    start = time.perf_counter()
    for _ in range(epochs):
        for batch in loader:
            crops += len(batch["pixels"])
            images += batch["index"][::args.crops_per_image].tolist()
    if args.device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    if dataset.layout == "packed":
        read = crops * dataset.dtype.itemsize * len(dataset.channels) * args.crop * args.crop
    else:
        read = sum(os.path.getsize(p) for row in images for p in dataset.channel_files(row))
    return dict(crops_per_s=crops / seconds, mb_read_per_s=read / seconds / 1e6, bytes_per_crop=read / max(crops, 1),
                crops=crops, seconds=seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small data set, one epoch (under a minute on CPU)")
    parser.add_argument("--data", default=None, help="an existing rxrx/jump dataset instead of the synthetic one")
    parser.add_argument("--sites", type=int, default=None, help="synthetic sites (default 48 quick, 400 otherwise)")
    parser.add_argument("--size", type=int, default=512, help="synthetic site size")
    parser.add_argument("--channels", type=int, default=6)
    parser.add_argument("--crop", type=int, default=256)
    parser.add_argument("--crops-per-image", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8, help="images per batch")
    parser.add_argument("--workers", type=int, default=2, help="DALI threads = DataLoader worker processes")
    parser.add_argument("--epochs", type=int, default=None, help="timed epochs of PNG (default 2; packed runs 3x as many)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    sites = args.sites or (96 if args.quick else 400)
    png_epochs = args.epochs or 2

    from maefast.data import open_dataset
    from maefast.data.packed import pack_dataset
    from maefast.data.synthetic import synth_screen
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        if args.data:
            source = open_dataset(args.data)
        else:
            genes = max(1, (sites // 2 - 8) // 2)  # 2 sites per well, 2 wells per gene, 2 plates x 2 controls
            source = open_dataset(synth_screen(Path(tmp) / "png", layout="rxrx", num_genes=genes, num_plates=2,
                                               num_experiments=1, controls_per_plate=2, size=args.size,
                                               channels=args.channels, workers=args.workers, progress=False))
        packed = open_dataset(pack_dataset(source, Path(tmp) / "packed", workers=args.workers, progress=False))
        results = {}
        for name, dataset, epochs in (("png", source, png_epochs), ("packed", packed, 3 * png_epochs)):
            for backend in ("torch", "dali"):
                results[name, backend] = r = run_once(dataset, backend, args, epochs)
                print(f"{name:7s} {backend:6s} {r['crops_per_s']:9.1f} crops/s  {r['mb_read_per_s']:8.1f} MB/s read  "
                      f"{r['bytes_per_crop'] / 1e3:8.1f} kB/crop  ({r['crops']} crops in {r['seconds']:.2f} s)",
                      flush=True)
    png_dali, png_torch = results["png", "dali"]["crops_per_s"], results["png", "torch"]["crops_per_s"]
    packed_dali = results["packed", "dali"]["crops_per_s"]
    device = (torch.cuda.get_device_name() if args.device == "cuda"
              else f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
    summary = dict(bench="loader", device=device, metric="crops/s, DALI on PNG", value=round(png_dali, 1),
                   baseline=round(png_torch, 1), ratio=round(png_dali / png_torch, 3),
                   packed_dali=round(packed_dali, 1), packed_torch=round(results["packed", "torch"]["crops_per_s"], 1),
                   packed_over_png=round(packed_dali / png_dali, 2),
                   packed_over_png_fallback=round(packed_dali / png_torch, 2), crop=args.crop, channels=len(packed.channels),
                   crops_per_image=args.crops_per_image, batch_images=args.batch, workers=args.workers,
                   image_size=list(source.image_shape), dtype=str(source.dtype), sites=len(source))
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
