"""The pure-PyTorch fallback: a torch DataLoader whose workers read whole planned batches with maefast's
readers (maefast.data.decode: per-channel files decoded by the same C++ code as the DALI operators; packed
shards as numpy memory maps, reading only the crop's bytes).

It executes the same plan (maefast.data.plan) as the DALI pipelines and gives the same pixels. Its worker
processes die with the job (maefast.data.workers); the DataLoader draws its seeds from a generator of its
own, never from the global RNG, so a resumed run draws the same masks as an uninterrupted one.
"""
from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader
from torch.utils.data import Dataset as TorchDataset

from maefast.data.dataset import Dataset
from maefast.data.decode import (
    ImageReadError,
    apply_illumination,
    check_shard_row,
    read_channel,
    read_illumination,
    read_shard,
)
from maefast.data.plan import Batch, apply_augment
from maefast.data.storage import is_remote
from maefast.data.workers import LOADER_START_METHOD, WorkerSetup, start_guarded_workers, worker_processes

CPU = torch.device("cpu")
OPEN_REMOTE_SHARDS = 4  # memory maps a reader keeps of shards copied from object storage


class ImageReader:
    """Reads images and crops of one Dataset; shared by the fallback loader, `data pack` and `data check`."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self._shards: dict[str, np.ndarray] = {}
        self._illum: dict[str, np.ndarray] = {}
        self._encoded = None  # rxrx3-core: maefast.data.rxrx3_core.EncodedImages, made on first use

    def read_image(self, row: int) -> np.ndarray:
        """The full image of table row `row`: (C, H, W) integer pixels of the selected channels."""
        d = self.dataset
        if d.layout == "packed":
            return np.array(self._stored(row)[d.channel_index])
        if d.layout == "rxrx3-core":
            from maefast.data.rxrx3_core import EncodedImages
            self._encoded = self._encoded or EncodedImages()
            return self._encoded.read_image(d, row)
        image_id = d.table.at[row, "id"]
        illum = d.illum_files(row)
        channels = []
        for c, path in enumerate(d.channel_files(row)):
            array = read_channel(path, image_id, d.spec)
            if illum is not None:
                array = apply_illumination(array, self._illumination(illum[c], image_id))
            channels.append(array)
        return np.stack(channels)

    def read_crops(self, row: int, anchors: np.ndarray, augment: np.ndarray, size: int) -> np.ndarray:
        """(K, C, size, size) crops of image `row` at anchors (K, 2), augmented by augment (K, 3)."""
        if self.dataset.layout == "packed":  # read only the crop's bytes from the memory map
            stored = self._stored(row)
            sources = [stored[:, y:y + size, x:x + size][self.dataset.channel_index] for y, x in anchors]
        else:
            image = self.read_image(row)
            sources = [image[:, y:y + size, x:x + size] for y, x in anchors]
        return np.stack([apply_augment(s, *a) for s, a in zip(sources, augment)])

    def _stored(self, row: int) -> np.ndarray:
        """The memory-mapped (C_stored, H, W) image of table row `row` of a packed dataset."""
        d = self.dataset
        path, position, image_id = d.table.at[row, "shard"], int(d.table.at[row, "row"]), d.table.at[row, "id"]
        if path not in self._shards:  # a shard that fails is tried again for its next image, as DALI does
            if is_remote(path) and len(self._shards) >= OPEN_REMOTE_SHARDS:
                self._shards.pop(next(iter(self._shards)))  # lets the cache remove the oldest shard's copy
            self._shards[path] = read_shard(path, len(d.stored_channels), d.spec, image_id)
        shard = self._shards[path]
        check_shard_row(path, position, shard, image_id)
        return shard[position]

    def _illumination(self, path: str, image_id) -> np.ndarray:
        if path not in self._illum:
            self._illum[path] = read_illumination(path, self.dataset.spec, image_id)
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
                skipped.append(error.record())
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
                 device: torch.device = CPU):
        self.dataset, self.on_error, self.device, self.feed = dataset, on_error, device, _Feed()
        num_workers = worker_processes(num_workers, "the PyTorch loader", LOADER_START_METHOD)
        workers = dict(num_workers=num_workers, persistent_workers=True, prefetch_factor=2,
                       # workers forked from a process running DALI threads can deadlock: start clean ones
                       multiprocessing_context=start_guarded_workers(),
                       worker_init_fn=WorkerSetup()) if num_workers else {}
        # its own generator: creating the workers' seeds must not draw from the global RNG (the masks' stream)
        self.loader = DataLoader(_PlannedBatches(dataset, crop_size, on_error), sampler=self.feed, batch_size=None,
                                 pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
                                 **workers)
        self.copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None

    def _to_device(self, pixels: torch.Tensor) -> torch.Tensor:
        """The batch on the device. On a GPU the pinned batch is copied on a stream of its own, while the step
        queued before it still runs; the step's stream waits for the copy on an event, not on the host."""
        if self.copy_stream is None:
            return pixels.to(self.device)
        consumer = torch.cuda.current_stream(self.device)
        with torch.cuda.stream(self.copy_stream):
            moved = pixels.to(self.device, non_blocking=True)
        consumer.wait_stream(self.copy_stream)
        moved.record_stream(consumer)  # its memory is not reused before the consumer's work on it is done
        return moved

    def run(self, batches: list[Batch], following=None):
        """Yields (batch with the images actually read, pixels (n*K, C, s, s) on the device, skipped). following:
        the batches after these (DaliBackend reads ahead into them); the DataLoader's workers prefetch within the
        run."""
        self.feed.batches = list(batches)
        for batch, (pixels, keep, skipped) in zip(self.feed.batches, self.loader):
            if skipped and self.on_error == "raise":
                first = skipped[0]
                raise ImageReadError(first["path"], first["reason"], first["id"], first["kind"])
            yield batch.without(np.asarray(keep)), self._to_device(pixels), skipped
