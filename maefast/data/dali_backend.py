"""DALI pipelines executing a plan (maefast.data.plan): read, check, decode, correct, crop, flip/rotate.

Every image goes through one of maefast's own DALI operators (csrc/dali, built on first use by
maefast.data.dali_plugin), one sample per image, whose K augmented crops (K, C, s, s) come out of one call:
`maefast_image_crops` reads each channel file (PNG or TIFF) once with maefast's readers (csrc/decode: the
same code that the PyTorch loader and `data check` run through maefast._C), divides it by its
illumination function when the data set has them, and cuts every crop from the plane;
`maefast_packed_crops` checks and memory-maps each shard once and copies only the crops' rows;
`maefast_decoded_crops` cuts the crops of RxRx3-core's images, which the feed decodes on the host with the
PyTorch loader's reader (maefast.data.rxrx3_core.decode_image, on `num_threads` threads) and hands over with
each image's error. With a GPU the crops move to the device inside the pipeline (every image is decoded on
the host, by maefast's readers or, for JPEG 2000, imagecodecs behind maefast's header checks).

Sharding, order and crop positions come from the plan, not from DALI's readers, so both backends agree and
a pipeline can be rebuilt at any step (resume). An image that cannot be read does not stop the pipeline:
the operators return each image's error beside its crops (kind, path, reason, whatever the reader raised),
and the backend raises the first as an ImageReadError (on_error="raise") or drops those images from the
batch and reports them ("skip"), as the PyTorch loader does.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types

from maefast.data import dali_plugin
from maefast.data.dataset import Dataset
from maefast.data.decode import ImageReadError
from maefast.data.plan import Batch
from maefast.data.rxrx3_core import LAYOUT as ENCODED_LAYOUT
from maefast.data.rxrx3_core import EncodedImages

_DALI_TYPES = {np.dtype(np.uint8): types.UINT8, np.dtype(np.uint16): types.UINT16}


CPU = torch.device("cpu")

def _encode(path: str) -> np.ndarray:
    return np.frombuffer(path.encode("utf-8"), dtype=np.uint8)


def decode_error(sample) -> dict | None:
    """An operator's errors sample: None when the image was read, else {id: None, path, reason, kind}."""
    raw = np.asarray(sample).tobytes()
    if not raw:
        return None
    kind, path, reason = raw.decode("utf-8", errors="replace").split("\0", 2)
    return dict(id=None, path=path, reason=reason, kind=kind)


def encode_error(error: ImageReadError | None) -> np.ndarray:
    """An image's error as the operators write it ("kind\\0path\\0reason"; empty when it was read)."""
    text = "" if error is None else f"{error.kind}\0{error.path}\0{error.reason}"
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


