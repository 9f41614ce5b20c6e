"""The embedding job: full-size sites -> 256 x 256 tiles -> encoder -> one row per site, in shards.

The dataset's images are cut into shards of `shard_size` images (in table order); rank r of W embeds
shards r, r + W, ... Each shard is written atomically as shards/shard-00007.parquet (metadata columns +
feature_0000...); a shard file exists only when complete, so a restarted job skips what is done and
never reads a partial file. With blocks (EmbedConfig.blocks) each site has one row per chosen encoder block,
all from one forward, and a `block` column; wells are averaged per block. When every shard is done, rank 0
writes the well-level aggregate and manifest.json (shards, rows, the skipped images as records: id, path,
reason, kind). job.json records the settings the output depends on (with blocks, the block indices), the
encoder's weights (sha256) and the data set's fingerprint; a job restarted with other settings, weights or data
is refused rather than mixed. config.yaml holds the whole effective EmbedConfig of the latest start, and
attention.json / tile_batch.json what the job setup chose (maefast.job_setup), which a resumed job reuses. The
output directory is locked: one job writes it at a time.
"""
from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maefast.data.identity import compare_fingerprints
from maefast.distributed import DistributedContext, barrier, broadcast_object, run_on_main
from maefast.embedding.config import EmbedConfig
from maefast.embedding.runner import PooledEncoder, TileEmbedder, resolve_blocks
from maefast.errors import UserInputError
from maefast.io import atomic_path, read_json, read_table, write_json_atomic, write_yaml_atomic
from maefast.job_setup import (
    ATTENTION_FILE,
    JOB_CONFIG_FILE,
    TILE_BATCH_FILE,
    RunSetup,
    choose_attention,
    choose_tile_batch,
    embedding_step,
)
from maefast.lock import OutputLock
from maefast.models.checkpoint import ResolvedCheckpoint
from maefast.models.registry import input_config
from maefast.progress import Progress
from maefast.records import changes, describe_changes
from maefast.tables import BLOCK_COLUMN, feature_columns, feature_names

METADATA = ("id", "batch", "plate", "well", "site", "perturbation", "is_control")
JOB_FILE, MANIFEST_FILE = "job.json", "manifest.json"


# the settings the output depends on, recorded in job.json: a resumed job must have the same
RECORDED_SETTINGS = ("pool", "per_channel", "batch_size", "shard_size", "precision", "compile", "attention",
                     "tile_batch", "model_options")
OLD_COMPILE_VALUES = {"on": True, "off": False}  # job.json before compile took maefast.job_setup's vocabulary


def loader_tiles(config: EmbedConfig, images: int, tiles_per_image: int) -> int:
    """Tiles in the largest loader batch: batch_size images, or fewer when a shard (or the data set) is smaller."""
    return min(config.batch_size, config.shard_size, images) * tiles_per_image


def shard_path(out: Path, index: int) -> Path:
    return out / "shards" / f"shard-{index:05d}.parquet"


def job_record(config: EmbedConfig, checkpoint: ResolvedCheckpoint, tile_size: int, dataset,
               blocks: list[int] | None = None) -> dict:
    """What job.json holds: the output's settings, the checkpoint (compared by its weights' sha256, not its
    path), the tile size, the channels in their order and the data set's fingerprint; with blocks, the block
    indices embedded (as resolved, so "all" and the same indices written out are one job)."""
    record = {"checkpoint": str(checkpoint), "weights_sha256": checkpoint.sha256,
              **{key: getattr(config, key) for key in RECORDED_SETTINGS}, "tile_size": tile_size,
              "channels": list(dataset.channels), "data": dataset.fingerprint()}
    if blocks is not None:  # a job without blocks records what it did before blocks existed
        record["blocks"] = blocks
    return record


def upgrade_record(recorded: dict) -> dict:
    """A job.json of an earlier maefast in today's vocabulary (compile "on" / "off" -> true / false)."""
    compile = recorded.get("compile")
    return {**recorded, "compile": OLD_COMPILE_VALUES.get(compile, compile)} if "compile" in recorded else recorded


