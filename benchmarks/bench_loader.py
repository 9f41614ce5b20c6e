"""Loader throughput: crops/s and the CPU cores used, per layout and loader, in one run; and the decoders alone.

    python -m benchmarks.bench_loader --quick          # CPU smoke run (a few minutes on 2 cores): DALI CPU vs torch
    python -m benchmarks.bench_loader                  # on a GPU: every layout, DALI GPU vs DALI CPU vs torch
    python -m benchmarks.bench_loader --sweep          # on a GPU: DALI GPU's threads x prefetch on packed and JPEG 2000
    python -m benchmarks.bench_loader --decode-only    # the decoders alone, one channel at a time

Layouts (one synthetic screen, the same sites in each; or --data DIR for one existing data set): png (the RxRx
layout), tiff (the JUMP layout), packed (`maefast data pack` of the PNG screen), jpeg2000 (JUMP table of
lossless .jp2 files), rxrx3-core (RxRx3-core's parquet shards of lossless JPEG 2000 rows) and jpeg (JUMP table of
8-bit .jpg files, quality 90). Loaders: torch (the DataLoader with maefast's readers, Pillow for JPEG, imagecodecs
for JPEG 2000), dali-cpu (every DALI stage on the host; on a GPU the finished
crops are moved there) and dali-gpu (the GPU pipeline: JPEG / JPEG 2000 decoded by nvJPEG / nvJPEG2000, crops
flipped and stacked on the GPU, handed over without a copy). DALI threads = DataLoader worker processes
(--workers, default every core on a GPU machine, 2 on --quick).

Each (layout, loader): one warm-up epoch (pipelines built, workers started), then whole epochs until --seconds
have passed; crops/s counts the crops delivered on the loader's device (a CUDA synchronize ends the timing);
cores = CPU seconds of the process and its worker processes over the wall seconds of the timed epochs.
Summaries, the targets of issue 25 (benchmarks/RESULTS.md): packed, dali-gpu crops/s (target >= 8,000 with 16
host cores); jpeg2000 and rxrx3-core, dali-gpu against the strongest CPU decode in the same run (dali-cpu or
torch, target >= 3x). On a CPU: DALI against the PyTorch fallback per layout. The decode micro-benchmark times
PNG decoders (maefast's inflate and PNG decoder, libdeflate's, zlib's, Pillow's, DALI's CPU one) and JPEG 2000
decoders (Pillow, imagecodecs, DALI CPU, DALI GPU) on one 512 x 512 channel: the fastest call of many, decoders
taking turns.
"""
from __future__ import annotations

import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import common
from maefast.errors import installed

# the targets' layouts first: a time limit cuts the last
LAYOUTS = ("packed", "jpeg2000", "rxrx3-core", "png", "tiff", "jpeg")
JPEG2000_LAYOUTS = ("jpeg2000", "rxrx3-core")  # the JPEG 2000 target's: per-channel files, RxRx3-core's shards
CODECS = {"tiff": "tiff", "jpeg2000": "jpeg2000", "jpeg": "jpeg"}  # the JUMP layout's channel files


def cpu_seconds() -> float:
    """CPU seconds (user + system) of this process and every process below it (DataLoader workers and
    multiprocessing's forkserver), from /proc; this process and its waited-for children elsewhere."""
    tick = os.sysconf("SC_CLK_TCK")
    try:
        stats = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit():
                try:
                    fields = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                stats[int(entry)] = (int(fields[1]), (int(fields[11]) + int(fields[12])) / tick)  # ppid, utime+stime
    except OSError:
        stats = {}
    if os.getpid() not in stats:
        times = os.times()
        return times.user + times.system + times.children_user + times.children_system
    tree, total, grew = {os.getpid()}, 0.0, True
    while grew:
        grew = False
        for pid, (parent, _) in stats.items():
            if parent in tree and pid not in tree:
                tree.add(pid)
                grew = True
    for pid in tree:
        total += stats[pid][1]
    return total


