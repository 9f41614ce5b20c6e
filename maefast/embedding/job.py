"""The embedding job: full-size sites -> 256 x 256 tiles -> encoder -> one row per site, in shards.

The dataset's images are cut into shards of `shard_size` images (in table order); rank r of W embeds
shards r, r + W, ... Each shard is written atomically as shards/shard-00007.parquet (metadata columns +
feature_0000...); a shard file exists only when complete, so a restarted job skips what is done and
never reads a partial file. When every shard is done, rank 0 writes the well-level aggregate and
manifest.json (shards, rows, skipped images, job settings). job.json records the settings, the encoder's
weights (sha256) and the data set's fingerprint; a job restarted with other settings, weights or data is
refused rather than mixed. The output directory is locked: one job writes it at a time.
"""
from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from tqdm import tqdm

from maefast.distributed import DistributedContext, barrier, broadcast_object, run_on_main
from maefast.embedding.runner import COMPILE_CHOICES, TileEmbedder
from maefast.errors import UserInputError
from maefast.fields import matches
from maefast.io import atomic_path, read_json, read_table, write_json_atomic
from maefast.lock import OutputLock
from maefast.models.attention_setup import check_attention_choice
from maefast.records import changes, describe_changes

METADATA = ("id", "batch", "plate", "well", "site", "perturbation", "is_control")
JOB_FILE, MANIFEST_FILE = "job.json", "manifest.json"


@dataclass
class EmbedSettings:
    checkpoint: str               # where the encoder came from (compared through weights_sha256, not the path)
    weights_sha256: str = ""      # the encoder's weights file
    pool: str = "mean"            # mean | cls
    per_channel: bool = False     # CA-MAE: mean per channel, concatenated
    tile_size: int = 256
    batch_size: int = 64          # images per loader batch (each gives (H // tile) * (W // tile) tiles)
    shard_size: int = 1024        # images per output shard
    precision: str = "auto"       # auto (bf16 on CUDA) | bf16 | fp32
    channels: tuple = ()
    compile: str = "auto"         # auto (on CUDA: compiled, fixed shapes, CUDA graphs) | on | off
    attention: str = "auto"       # auto (on CUDA: the fastest, timed once) or an attention backend
    tile_batch: int | str = "auto"  # tiles per encoder forward; auto: on CUDA the largest that fits and
                                    # gets faster (timed once), elsewhere one loader batch's tiles
    blocks: list | None = None      # 0-based encoder blocks to embed, one row per site and block (a `block`
                                    # column); None: the final embedding only (no block column)

    def validate(self) -> None:
        if self.pool not in ("mean", "cls"):
            raise UserInputError(f"pool must be 'mean' or 'cls', got {self.pool!r}")
        if self.precision not in ("auto", "bf16", "fp32"):
            raise UserInputError(f"precision must be auto, bf16 or fp32, got {self.precision!r}")
        if self.compile not in COMPILE_CHOICES:
            raise UserInputError(f"compile must be one of {COMPILE_CHOICES}, got {self.compile!r}")
        check_attention_choice(self.attention)
        if self.tile_batch != "auto" and not (matches(self.tile_batch, int) and self.tile_batch >= 1):
            raise UserInputError(f"tile_batch must be 'auto' or a positive integer, got {self.tile_batch!r}")
        if self.blocks is not None and not (isinstance(self.blocks, (list, tuple)) and self.blocks
                                            and all(matches(b, int) and b >= 0 for b in self.blocks)):
            raise UserInputError(f"blocks must be a non-empty list of block indices, got {self.blocks!r}")
        for key in ("tile_size", "batch_size", "shard_size"):
            if getattr(self, key) < 1:
                raise UserInputError(f"{key} must be a positive integer, got {getattr(self, key)}")


def feature_columns(count: int) -> list[str]:
    return [f"feature_{i:04d}" for i in range(count)]


def shard_path(out: Path, index: int) -> Path:
    return out / "shards" / f"shard-{index:05d}.parquet"


def check_job(out: Path, settings: EmbedSettings, dataset) -> None:
    """Records the job's settings, weights and data; refuses to continue a job started with other ones."""
    record = {**asdict(settings), "data": dataset.fingerprint()}
    path = out / JOB_FILE
    if path.exists():
        differences = changes(read_json(path), record)
        differences.pop("checkpoint", None)  # the same weights may come from another path
        if differences:
            raise UserInputError(f"{out} holds an embedding job with other settings, weights or data: "
                                 f"{describe_changes(differences)}; use another --out or the same inputs")
    else:
        write_json_atomic(path, record)


