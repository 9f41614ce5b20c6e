"""The pure-PyTorch fallback: a torch DataLoader whose workers read whole planned batches with
Pillow / tifffile (per-channel files) or numpy memory maps (packed shards, reading only the crop's bytes).

It executes the same plan (maefast.data.plan) as the DALI pipelines and gives the same pixels.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset as TorchDataset

from maefast.data.dataset import Dataset
from maefast.data.decode import ImageReadError, apply_illumination, read_channel
from maefast.data.plan import Batch, apply_augment


class ImageReader:
    """Reads images and crops of one Dataset; shared by the fallback loader, `data pack` and `data check`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._shards: dict[str, np.ndarray] = {}
        self._illum: dict[str, np.ndarray] = {}

    def read_image(self, row: int) -> np.ndarray:
        """The full image of table row `row`: (C, H, W) integer pixels of the selected channels."""
        d = self.dataset
        image_id = d.table.at[row, "id"]
        if d.layout == "packed":
            return np.array(self._shard(row)[d.table.at[row, "row"]][d.channel_index])
        illum = d.illum_files(row)
        channels = []
        for c, path in enumerate(d.channel_files(row)):
            array = read_channel(path, image_id)
            if array.shape != tuple(d.image_shape) or array.dtype != d.dtype:
                raise ImageReadError(path, f"expected {d.image_shape[0]}x{d.image_shape[1]} {d.dtype} like the "
                                           f"rest of the dataset, got {array.shape[0]}x{array.shape[1]} {array.dtype}",
                                     image_id, "format")
            if illum is not None:
                array = apply_illumination(array, self._illumination(illum[c]))
            channels.append(array)
        return np.stack(channels)

    def read_crops(self, row: int, anchors: np.ndarray, augment: np.ndarray, size: int) -> np.ndarray:
        """(K, C, size, size) crops of image `row` at anchors (K, 2), augmented by augment (K, 3)."""
        if self.dataset.layout == "packed":  # read only the crop's bytes from the memory map
            stored = self._shard(row)[self.dataset.table.at[row, "row"]]
            sources = [stored[:, y:y + size, x:x + size][self.dataset.channel_index] for y, x in anchors]
        else:
            image = self.read_image(row)
            sources = [image[:, y:y + size, x:x + size] for y, x in anchors]
        return np.stack([apply_augment(s, *a) for s, a in zip(sources, augment)])

    def _shard(self, row: int) -> np.ndarray:
        path = self.dataset.table.at[row, "shard"]
        if path not in self._shards:
            try:
                self._shards[path] = np.load(path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as error:
                raise ImageReadError(path, f"unreadable shard ({error})", self.dataset.table.at[row, "id"]) from error
        return self._shards[path]

    def _illumination(self, path: str) -> np.ndarray:
        if path not in self._illum:
            try:
                self._illum[path] = np.load(path, allow_pickle=False).astype(np.float32)
            except (OSError, ValueError) as error:
                raise ImageReadError(path, f"unreadable illumination function ({error})") from error
        return self._illum[path]


class _PlannedBatches(TorchDataset):
    """A map-style dataset whose keys are planned Batch objects: worker processes read whole batches."""

    def __init__(self, dataset: Dataset, crop_size: int, on_error: str):
        self.reader, self.crop_size, self.on_error = ImageReader(dataset), crop_size, on_error

    def __getitem__(self, batch: Batch):
        crops, keep, skipped = [], np.ones(len(batch.images), bool), []
        for i, row in enumerate(batch.images):
            try:
                crops.append(self.reader.read_crops(int(row), batch.anchors[i], batch.augment[i], self.crop_size))
            except ImageReadError as error:  # returned, not raised: worker exceptions lose their attributes
                keep[i] = False
                skipped.append(dict(id=error.image_id, path=error.path, reason=error.reason, kind=error.kind))
                if self.on_error == "raise":
                    break
        d = self.reader.dataset
        shape = (0, len(d.channels), self.crop_size, self.crop_size)
        pixels = np.concatenate(crops) if crops else np.empty(shape, d.dtype)
        return torch.from_numpy(pixels), keep, skipped


class _Feed:
    """The sampler: the batches of the current run, replaced before each run (workers persist)."""

    batches: list[Batch] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class TorchBackend:
    """Executes planned batches with a torch DataLoader of `num_workers` persistent processes (0: in this one)."""

    def __init__(self, dataset: Dataset, crop_size: int, num_workers: int = 2, on_error: str = "raise",
                 device: torch.device = torch.device("cpu")):
        self.dataset, self.on_error, self.device, self.feed = dataset, on_error, device, _Feed()
        workers = dict(num_workers=num_workers, persistent_workers=True, prefetch_factor=2,
                       # workers forked from a process running DALI threads can deadlock: start clean ones
                       multiprocessing_context="forkserver") if num_workers else {}
        self.loader = DataLoader(_PlannedBatches(dataset, crop_size, on_error), sampler=self.feed, batch_size=None,
                                 pin_memory=device.type == "cuda", **workers)

    def run(self, batches: list[Batch]):
        """Yields (batch with the images actually read, pixels (n*K, C, s, s) on the device, skipped)."""
        self.feed.batches = list(batches)
        for batch, (pixels, keep, skipped) in zip(self.feed.batches, self.loader):
            if skipped and self.on_error == "raise":
                first = skipped[0]
                raise ImageReadError(first["path"], first["reason"], first["id"], first["kind"])
            yield batch.without(np.asarray(keep)), pixels.to(self.device, non_blocking=True), skipped