def measure(dataset, backend: str, args, device: torch.device, workers: int, prefetch: int = 2) -> dict:
    """One warm-up epoch, then epochs until args.seconds: crops/s, MB/s read, cores used."""
    from maefast.data import make_loader
    loader_backend, dali_device = ("torch", "auto") if backend == "torch" else ("dali", backend.split("-")[1])
    loader = make_loader(dataset, batch_size=args.batch, crop_size=args.crop, crops_per_image=args.crops_per_image,
                         seed=0, device=device, backend=loader_backend, num_workers=workers, prefetch=prefetch,
                         dali_device=dali_device)
    for _ in loader:
        pass
    synchronize = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    synchronize()
    crops, images, epochs = 0, [], 0
    cpu, start = cpu_seconds(), time.perf_counter()
    while epochs == 0 or time.perf_counter() - start < args.seconds:
        for batch in loader:
            crops += len(batch["pixels"])
            images += batch["index"][::args.crops_per_image].tolist()
        epochs += 1
    synchronize()
    seconds, cpu = time.perf_counter() - start, cpu_seconds() - cpu
    if dataset.layout == "packed":
        read = crops * dataset.dtype.itemsize * len(dataset.channels) * args.crop * args.crop
    elif dataset.layout == "rxrx3-core":  # its parquet shards' bytes per site, for each site read
        read = sum(os.path.getsize(p) for p in set(dataset.files_read())) / len(dataset) * len(images)
    else:
        read = sum(os.path.getsize(p) for row in images for p in dataset.channel_files(row))
    return dict(crops_per_s=round(crops / seconds, 1), mb_read_per_s=round(read / seconds / 1e6, 1),
                kb_per_crop=round(read / max(crops, 1) / 1e3, 1), cores=round(cpu / seconds, 2), crops=crops,
                seconds=round(seconds, 2), epochs=epochs, threads=workers, prefetch=prefetch)