def start_job(out: Path, settings: EmbedSettings, dataset) -> OutputLock:
    """Locks `out` for this job and checks it against the job it may continue."""
    lock = OutputLock(out, "maefast embed")
    try:
        check_job(out, settings, dataset)
    except BaseException:
        lock.release()
        raise
    return lock


def embed_shard(embedder: TileEmbedder, dataset, rows: np.ndarray, make_tiles, device,
                progress) -> tuple[pd.DataFrame, list, int]:
    """Embeddings of the images at `rows` (the mean over each image's tiles), the skipped images and the
    number of tiles embedded."""
    subset = dataset.subset(rows)
    loader = make_tiles(subset)
    sums, counts = None, torch.zeros(len(rows), dtype=torch.float64)
    for pixels, owners in regroup(loader, embedder.batch_tiles, device):
        features = embedder(pixels)  # (tiles, D), or (tiles, blocks, D)
        if sums is None:
            sums = torch.zeros(len(rows), *features.shape[1:], dtype=torch.float64)
        sums.index_add_(0, owners, features.double().cpu())
        counts.index_add_(0, owners, torch.ones(len(owners), dtype=torch.float64))
        progress.update(len(owners))
    skipped = list(getattr(loader, "skipped", []))
    done = counts > 0
    table = subset.table.loc[done.numpy()]
    if sums is None:  # every image of the shard was skipped
        return site_table(table, np.zeros((0, 0), np.float32)), skipped, 0
    means = sums[done] / counts[done].reshape(-1, *[1] * (sums.ndim - 1))
    return site_table(table, means.float().numpy(), embedder.blocks), skipped, int(counts.sum())


