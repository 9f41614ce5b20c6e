"""Loader throughput: crops/s and bytes read per format (PNG files, packed shards), DALI against the
PyTorch fallback with the same number of CPU workers, in one run; and a decode-only micro-benchmark.

    python -m benchmarks.bench_loader --quick            # < 1 minute on a 2-core CPU machine
    python -m benchmarks.bench_loader --device cuda      # the GPU path (DALI output on the GPU)
    python -m benchmarks.bench_loader --decode-only      # the decoders alone

Decoders: one 512x512 8-bit and one 16-bit synthetic channel saved by Pillow (zlib level 6, adaptive row
filters, as most tools write PNG). The inflate alone: maefast's (maefast._C.zlib_inflate), libdeflate's
(the `deflate` package: pip install -e ".[bench]") and zlib's; the whole PNG decode: maefast's, Pillow's and
DALI's (fn.decoders.image on the CPU, one thread, batches of 8). Each figure is the fastest of many single
calls, the decoders taking turns in a shuffled order, so that a busy machine slows them alike, its pauses
are left out and no decoder always finds the caches as the same other one left them.

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

from benchmarks import common
from maefast.errors import installed


def _device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


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


def _image_data(png: bytes) -> bytes:
    """The concatenated IDAT chunks: the zlib stream of a PNG."""
    import struct
    position, parts = 8, []
    while position + 12 <= len(png):
        length, kind = struct.unpack(">I4s", png[position:position + 8])
        if kind == b"IDAT":
            parts.append(png[position + 8:position + 8 + length])
        position += 12 + length
    return b"".join(parts)


def _dali_png_decoder(png: bytes, dtype, batch: int):
    """A callable that decodes `batch` copies of `png` with DALI's CPU decoder (one thread)."""
    import numpy as np
    from nvidia.dali import fn, pipeline_def, types
    encoded = [np.frombuffer(png, np.uint8)] * batch
    dali_type = types.UINT8 if dtype == np.uint8 else types.UINT16

    @pipeline_def(batch_size=batch, num_threads=1, device_id=None, exec_dynamic=True, prefetch_queue_depth=1)
    def pipeline():
        data = fn.external_source(source=lambda: encoded, batch=True)
        return fn.decoders.image(data, output_type=types.ANY_DATA, dtype=dali_type)

    pipe = pipeline()
    pipe.build()
    return lambda: pipe.run()


def decode_benchmark(size: int = 512, calls: int = 100) -> dict:
    """Milliseconds per 512x512 channel of each decoder (the fastest single call), for uint8 and uint16."""
    import io
    import zlib

    import numpy as np
    from PIL import Image

    from maefast import _C
    from maefast.data.render import render_sites
    results = {}
    for dtype in (np.uint8, np.uint16):
        image = render_sites(1, channels=1, size=size, seed=0, dtype=dtype)[0, 0]
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        png = buffer.getvalue()
        stream, raw_size = _image_data(png), (size * image.itemsize + 1) * size
        assert np.array_equal(_C.decode_png(png), image)
        batch = 8
        # the lambdas run before the loop moves on: binding stream, raw_size and png late is what is meant
        decoders = {"maefast inflate": (lambda: _C.zlib_inflate(stream, raw_size), 1),  # noqa: B023
                    "zlib inflate": (lambda: zlib.decompress(stream), 1),  # noqa: B023
                    "maefast png": (lambda: _C.decode_png(png), 1),  # noqa: B023
                    "pillow png": (lambda: np.asarray(Image.open(io.BytesIO(png))), 1)}  # noqa: B023
        try:
            import deflate
            assert deflate.zlib_decompress(stream, raw_size) == zlib.decompress(stream)
            decoders["libdeflate inflate"] = (lambda: deflate.zlib_decompress(stream, raw_size), 1)  # noqa: B023
        except ImportError:
            print("decode: libdeflate not measured: pip install deflate (or maefast[bench])")
        if installed("nvidia.dali"):
            decoders["dali png"] = (_dali_png_decoder(png, dtype, batch), batch)
        best = {name: float("inf") for name in decoders}
        order = np.random.default_rng(0)
        for _ in range(calls):
            for name in order.permutation(list(decoders)):  # no decoder always follows the same one
                decode, images = decoders[name]
                start = time.perf_counter()
                decode()
                best[name] = min(best[name], (time.perf_counter() - start) / images)
        name = np.dtype(dtype).name
        results[name] = {k: round(v * 1e3, 3) for k, v in best.items()}
        results[name]["png_kB"] = round(len(png) / 1e3, 1)
        print(f"decode {name:6s} {size}x{size} ({len(png) / 1e3:.0f} kB): "
              + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in best.items()), flush=True)
    return results


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
    parser.add_argument("--epochs", type=int, default=None,
                        help="timed epochs of PNG (default 2; packed runs 3x as many)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--decode-only", action="store_true", help="only the decode micro-benchmark")
    parser.add_argument("--json-out", default=None, help="also append the summary record to this JSON-lines file")
    args = parser.parse_args()
    decoding = decode_benchmark()
    if args.decode_only:
        print(json.dumps(dict(bench="decode", device=_device_name(args.device), ms_per_channel=decoding)))
        return
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
    packed_dali, packed_torch = results["packed", "dali"]["crops_per_s"], results["packed", "torch"]["crops_per_s"]
    summary = dict(metric="crops/s, DALI on PNG",
                   value=round(png_dali, 1), baseline=round(png_torch, 1), ratio=round(png_dali / png_torch, 3),
                   packed_dali=round(packed_dali, 1), packed_torch=round(packed_torch, 1),
                   packed_over_png=round(packed_dali / png_dali, 2),
                   packed_over_png_fallback=round(packed_dali / png_torch, 2), crop=args.crop,
                   channels=len(packed.channels), crops_per_image=args.crops_per_image, batch_images=args.batch,
                   workers=args.workers,
                   image_size=list(source.image_shape), dtype=str(source.dtype), sites=len(source),
                   decode_ms_per_channel=decoding)
    common.Recorder("loader", torch.device(args.device), args.json_out).emit(kind="summary", **summary)


if __name__ == "__main__":
    main()