def screens(folder: Path, args):
    """(layout, Dataset) of the synthetic screen in each layout (the same sites), each written when it is
    reached (synth_screen skips the sites a folder already holds: the PNG screen serves png and packed)."""
    from maefast.data import open_dataset
    from maefast.data.packed import pack_dataset
    from maefast.data.synthetic import synth_screen
    genes = max(1, (args.sites // 2 - 8) // 2)  # 2 sites per well, 2 wells per gene, 2 plates x 2 controls
    design = dict(num_genes=genes, num_plates=2, num_experiments=1, controls_per_plate=2, size=args.size,
                  channels=args.channels, workers=args.workers, progress=False)
    for layout in args.layouts:
        start = time.perf_counter()
        if layout in ("png", "packed"):
            dataset = open_dataset(synth_screen(folder / "png", layout="rxrx", bit_depth=args.bit_depth, **design))
            if layout == "packed":
                dataset = open_dataset(pack_dataset(dataset, folder / layout, workers=args.workers, progress=False))
        elif layout == "rxrx3-core":  # the screen's sites as lossless JPEG 2000 rows of parquet shards
            dataset = open_dataset(synth_screen(folder / layout, layout=layout, codec="jpeg2000",
                                                bit_depth=args.bit_depth, **design))
        else:
            bits = 8 if layout == "jpeg" else args.bit_depth
            dataset = open_dataset(synth_screen(folder / layout, layout="jump", codec=CODECS[layout], bit_depth=bits,
                                                **design))
        print(f"{layout}: {len(dataset)} sites written in {time.perf_counter() - start:.0f} s", flush=True)
        yield layout, dataset


def backends_for(device: torch.device) -> list[str]:
    if not installed("nvidia.dali"):
        return ["torch"]
    return ["torch", "dali-cpu", "dali-gpu"] if device.type == "cuda" else ["torch", "dali-cpu"]


def run_layouts(rec: common.Recorder, datasets, args, device: torch.device) -> dict:
    results = {}
    for layout, dataset in datasets:
        for backend in backends_for(device):
            if common.stopped():
                return results
            try:
                result = measure(dataset, backend, args, device, args.workers)
            except common.TimeLimit as stop:  # the suite's limit: summarize what was measured
                rec.emit(kind="loader", case=layout, backend=backend, skipped=str(stop))
                return results
            except Exception as error:  # a loader that fails is reported, the others still measured
                rec.emit(kind="loader", case=layout, backend=backend, skipped=common.describe_error(error))
                continue
            results[layout, backend] = result
            rec.emit(kind="loader", case=layout, backend=backend, unit="crops/s", value=result["crops_per_s"],
                     dtype=str(dataset.dtype), image_size=list(dataset.image_shape), **result)
    return results


def summarize(rec: common.Recorder, results: dict, device: torch.device, args) -> None:
    def rate(layout, backend):
        return results.get((layout, backend), {}).get("crops_per_s")

    settings = dict(crop=args.crop, crops_per_image=args.crops_per_image, batch_images=args.batch,
                    channels=args.channels, threads=args.workers, sites=args.sites, size=args.size)
    if device.type == "cuda":
        value, baseline = rate("packed", "dali-gpu"), rate("packed", "torch")
        rec.emit(kind="summary", case="packed", backend="dali-gpu", unit="crops/s", value=value, target=8000,
                 baseline=baseline, vs="torch", cores=results.get(("packed", "dali-gpu"), {}).get("cores"),
                 ratio=round(value / baseline, 3) if value and baseline else None, **settings)
        for layout in JPEG2000_LAYOUTS:
            cpu = {backend: rate(layout, backend) for backend in ("dali-cpu", "torch") if rate(layout, backend)}
            strongest = max(cpu, key=cpu.get) if cpu else None
            value = rate(layout, "dali-gpu")
            rec.emit(kind="summary", case=layout, backend="dali-gpu", unit="crops/s", value=value,
                     baseline=cpu.get(strongest), vs=f"{strongest} (CPU decode)", target=3.0,
                     ratio=round(value / cpu[strongest], 3) if value and strongest else None, **settings)
        return
    for layout in args.layouts:
        value, baseline = rate(layout, "dali-cpu"), rate(layout, "torch")
        rec.emit(kind="summary", case=layout, backend="dali-cpu", unit="crops/s", value=value, baseline=baseline,
                 vs="torch", ratio=round(value / baseline, 3) if value and baseline else None, **settings)


def sweep(rec: common.Recorder, datasets, args, device: torch.device) -> None:
    """DALI GPU at several thread counts and prefetch depths (--layouts; default packed and jpeg2000): the data
    for the defaults."""
    cores = os.cpu_count() or 1
    threads = sorted({t for t in (2, 4, 8, 16, cores) if t <= cores})
    for layout, dataset in datasets:
        best = None
        for count in threads:
            for prefetch in (1, 2, 4):
                if common.stopped():
                    return
                result = measure(dataset, "dali-gpu", args, device, count, prefetch)
                rec.emit(kind="sweep", case=layout, backend="dali-gpu", unit="crops/s", value=result["crops_per_s"],
                         **result)
                if best is None or result["crops_per_s"] > best["crops_per_s"]:
                    best = result
        rec.emit(kind="summary", case=f"{layout} sweep", backend="dali-gpu", unit="crops/s",
                 value=best["crops_per_s"], best_threads=best["threads"], best_prefetch=best["prefetch"],
                 cores=best["cores"])


# ---------------------------------------------------------------------------------------------- decoders alone

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


def _dali_decoder(encoded: bytes, dtype, batch: int, device: str):
    """A callable that decodes `batch` copies of an image with DALI's decoder on `device` (cpu: one thread;
    mixed: the GPU, its result synchronized)."""
    from nvidia.dali import fn, pipeline_def, types
    copies = [np.frombuffer(encoded, np.uint8)] * batch
    dali_type = types.UINT8 if dtype == np.uint8 else types.UINT16
    gpu = device == "mixed"

    @pipeline_def(batch_size=batch, num_threads=1, device_id=0 if gpu else None, exec_dynamic=True,
                  prefetch_queue_depth=1)
    def pipeline():
        data = fn.external_source(source=lambda: copies, batch=True)
        return fn.decoders.image(data, device=device, output_type=types.GRAY, dtype=dali_type,
                                 adjust_orientation=False)

    pipe = pipeline()
    pipe.build()

    def run():
        (out,) = pipe.run()
        if gpu:
            out.as_cpu()
    return run


def decode_benchmark(size: int = 512, calls: int = 100, cuda: bool = False) -> dict:
    """Milliseconds per size x size channel of each decoder (the fastest single call), for uint8 and uint16."""
    import io
    import zlib

    from PIL import Image

    from maefast import _C
    from maefast.data.render import render_sites
    results = {}
    for dtype in (np.uint8, np.uint16):
        image = render_sites(1, channels=1, size=size, seed=0, dtype=dtype)[0, 0]
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="PNG")
        png = buffer.getvalue()
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="JPEG2000", irreversible=False)
        jp2 = buffer.getvalue()
        stream, raw_size = _image_data(png), (size * image.itemsize + 1) * size
        assert np.array_equal(_C.decode_png(png), image)
        batch = 8
        # the lambdas run before the loop moves on: binding stream, raw_size, png and jp2 late is what is meant
        decoders = {"maefast inflate": (lambda: _C.zlib_inflate(stream, raw_size), 1),  # noqa: B023
                    "zlib inflate": (lambda: zlib.decompress(stream), 1),  # noqa: B023
                    "maefast png": (lambda: _C.decode_png(png), 1),  # noqa: B023
                    "pillow png": (lambda: np.asarray(Image.open(io.BytesIO(png))), 1),  # noqa: B023
                    "pillow jpeg2000": (lambda: np.asarray(Image.open(io.BytesIO(jp2))), 1)}  # noqa: B023
        if installed("imagecodecs"):  # the torch loader's JPEG 2000 decoder (maefast.data.decode.decode_jpeg2000)
            import imagecodecs
            decoders["imagecodecs jpeg2000"] = (lambda: imagecodecs.jpeg2k_decode(jp2, numthreads=1), 1)  # noqa: B023
        try:
            import deflate
            assert deflate.zlib_decompress(stream, raw_size) == zlib.decompress(stream)
            decoders["libdeflate inflate"] = (lambda: deflate.zlib_decompress(stream, raw_size), 1)  # noqa: B023
        except ImportError:
            print("decode: libdeflate not measured: pip install deflate (or maefast[bench])")
        if installed("nvidia.dali"):
            decoders["dali png"] = (_dali_decoder(png, dtype, batch, "cpu"), batch)
            decoders["dali jpeg2000"] = (_dali_decoder(jp2, dtype, batch, "cpu"), batch)
            if cuda:
                decoders["dali jpeg2000 gpu"] = (_dali_decoder(jp2, dtype, 64, "mixed"), 64)
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
        results[name].update(png_kB=round(len(png) / 1e3, 1), jpeg2000_kB=round(len(jp2) / 1e3, 1))
        print(f"decode {name:6s} {size}x{size} (PNG {len(png) / 1e3:.0f} kB, JPEG 2000 {len(jp2) / 1e3:.0f} kB): "
              + ", ".join(f"{k} {v * 1e3:.3f} ms" for k, v in best.items()), flush=True)
    return results