def check_job(out: Path, record: dict) -> None:
    """Records the job's settings, weights and data; refuses to continue a job started with other ones."""
    path = out / JOB_FILE
    if path.exists():
        recorded = upgrade_record(read_json(path))
        data_differences, note = compare_fingerprints(recorded.get("data"), record["data"])
        differences = changes({k: v for k, v in recorded.items() if k != "data"},
                              {k: v for k, v in record.items() if k != "data"})
        differences.pop("checkpoint", None)  # the same weights may come from another path
        differences.update({f"data.{k}": v for k, v in data_differences.items()})
        if differences:
            raise UserInputError(f"{out} holds an embedding job with other settings, weights or data: "
                                 f"{describe_changes(differences)}; use another --out or the same inputs")
        if note:  # a job of an older maefast: record the whole fingerprint from now on
            warnings.warn(f"{out}: {note}", stacklevel=3)
            write_json_atomic(path, {**recorded, "data": record["data"]})
    else:
        write_json_atomic(path, record)


def start_job(out: Path, config: EmbedConfig, record: dict) -> OutputLock:
    """Locks `out` for this job, checks it against the job it may continue and saves the effective config."""
    lock = OutputLock(out, "maefast embed")
    try:
        check_job(out, record)
        write_yaml_atomic(out / JOB_CONFIG_FILE, config.to_dict())
    except BaseException:
        lock.release()
        raise
    return lock


def embed_shard(embedder: TileEmbedder, dataset, rows: np.ndarray, make_tiles, device, progress,
                progress_values: dict) -> tuple[pd.DataFrame, list, int]:
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
        progress.update(len(owners), **progress_values)
    skipped = list(getattr(loader, "skipped", []))
    done = counts > 0
    table = subset.table.loc[done.numpy()]
    if sums is None:  # every image of the shard was skipped
        return site_table(table, np.zeros((0, 0), np.float32)), skipped, 0
    means = sums[done] / counts[done].reshape(-1, *[1] * (sums.ndim - 1))
    return site_table(table, means.float().numpy(), embedder.pooled.blocks), skipped, int(counts.sum())


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
    """The output format: a data set's metadata columns (file paths and shard positions left out), then
    feature_0000, ...

    With blocks, features are (sites, blocks, D) and each site has one row per block, its `block` column
    (the 0-based encoder block) after the metadata."""
    metadata = table[[c for c in table.columns if not c.startswith(("file_", "illum_", "shard_", "row_"))]]
    metadata = metadata.reset_index(drop=True)
    if blocks is not None:
        metadata = metadata.loc[np.repeat(metadata.index, len(blocks))].reset_index(drop=True)
        metadata[BLOCK_COLUMN] = np.tile(np.asarray(blocks, dtype=np.int64), len(features))
        features = features.reshape(len(features) * len(blocks), -1) if len(features) else np.zeros((0, 0), np.float32)
    return pd.concat([metadata, pd.DataFrame(features, columns=feature_names(features.shape[1]))], axis=1)


def aggregate_wells(sites: pd.DataFrame) -> pd.DataFrame:
    """Mean feature vector per (batch, plate, well[, block]); the metadata every site of a well shares
    (perturbation, control flag, compound concentration, ...) carried along."""
    features = feature_columns(sites, required=False)
    keys = [c for c in ("batch", "plate", "well", BLOCK_COLUMN) if c in sites.columns]
    grouped = sites.groupby(keys, sort=True)
    wells = grouped[features].mean()
    metadata = [c for c in sites.columns if c not in features and c not in keys and c not in ("id", "site")]
    shared = grouped[metadata].nunique(dropna=False).max() <= 1
    carried = [c for c in metadata if shared[c]]
    wells[carried] = grouped[carried].first()
    wells["sites"] = grouped.size()
    return wells.reset_index()[keys + carried + ["sites"] + features]