class DaliBackend:
    def __init__(self, dataset: Dataset, crop_size: int, crops_per_image: int, batch_size: int, augment: bool,
                 num_threads: int = 2, on_error: str = "raise", device: torch.device = CPU, prefetch: int = 2):
        self.dataset, self.crop_size, self.crops, self.batch_size = dataset, crop_size, crops_per_image, batch_size
        self.augment, self.num_threads, self.on_error = augment, num_threads, on_error
        self.device, self.prefetch = device, prefetch
        table = dataset.table
        self._illum = None
        if dataset.layout == "packed":
            self._shards, self._rows = table["shard"].to_numpy(), table["row"].to_numpy(np.int64)
        elif dataset.layout == ENCODED_LAYOUT:
            self._encoded = EncodedImages()
        else:
            self._files = table[[f"file_{c}" for c in dataset.channels]].to_numpy()
            if dataset.illumination == "illum":
                self._illum = table[[f"illum_{c}" for c in dataset.channels]].to_numpy()
        dali_plugin.load()

    def run(self, batches: list[Batch]):
        """Yields (batch actually read, pixels (n*K, C, s, s) on the device, skipped) like TorchBackend.run."""
        batches = list(batches)
        feed = [b for b in batches if len(b.images)]
        pipe = self._build(feed) if feed else None
        ids = self.dataset.ids
        for batch in batches:
            if not len(batch.images):
                yield batch, self._empty(), []
                continue
            crops, errors = pipe.run()
            failures = [decode_error(errors.at(i)) for i in range(len(batch.images))]
            skipped = []
            for row, failure in zip(batch.images, failures):
                if failure is not None:
                    error = ImageReadError(failure["path"], failure["reason"], ids[row], failure["kind"])
                    if self.on_error == "raise":
                        raise error
                    skipped.append(error.record())
            pixels = self._to_torch(crops, len(batch.images))
            if skipped:
                keep = np.array([failure is None for failure in failures])
                pixels = pixels.reshape(len(batch.images), -1, *pixels.shape[1:])[torch.from_numpy(keep)]
                pixels = pixels.reshape(-1, *pixels.shape[2:])
                batch = batch.without(keep)
            yield batch, pixels, skipped
        del pipe

    def _empty(self) -> torch.Tensor:
        shape = (0, len(self.dataset.channels), self.crop_size, self.crop_size)
        return torch.from_numpy(np.empty(shape, self.dataset.dtype)).to(self.device)

    def _to_torch(self, outputs, count: int) -> torch.Tensor:
        tensor = outputs.as_tensor()
        # The dynamic executor gives each run's outputs their own buffers, owned by the returned objects:
        # on the CPU the tensor is handed over without a copy (a copy of a 25 MB batch costs more than
        # cutting its crops). The GPU copy stays, ordering torch's stream after DALI's.
        pixels = torch.from_dlpack(tensor)
        if self.device.type == "cuda":
            pixels = pixels.clone()
        return pixels[:count].reshape(-1, len(self.dataset.channels), self.crop_size, self.crop_size)

    # ---------------------------------------------------------------- pipelines

    def _build(self, feed: list[Batch]):
        """One pipeline for the batches of `feed`; its batch size is the largest of them (not the plan's
        batch_size, which may be far larger than the data set), smaller batches padded with their first image."""
        self.pipeline_batch = max(len(batch.images) for batch in feed)
        gpu = self.device.type == "cuda"
        device_id = None
        if gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        d = self.dataset
        options = dict(crop_size=self.crop_size, dtype=_DALI_TYPES[d.dtype], augment=self.augment)
        height, width = (int(n) for n in d.image_shape)
        packed, encoded = d.layout == "packed", d.layout == ENCODED_LAYOUT
        illumination = self._illum is not None
        # (shard, row), (decoded image, its error), or one file per channel and an illumination file per channel
        paths = 2 if packed or encoded else len(d.channels) * (2 if illumination else 1)

        @pipeline_def(batch_size=self.pipeline_batch, num_threads=self.num_threads, device_id=device_id,
                      prefetch_queue_depth=self.prefetch, exec_dynamic=True, seed=0)
        def pipeline():
            inputs = fn.external_source(source=self._feed(feed), num_outputs=paths + 1 + self.augment, batch=True)
            if packed:
                crops, errors = fn.maefast_packed_crops(*inputs, channels=list(d.channel_index),
                                                        image_shape=[len(d.stored_channels), height, width],
                                                        **options)
            elif encoded:
                crops, errors = fn.maefast_decoded_crops(*inputs, channels=len(d.channels), **options)
            else:
                crops, errors = fn.maefast_image_crops(*inputs, channels=len(d.channels), height=height, width=width,
                                                       max_ratio=d.spec.max_ratio, illumination=illumination,
                                                       **options)
            return crops.gpu() if gpu else crops, errors

        pipe = pipeline()
        pipe.build()
        return pipe

    def _padded(self, batch: Batch) -> np.ndarray:
        """Sample positions into the batch, padded to the pipeline's batch size with the first sample."""
        count = len(batch.images)
        return np.concatenate([np.arange(count), np.zeros(self.pipeline_batch - count, np.int64)])

    def _feed(self, feed: list[Batch]):
        """Per image: the file paths (one per channel and its illumination file, or the shard and its row; or
        the decoded image and its error), anchors, augment flags."""
        pool = ThreadPoolExecutor(max(1, self.num_threads)) if self.dataset.layout == ENCODED_LAYOUT else None
        try:
            for batch in feed:
                yield self._columns(batch, pool)
        finally:
            if pool is not None:
                pool.shutdown()

    def _columns(self, batch: Batch, pool) -> tuple:
        """One batch's inputs, padded to the pipeline's batch size (_padded)."""
        slots = self._padded(batch)
        rows = batch.images[slots]
        if self.dataset.layout == "packed":
            columns = [[_encode(p) for p in self._shards[rows]], [np.array([r], np.int64) for r in self._rows[rows]]]
        elif self.dataset.layout == ENCODED_LAYOUT:
            images, errors = self._decoded(batch.images, pool)  # each image once; the padding repeats the first
            columns = [[images[k] for k in slots], [errors[k] for k in slots]]
        else:
            columns = [[_encode(p) for p in self._files[rows, c]] for c in range(self._files.shape[1])]
            if self._illum is not None:
                columns += [[_encode(p) for p in self._illum[rows, c]] for c in range(self._illum.shape[1])]
        columns.append(list(batch.anchors[slots].astype(np.int32)))
        if self.augment:
            columns.append(list(batch.augment[slots].astype(np.uint8)))
        return tuple(columns)

    def _decoded(self, rows: np.ndarray, pool) -> tuple[list, list]:
        """The images of `rows` decoded on the host (zeros where one could not be read) and their errors."""
        d = self.dataset
        blank = np.zeros((len(d.channels), *d.image_shape), d.dtype)
        results = self._encoded.read_images(d, rows, pool)
        failed = [isinstance(result, ImageReadError) for result in results]
        return ([blank if bad else image for image, bad in zip(results, failed)],
                [encode_error(result if bad else None) for result, bad in zip(results, failed)])
