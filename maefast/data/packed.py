"""`maefast data pack`: maefast's packed format, the fast path for training.

A packed dataset is a folder:

    manifest.json   format, channels (stored order), dtype, image_shape, source, the completed shards
                    (with their image ids and the images skipped), complete: true when done
    index.parquet   one row per packed image: the standard metadata columns plus shard (file name in
                    shards/) and row (position in that shard); written last
    shards/shard-00000.npy ...   numpy v1 files, each an array (n, C, H, W) uint8/uint16, C-contiguous,
                    so a crop (C, s, s) of one image is C * s runs of s pixels: a region-of-interest read

Each shard is written to a temporary name and renamed when complete, then recorded in the manifest, so an
interrupted run resumes with the next shard and a reader never sees a partial file.
"""
from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from maefast.data.dataset import PACKED_FORMAT, SOURCE_COLUMN_PREFIXES, Dataset
from maefast.data.decode import ImageReadError, check_error_policy
from maefast.data.torch_backend import ImageReader
from maefast.errors import UserInputError
from maefast.io import atomic_path, read_json, write_json_atomic


def pack_dataset(dataset: Dataset, out_dir, shard_images: int = 64, on_error: str = "raise", workers: int = 2,
                 progress: bool = True) -> Path:
    """Packs the dataset's selected channels (illumination-corrected if the dataset says so) into out_dir."""
    check_error_policy(on_error)
    if shard_images < 1:
        raise UserInputError(f"shard_images must be >= 1, got {shard_images}")
    out = Path(out_dir)
    settings = dict(format=PACKED_FORMAT, source=str(dataset.root), layout=dataset.layout,
                    channels=list(dataset.channels), dtype=dataset.dtype.name,
                    image_shape=list(dataset.image_shape), illumination=dataset.illumination,
                    shard_images=shard_images, num_images=len(dataset))
    manifest = _resume_manifest(out / "manifest.json", settings)
    reader, table = ImageReader(dataset), dataset.table
    count = -(-len(dataset) // shard_images)
    start, done_images, done_bytes = time.perf_counter(), 0, 0
    with ThreadPoolExecutor(workers) as pool:
        for k in range(count):
            name = f"shard-{k:05d}.npy"
            if name in manifest["shards"] and (out / "shards" / name).is_file():
                continue
            rows = range(k * shard_images, min((k + 1) * shard_images, len(dataset)))
            results = list(pool.map(lambda r: _read(reader, r), rows))
            kept = [(r, image) for r, image in zip(rows, results) if not isinstance(image, ImageReadError)]
            errors = [e for e in results if isinstance(e, ImageReadError)]
            if errors and on_error == "raise":
                raise errors[0]
            _write_shard(out / "shards" / name, [image for _, image in kept], dataset)
            manifest["shards"][name] = dict(ids=[str(table.at[r, "id"]) for r, _ in kept],
                                            skipped=[e.record() for e in errors])
            write_json_atomic(out / "manifest.json", manifest)
            done_images += len(rows)
            done_bytes += sum(image.nbytes for _, image in kept)
            if progress:
                elapsed = time.perf_counter() - start
                print(f"pack: shard {k + 1}/{count}, {done_images / elapsed:.1f} images/s, "
                      f"{done_bytes / elapsed / 1e6:.1f} MB/s written", flush=True)
    _write_index(out, dataset, manifest)
    manifest["complete"] = True
    write_json_atomic(out / "manifest.json", manifest)
    return out


def _read(reader: ImageReader, row: int):
    try:
        return reader.read_image(row)
    except ImageReadError as error:
        return error


def _resume_manifest(path: Path, settings: dict) -> dict:
    if not path.is_file():
        return dict(settings, shards={}, complete=False)
    manifest = read_json(path)
    different = {k: (manifest.get(k), v) for k, v in settings.items() if manifest.get(k) != v}
    if different:
        raise UserInputError(f"{path} was written with other settings {different}; pack into a new folder")
    return manifest


def _write_shard(path: Path, images: list[np.ndarray], dataset: Dataset) -> None:
    shape = (len(images), len(dataset.channels)) + tuple(dataset.image_shape)
    with atomic_path(path) as temporary:
        array = np.lib.format.open_memmap(temporary, mode="w+", dtype=dataset.dtype, shape=shape,
                                          version=(1, 0))
        for i, image in enumerate(images):
            array[i] = image
        array.flush()
        del array


def _write_index(out: Path, dataset: Dataset, manifest: dict) -> None:
    position = {}
    for name, entry in manifest["shards"].items():
        position.update({image_id: (name, row) for row, image_id in enumerate(entry["ids"])})
    table = dataset.table
    keep = table["id"].astype(str).isin(position.keys()).to_numpy()
    index = table.loc[keep, [c for c in table.columns if not c.startswith(SOURCE_COLUMN_PREFIXES)]].copy()
    index["shard"] = [position[str(i)][0] for i in index["id"]]
    index["row"] = np.array([position[str(i)][1] for i in index["id"]], np.int64)
    for column in index.columns:  # parquet needs one type per column
        if index[column].dtype == object:
            index[column] = index[column].map(lambda v: None if v is None else str(v))
    with atomic_path(out / "index.parquet") as temporary:
        index.reset_index(drop=True).to_parquet(temporary, index=False)