def run_embedding(encoder, dataset, out, config: EmbedConfig, checkpoint: ResolvedCheckpoint, make_tiles,
                  context: DistributedContext, show_progress: bool = True) -> dict:
    """Embeds `dataset` into `out` with `encoder` (from `checkpoint`); `make_tiles(subset)` gives an iterable
    of tile batches (dict with pixels (N, C, s, s) and index (N,): each tile's row position within the
    subset). context: this rank's place under torchrun (rank 0 holds the output lock and writes the records)."""
    config.validate()
    out = Path(out)
    blocks = resolve_blocks(config.blocks, encoder)
    record = job_record(config, checkpoint, input_config(encoder).img_size, dataset, blocks)
    lock = run_on_main(lambda: start_job(out, config, record), context)
    try:
        return embed_shards(encoder, dataset, out, config, blocks, make_tiles, context, show_progress)
    finally:
        if lock is not None:
            lock.release()


def setup_embedder(encoder, out: Path, config: EmbedConfig, blocks: list[int] | None,
                   tile_shape: tuple[int, int, int], loader_tiles: int, context: DistributedContext) -> TileEmbedder:
    """The job setup of an embedding job (maefast.job_setup): precision, tile batch, attention, compile; rank
    0 writes the records, which a resumed job reuses. blocks: resolve_blocks' indices, or None."""
    setup = RunSetup.resolve(context.device, config.precision, config.compile)
    pooled = PooledEncoder(encoder, pool=config.pool, per_channel=config.per_channel, setup=setup, blocks=blocks)

    def broadcast(obj):
        return broadcast_object(obj, context)

    def recorded(name: str) -> dict | None:  # rank 0 reads what the job being resumed chose
        return broadcast(read_json(out / name) if context.is_main and (out / name).exists() else None)

    tile_batch = choose_tile_batch(config.tile_batch, loader_tiles, pooled, tile_shape, setup,
                                   recorded=recorded(TILE_BATCH_FILE), broadcast=broadcast)
    tiles = tile_batch["tiles"]
    attention = choose_attention(pooled.encoder, config.attention, setup,
                                 embedding_step(pooled, tiles, tile_shape, setup),
                                 needs_grad=False, recorded=recorded(ATTENTION_FILE), broadcast=broadcast)
    if context.is_main:
        write_json_atomic(out / TILE_BATCH_FILE, tile_batch)
        write_json_atomic(out / ATTENTION_FILE, attention)
    return TileEmbedder(pooled, tiles, setup.compile)


def embed_shards(encoder, dataset, out: Path, config: EmbedConfig, blocks: list[int] | None, make_tiles,
                 context: DistributedContext, show_progress: bool) -> dict:
    """This rank's missing shards, then (rank 0, once every shard is there) the aggregate and manifest."""
    rank, world_size, device = context.rank, context.world_size, context.device
    num_shards = -(-len(dataset) // config.shard_size)
    mine = [k for k in range(rank, num_shards, world_size) if not shard_path(out, k).exists()]
    tile_size = input_config(encoder).img_size
    tiles_per_image = (dataset.image_shape[0] // tile_size) * (dataset.image_shape[1] // tile_size)
    embedder = setup_embedder(encoder, out, config, blocks, (len(dataset.channels), tile_size, tile_size),
                              loader_tiles(config, len(dataset), tiles_per_image), context)
    total_tiles = sum(min(config.shard_size, len(dataset) - k * config.shard_size) for k in mine) * tiles_per_image
    progress = Progress("embed", total_tiles, "crops", bar=show_progress, silent=not context.is_main)
    start, skipped_all, crops = time.perf_counter(), [], 0
    for index in mine:
        rows = np.arange(index * config.shard_size, min((index + 1) * config.shard_size, len(dataset)))
        rate = {"crops_s": crops / max(time.perf_counter() - start, 1e-9)} if crops else {}
        frame, skipped, shard_crops = embed_shard(embedder, dataset, rows, make_tiles, device, progress, rate)
        crops += shard_crops
        with atomic_path(shard_path(out, index)) as temporary:
            frame.to_parquet(temporary, index=False)
        if skipped:
            write_json_atomic(shard_path(out, index).with_suffix(".skipped.json"), skipped)
        skipped_all.extend(skipped)
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
                "sites": len(sites), "features": len(feature_columns(sites, required=False)),
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
