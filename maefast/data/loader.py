"""The loaders the training engine and the embedding job call.

    loader = make_loader(dataset, batch_size=256, crop_size=256, crops_per_image=4, seed=0,
                         rank=rank, world_size=world_size, device="cuda")
    for batch in loader:            # one epoch from the current position
        batch["pixels"]             # (n * crops_per_image, C, crop, crop) uint8/uint16 on the device
        batch["index"], batch["ids"]  # dataset row and image id of every crop
    state = loader.state_dict()     # {"epoch", "position", ...}; loader.load_state_dict(state) resumes there,
                                    # also on another world size (the same next image, see maefast.data.plan)

    tiles = make_tile_loader(dataset, batch_size=16, crop_size=256, rank=rank, world_size=world_size)
    for batch in tiles:             # pixels of every tile of 16 images; "index", "ids", "tile" per crop

Both backends ("dali" and "torch") execute the same plan (maefast.data.plan), so they give the same crops.
on_error="skip" drops unreadable images (loader.skipped lists them: id, path, reason); "raise" stops with
maefast.data.ImageReadError naming the file.
"""
from __future__ import annotations

import functools
import os
import warnings

import numpy as np
import torch

from maefast.choices import DALI_DEVICES, LOADER_BACKENDS
from maefast.data.dataset import Dataset
from maefast.data.decode import check_error_policy
from maefast.data.plan import TilePlan, TrainPlan
from maefast.data.storage import ReadAhead, is_remote
from maefast.errors import UserInputError, installed
from maefast.fields import matches
from maefast.limits import format_bytes, require_memory

READ_AHEAD_STEPS = 4  # steps whose objects are downloaded ahead of the loader (data on object storage)
# Batches a DALI pipeline runs ahead of the step. 2 is DALI's default; the GPU figure that should set it (and the
# thread count) is benchmarks/bench_loader.py --sweep on the GPU machine (benchmarks/RESULTS.md), not yet measured.
DEFAULT_PREFETCH = 2


class Loader:
    """Iterates a plan with a backend; keeps the position (epoch, images of it taken) and the skipped images."""

    def __init__(self, dataset: Dataset, plan, backend: str, device, on_error: str, num_workers: int,
                 tiles: bool = False, prefetch: int = DEFAULT_PREFETCH, dali_device: str = "auto"):
        check_error_policy(on_error)
        if backend not in LOADER_BACKENDS:
            raise UserInputError(f"backend must be one of {LOADER_BACKENDS}, got {backend!r}")
        if not (matches(num_workers, int) and num_workers >= 0):
            raise UserInputError(f"num_workers must be an integer >= 0 (0: read in this process), got {num_workers!r}")
        if not (matches(prefetch, int) and prefetch >= 1):
            raise UserInputError(f"prefetch must be an integer >= 1 (batches a DALI pipeline runs ahead), got "
                                 f"{prefetch!r}")
        if dali_device not in DALI_DEVICES:
            raise UserInputError(f"dali_device must be one of {DALI_DEVICES}, got {dali_device!r}")
        self.device = torch.device(device)
        if dali_device == "gpu" and self.device.type != "cuda":
            raise UserInputError(f"dali_device='gpu' runs the pipeline on the loader's GPU; the loader's device is "
                                 f"{self.device}")
        check_batch_memory(dataset, plan, num_workers, prefetch)
        self.dataset, self.plan, self.tiles = dataset, plan, tiles
        self.epoch, self.position, self.skipped = 0, 0, []
        crops = plan.crops_per_image
        self.backend = None
        self.remote = is_remote(dataset.root)
        if self.remote and backend == "dali":
            raise UserInputError(f"{dataset.root}: data on object storage is read by the PyTorch loader (through "
                                 f"maefast's local cache); choose backend 'torch' or 'auto'")
        if not self.remote and (backend == "dali" or (backend == "auto" and installed("nvidia.dali"))):
            from maefast.data.dali_backend import DaliBackend
            from maefast.data.dali_plugin import PluginUnavailable
            try:
                self.backend = DaliBackend(dataset, plan.crop_size, crops, plan.largest_batch(),
                                           augment=not tiles and plan.augment, num_threads=max(1, num_workers),
                                           on_error=on_error, device=self.device, prefetch=prefetch,
                                           dali_device=dali_device)
                backend = "dali"
            except PluginUnavailable as error:
                if backend == "dali":
                    raise
                warnings.warn(f"DALI loader unavailable, using the PyTorch fallback: {error}", stacklevel=3)
        if self.backend is None:
            from maefast.data.torch_backend import TorchBackend
            self.backend = TorchBackend(dataset, plan.crop_size, num_workers, on_error, self.device)

    def __len__(self) -> int:
        """Steps in one epoch (the same on every rank)."""
        return self.plan.steps()

    def __iter__(self):
        """The rest of the current epoch, from the position reached."""
        batches = list(self.plan.batches(self.epoch, self.position))
        crops, ids = self.plan.crops_per_image, self.dataset.ids
        # data on object storage: the objects of the next READ_AHEAD_STEPS steps are downloaded meanwhile
        read_ahead = ReadAhead() if self.remote else None
        # the batches after this epoch, which the DALI pipeline reads ahead into (the next epoch continues it)
        following = functools.partial(self.plan.batches_after, self.epoch)
        try:
            for upcoming in batches[:READ_AHEAD_STEPS] if read_ahead else ():
                read_ahead.fetch(self.dataset.files_read(upcoming.images))
            for number, (batch, pixels, skipped) in enumerate(self.backend.run(batches, following)):
                if read_ahead is not None and number + READ_AHEAD_STEPS < len(batches):
                    read_ahead.fetch(self.dataset.files_read(batches[number + READ_AHEAD_STEPS].images))
                self.skipped += skipped
                index = np.repeat(batch.images, crops)
                out = dict(pixels=pixels, index=torch.from_numpy(index), ids=list(ids[index]),
                           epoch=self.epoch, step=batch.step)
                if self.tiles:
                    out["tile"] = torch.from_numpy(np.tile(np.arange(crops), len(batch.images)))
                self.position = batch.end
                yield out
        finally:  # also when the consumer stops mid-epoch
            if read_ahead is not None:
                read_ahead.close()
        self.epoch, self.position = self.epoch + 1, 0

    def state_dict(self) -> dict:
        return dict(epoch=self.epoch, position=self.position, seed=getattr(self.plan, "seed", None),
                    world_size=self.plan.world_size, batch_size=self.plan.batch_size,
                    num_images=self.plan.num_images, skipped=list(self.skipped))

    def load_state_dict(self, state: dict) -> None:
        """Resumes at the saved position; a training loader also on another world size or batch size (a tile
        loader's position is its rank's own, so it needs the same world size)."""
        fixed = ("seed", "num_images") if isinstance(self.plan, TrainPlan) else ("seed", "world_size", "num_images")
        for key in fixed:
            if state.get(key) != self.state_dict()[key]:
                raise UserInputError(f"loader state: {key} is {state.get(key)} in the saved state but "
                                     f"{self.state_dict()[key]} here; the position would not mean the same images")
        if "position" in state:
            position = int(state["position"])
        else:  # saved by maefast before positions: steps of batch_size * world_size images
            position = min(int(state["step"]) * int(state["batch_size"]) * int(state["world_size"]),
                           self.plan.num_images)
        self.epoch, self.position, self.skipped = int(state["epoch"]), position, list(state["skipped"])