def main(argv=None) -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--data", default=None, help="an existing data set instead of the synthetic screens")
    parser.add_argument("--layouts", default=None, help=f"of {', '.join(LAYOUTS)} (default: all; --sweep: packed, "
                                                         "jpeg2000)")
    parser.add_argument("--sites", type=int, default=None, help="synthetic sites (default 200; --quick 32)")
    parser.add_argument("--size", type=int, default=None, help="synthetic site size (default 512; --quick 256)")
    parser.add_argument("--bit-depth", type=int, choices=(8, 16), default=16, help="of the screen (jpeg: 8)")
    parser.add_argument("--channels", type=int, default=6)
    parser.add_argument("--crop", type=int, default=None, help="crop size (default 256; --quick 128)")
    parser.add_argument("--crops-per-image", type=int, default=2)
    parser.add_argument("--batch", type=int, default=32, help="images per batch")
    parser.add_argument("--workers", type=int, default=None,
                        help="DALI threads = DataLoader worker processes (default: every core; --quick 2)")
    parser.add_argument("--seconds", type=float, default=None, help="timed seconds per measurement (default 6; "
                                                                    "--quick 2)")
    parser.add_argument("--sweep", action="store_true", help="DALI GPU threads x prefetch on packed and jpeg2000")
    parser.add_argument("--decode-only", action="store_true", help="only the decode micro-benchmark")
    args = parser.parse_args(argv)
    device = torch.device("cpu") if args.quick else common.pick_device(args.device)
    rec = common.Recorder("loader", device, args.json_out)
    common.stop_on_sigterm()
    if args.decode_only:
        rec.emit(kind="summary", case="decode", unit="ms per channel",
                 value=decode_benchmark(calls=20 if args.quick else 100, cuda=device.type == "cuda"))
        return 0
    args.sites = args.sites or (32 if args.quick else 200)
    args.size = args.size or (256 if args.quick else 512)
    args.crop = args.crop or (128 if args.quick else 256)
    args.workers = args.workers or (2 if args.quick else os.cpu_count() or 1)
    args.seconds = args.seconds or (2.0 if args.quick else 6.0)
    args.layouts = [layout.strip() for layout in (args.layouts or ("packed,jpeg2000" if args.sweep else
                                                                   ",".join(LAYOUTS))).split(",")]
    if unknown := set(args.layouts) - set(LAYOUTS):
        parser.error(f"unknown layouts {sorted(unknown)}; choose from {', '.join(LAYOUTS)}")
    print(f"bench_loader on {common.device_name(device)} ({platform.machine()}, {os.cpu_count()} cores): "
          f"{args.sites} sites of {args.channels}x{args.size}x{args.size}, {args.crops_per_image} crops of "
          f"{args.crop} per image, {args.batch} images per batch, {args.workers} threads / workers", flush=True)
    with tempfile.TemporaryDirectory(prefix="bench_loader_") as folder:
        try:
            if args.data:
                from maefast.data import open_dataset
                dataset = open_dataset(args.data)
                args.layouts = [dataset.layout]
                datasets = [(dataset.layout, dataset)]
            else:
                datasets = screens(Path(folder), args)
            if args.sweep:
                sweep(rec, datasets, args, device)
            else:
                summarize(rec, run_layouts(rec, datasets, args, device), device, args)
        except common.TimeLimit as stop:
            rec.emit(kind="summary", case="loader", value=None, skipped=str(stop))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