def regroup(loader, size: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """The loader's tiles in batches of `size` (the last one smaller), whatever its own batches hold:
    (pixels on `device`, index of each tile's image within the subset)."""
    pixels, owners, held = [], [], 0
    for batch in loader:
        pixels.append(batch["pixels"].to(device, non_blocking=True))
        owners.append(torch.as_tensor(batch["index"], dtype=torch.int64))
        held += len(owners[-1])
        while held >= size:
            all_pixels = torch.cat(pixels) if len(pixels) > 1 else pixels[0]
            all_owners = torch.cat(owners) if len(owners) > 1 else owners[0]
            yield all_pixels[:size], all_owners[:size]
            pixels, owners, held = [all_pixels[size:]], [all_owners[size:]], held - size
    if held:
        yield torch.cat(pixels), torch.cat(owners)


def site_table(table: pd.DataFrame, features: np.ndarray, blocks: list[int] | None = None) -> pd.DataFrame:
    """The output format: a data set's metadata columns (file paths left out), then feature_0000, ...

    With blocks, features are (sites, blocks, D) and each site has one row per block, its `block` column
    (the 0-based encoder block) after the metadata."""
    metadata = table[[c for c in table.columns if not c.startswith(("file_", "illum_", "shard_", "row_"))]]
    metadata = metadata.reset_index(drop=True)
    if blocks is None:
        return pd.concat([metadata, pd.DataFrame(features, columns=feature_columns(features.shape[1]))], axis=1)
    metadata = metadata.loc[np.repeat(metadata.index, len(blocks))].reset_index(drop=True)
    metadata["block"] = np.tile(np.asarray(blocks, dtype=np.int64), len(features))
    flat = features.reshape(len(features) * len(blocks), -1) if len(features) else np.zeros((0, 0), np.float32)
    return pd.concat([metadata, pd.DataFrame(flat, columns=feature_columns(flat.shape[1]))], axis=1)


def aggregate_wells(sites: pd.DataFrame) -> pd.DataFrame:
    """Mean feature vector per (batch, plate, well[, block]); the metadata every site of a well shares
    (perturbation, control flag, compound concentration, ...) carried along."""
    features = [c for c in sites.columns if c.startswith("feature_")]
    keys = [c for c in ("batch", "plate", "well", "block") if c in sites.columns]
    grouped = sites.groupby(keys, sort=True)
    wells = grouped[features].mean()
    metadata = [c for c in sites.columns if c not in features and c not in keys and c not in ("id", "site")]
    shared = grouped[metadata].nunique(dropna=False).max() <= 1
    carried = [c for c in metadata if shared[c]]
    wells[carried] = grouped[carried].first()
    wells["sites"] = grouped.size()
    return wells.reset_index()[keys + carried + ["sites"] + features]


def run_embedding(encoder, dataset, out, settings: EmbedSettings, make_tiles, device,
                  context: DistributedContext | None = None, show_progress: bool = True) -> dict:
    """Embeds `dataset` into `out`; `make_tiles(subset)` gives an iterable of tile batches
    (dict with pixels (N, C, s, s) and index (N,): each tile's row position within the subset).
    context: this rank's place under torchrun (rank 0 holds the output lock and writes the aggregate)."""
    settings.validate()
    out, context = Path(out), context or DistributedContext(device=device)
    lock = run_on_main(lambda: start_job(out, settings, dataset), context)
    try:
        return embed_shards(encoder, dataset, out, settings, make_tiles, device, context, show_progress)
    finally:
        if lock is not None:
            lock.release()


def embed_shards(encoder, dataset, out: Path, settings: EmbedSettings, make_tiles, device,
                 context: DistributedContext, show_progress: bool) -> dict:
    """This rank's missing shards, then (rank 0, once every shard is there) the aggregate and manifest."""
    rank, world_size = context.rank, context.world_size
    num_shards = -(-len(dataset) // settings.shard_size)
    mine = [k for k in range(rank, num_shards, world_size) if not shard_path(out, k).exists()]
    tiles_per_image = (dataset.image_shape[0] // settings.tile_size) * (dataset.image_shape[1] // settings.tile_size)
    embedder = TileEmbedder(encoder, pool=settings.pool, per_channel=settings.per_channel,
                            precision=settings.precision, device=device,
                            batch_tiles=settings.tile_batch, loader_tiles=settings.batch_size * tiles_per_image,
                            tile_shape=(len(dataset.channels), settings.tile_size, settings.tile_size),
                            compile=settings.compile, attention=settings.attention, blocks=settings.blocks,
                            out=out if rank == 0 else None, broadcast=lambda obj: broadcast_object(obj, context))
    total_tiles = sum(min(settings.shard_size, len(dataset) - k * settings.shard_size) for k in mine) * tiles_per_image
    progress = tqdm(total=total_tiles, unit="crop", desc=f"embed rank {rank}", disable=not show_progress)
    start, skipped_all, crops = time.perf_counter(), [], 0
    for index in mine:
        rows = np.arange(index * settings.shard_size, min((index + 1) * settings.shard_size, len(dataset)))
        frame, skipped, shard_crops = embed_shard(embedder, dataset, rows, make_tiles, device, progress)
        crops += shard_crops
        with atomic_path(shard_path(out, index)) as temporary:
            frame.to_parquet(temporary, index=False)
        if skipped:
            write_json_atomic(shard_path(out, index).with_suffix(".skipped.json"), [str(s) for s in skipped])
        skipped_all.extend(skipped)
        progress.set_postfix(crops_s=f"{crops / max(time.perf_counter() - start, 1e-9):.1f}")
    progress.close()
    barrier(context)
    summary = {"num_shards": num_shards, "embedded_here": len(mine), "tile_batch": embedder.batch_tiles,
               "crops_per_s": crops / max(time.perf_counter() - start, 1e-9)}
    if rank == 0:
        summary.update(finalize(out, num_shards))
    return summary


def finalize(out: Path, num_shards: int) -> dict:
    """Writes wells.parquet and manifest.json once every shard is complete."""
    missing = [k for k in range(num_shards) if not shard_path(out, k).exists()]
    if missing:
        return {"complete": False, "missing_shards": missing}
    sites = read_job(out, level="site", require_complete=False)
    with atomic_path(out / "wells.parquet") as temporary:
        aggregate_wells(sites).to_parquet(temporary, index=False)
    skipped = []
    for path in sorted((out / "shards").glob("*.skipped.json")):
        skipped.extend(read_json(path))
    manifest = {"complete": True, "shards": [shard_path(out, k).name for k in range(num_shards)],
                "sites": len(sites), "features": len([c for c in sites.columns if c.startswith("feature_")]),
                "skipped": skipped, "wells_file": "wells.parquet"}
    write_json_atomic(out / MANIFEST_FILE, manifest)
    return manifest


def read_job(out, level: str = "site", require_complete: bool = True) -> pd.DataFrame:
    """The embeddings of a finished job: one row per site (level='site') or per well (level='well')."""
    out = Path(out)
    if require_complete and not (out / MANIFEST_FILE).exists():
        raise FileNotFoundError(f"{out / MANIFEST_FILE} not found: the embedding job in {out} is not complete")
    if level == "well":
        return read_table(out / "wells.parquet")
    if level != "site":
        raise UserInputError(f"level must be 'site' or 'well', got {level!r}")
    shards = sorted((out / "shards").glob("shard-*.parquet"))
    return pd.concat([read_table(p) for p in shards], ignore_index=True)