def check_batch_memory(dataset: Dataset, plan, num_workers: int, prefetch: int = DEFAULT_PREFETCH) -> None:
    """Refuses a plan whose batches in flight (DALI's prefetch queue or the DataLoader workers' prefetched
    batches, plus the one in use and the one being read) and decoding buffers (per reader, a whole image's file
    and planes) would not fit in memory, before a single one is allocated."""
    images = plan.largest_batch()
    itemsize, channels = np.dtype(dataset.dtype).itemsize, len(dataset.channels)
    in_flight = max(prefetch + 2, 2 * num_workers + 2)
    total = in_flight * images * plan.crops_per_image * channels * plan.crop_size ** 2 * itemsize
    decoding = ""
    if dataset.layout != "packed":  # shards are memory-mapped: a crop reads only its rows
        height, width = dataset.image_shape
        buffers = 2 * max(1, num_workers) * channels * height * width * itemsize
        total += buffers
        decoding = f" and {format_bytes(buffers)} to decode {height}x{width} images"
    crops = "" if isinstance(plan, TilePlan) else f"crops_per_image={plan.crops_per_image}, "
    require_memory(total, f"{crops}batch_size={plan.batch_size}: {in_flight} batches in flight of {images} images x "
                          f"{plan.crops_per_image} crops of {channels}x{plan.crop_size}x{plan.crop_size} "
                          f"{np.dtype(dataset.dtype)}{decoding}")


def _workers(num_workers):
    return min(2, os.cpu_count() or 1) if num_workers is None else num_workers


def make_loader(dataset: Dataset, batch_size: int, crop_size: int = 256, crops_per_image: int = 1, seed: int = 0,
                rank: int = 0, world_size: int = 1, device="cpu", backend: str = "auto", on_error: str = "raise",
                augment: bool = True, drop_last: bool = False, num_workers: int | None = None,
                prefetch: int = DEFAULT_PREFETCH, dali_device: str = "auto") -> Loader:
    """Training crops: batch_size images per step and rank, crops_per_image random crops of each.

    num_workers: DALI threads or DataLoader processes (default: min(2, CPU count)). prefetch: batches a DALI
    pipeline runs ahead. dali_device: where a DALI pipeline decodes, crops and flips: "auto" (the loader's
    device: on a GPU, JPEG / JPEG 2000 decoded by nvJPEG / nvJPEG2000 and crops flipped there), "cpu" (every
    stage on the host; a GPU loader's finished crops are moved to it), "gpu".
    """
    plan = TrainPlan(len(dataset), dataset.image_shape, batch_size, crop_size, crops_per_image, seed, rank,
                     world_size, augment, drop_last)
    return Loader(dataset, plan, backend, device, on_error, _workers(num_workers), prefetch=prefetch,
                  dali_device=dali_device)


def make_tile_loader(dataset: Dataset, batch_size: int, crop_size: int = 256, rank: int = 0, world_size: int = 1,
                     device="cpu", backend: str = "auto", on_error: str = "raise",
                     num_workers: int | None = None, prefetch: int = DEFAULT_PREFETCH,
                     dali_device: str = "auto") -> Loader:
    """Embedding tiles: batch_size images per step, each cut into its non-overlapping crop_size tiles."""
    plan = TilePlan(len(dataset), dataset.image_shape, batch_size, crop_size, rank, world_size)
    return Loader(dataset, plan, backend, device, on_error, _workers(num_workers), tiles=True, prefetch=prefetch,
                  dali_device=dali_device)
