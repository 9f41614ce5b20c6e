"""DALI pipelines executing a plan (maefast.data.plan): read, decode, crop, flip/rotate, channel stack.

PNG channel files and packed shards go through maefast's own DALI operators (csrc/dali, built on first
use by maefast.data.dali_plugin): one sample per image, whose K augmented crops (K, C, s, s) come out of
one operator call. `maefast_png_crops` reads and decodes each channel file once with maefast's PNG
decoder (about twice as fast as libpng/zlib on microscopy channels) and cuts every crop from the plane;
`maefast_packed_crops` memory-maps each shard once and copies only the crops' rows. TIFF files and
illumination correction use DALI's own decoders: fn.maefast_read_image + fn.decoders.image (8- or 16-bit
kept exact), optional correction, channel concatenation and crop slicing. With a GPU the crops move to the
device inside the pipeline (DALI decodes PNG/TIFF on the host; its GPU decoders cover JPEG formats).

Every operator gets the dataset's ImageSpec (height, width, dtype; packed: the manifest's shape) and
refuses a file that differs, before any decoder could crop or convert it.

Sharding, order and crop positions come from the plan, not from DALI's readers, so both backends agree and
a pipeline can be rebuilt at any step (resume). A failing batch (missing or corrupt file) stops a DALI
pipeline; the backend then decodes that batch's files with the reference decoder to name the bad ones, and
either raises their ImageReadError or drops them and rebuilds the pipeline from that batch ("skip").
"""
from __future__ import annotations

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def, types
from nvidia.dali import math as dali_math

from maefast.data import dali_plugin
from maefast.data.dataset import Dataset
from maefast.data.decode import ImageReadError
from maefast.data.plan import Batch
from maefast.data.torch_backend import ImageReader

_DALI_TYPES = {np.dtype(np.uint8): types.UINT8, np.dtype(np.uint16): types.UINT16}


CPU = torch.device("cpu")

def _encode(path: str) -> np.ndarray:
    return np.frombuffer(path.encode("utf-8"), dtype=np.uint8)


def _augment(crop, flags):
    transpose, vertical, horizontal = flags
    if transpose:
        crop = fn.transpose(crop, perm=[0, 2, 1], output_layout="CHW")
    return fn.flip(crop, vertical=vertical, horizontal=horizontal)


class DaliBackend:
    def __init__(self, dataset: Dataset, crop_size: int, crops_per_image: int, batch_size: int, augment: bool,
                 num_threads: int = 2, on_error: str = "raise", device: torch.device = CPU, prefetch: int = 2):
        self.dataset, self.crop_size, self.crops, self.batch_size = dataset, crop_size, crops_per_image, batch_size
        self.augment, self.num_threads, self.on_error = augment, num_threads, on_error
        self.device, self.prefetch = device, prefetch
        self.reader = ImageReader(dataset)
        table = dataset.table
        self._illum = None
        if dataset.layout == "packed":
            self._shards, self._rows = table["shard"].to_numpy(), table["row"].to_numpy()
        else:
            self._files = table[[f"file_{c}" for c in dataset.channels]].to_numpy()
            if dataset.illumination == "illum":
                self._illum = table[[f"illum_{c}" for c in dataset.channels]].to_numpy()
        all_png = (dataset.layout != "packed"
                   and bool(np.char.endswith(np.char.lower(self._files.astype(str)), ".png").all()))
        # maefast's crop operators: packed shards, and PNG files without illumination correction. The plugin
        # is needed on every path (maefast_read_image checks the TIFF files): without it, "auto" falls back
        # to the PyTorch loader.
        self._native = dataset.layout == "packed" or (all_png and self._illum is None)
        dali_plugin.load()

    def run(self, batches: list[Batch]):
        """Yields (batch actually read, pixels (n*K, C, s, s) on the device, skipped) like TorchBackend.run."""
        batches, start, pending = list(batches), 0, {}
        while start < len(batches):
            feed = [b for b in batches[start:] if len(b.images)]
            pipe = self._build(feed) if feed else None
            failed, failure = None, None
            for position in range(start, len(batches)):
                batch = batches[position]
                if not len(batch.images):
                    yield batch, self._empty(), pending.pop(position, [])
                    continue
                try:
                    (outputs,) = pipe.run()
                    pixels = self._to_torch(outputs, len(batch.images))
                except RuntimeError as error:
                    failed, failure = position, error
                    break
                yield batch, pixels, pending.pop(position, [])
            del pipe
            if failed is None:
                return
            self._drop_bad(batches, failed, failure, pending)
            start = failed

    def _drop_bad(self, batches: list[Batch], failed: int, failure: Exception, pending: dict) -> None:
        """Finds the unreadable images of the failing batch and those already queued after it."""
        found = False
        for position in range(failed, min(failed + self.prefetch + 1, len(batches))):
            batch, keep, skipped = batches[position], [], []
            for row in batch.images:
                try:
                    self.reader.read_image(int(row))
                    keep.append(True)
                except ImageReadError as error:
                    if self.on_error == "raise":
                        raise error from failure
                    keep.append(False)
                    skipped.append(error.record())
            if skipped:
                found = True
                batches[position] = batch.without(np.array(keep))
                pending[position] = pending.get(position, []) + skipped
        if not found:
            raise failure

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

    def _pipeline_args(self) -> dict:
        gpu = self.device.type == "cuda"
        device_id = None
        if gpu:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        return dict(batch_size=self.batch_size, num_threads=self.num_threads, device_id=device_id,
                    prefetch_queue_depth=self.prefetch, exec_dynamic=True,
                    enable_conditionals=self.augment and not self._native, seed=0)

    def _build(self, feed: list[Batch]):
        pipe = self._native_pipeline(feed) if self._native else self._file_pipeline(feed)
        pipe.build()
        return pipe

    def _padded(self, batch: Batch) -> np.ndarray:
        """Sample positions into the batch, padded to the pipeline's batch size with the first sample."""
        count = len(batch.images)
        return np.concatenate([np.arange(count), np.zeros(self.batch_size - count, np.int64)])

    def _file_feed(self, feed: list[Batch]):
        for batch in feed:
            slots = self._padded(batch)
            rows = batch.images[slots]
            columns = [[_encode(p) for p in self._files[rows, c]] for c in range(self._files.shape[1])]
            if self._illum is not None:
                columns += [[_encode(p) for p in self._illum[rows, c]] for c in range(self._illum.shape[1])]
            for k in range(self.crops):
                columns.append(list(batch.anchors[slots, k].astype(np.int32)))
                if self.augment:
                    columns.append([np.array(t) for t in batch.augment[slots, k, 0]])
                    columns += [list(batch.augment[slots, k, a].astype(np.int32)) for a in (1, 2)]
            yield tuple(columns)

    def _file_pipeline(self, feed: list[Batch]):
        d, size, crops, augment = self.dataset, self.crop_size, self.crops, self.augment
        channels, dtype = len(d.channels), _DALI_TYPES[d.dtype]
        illum = self._illum is not None
        per_crop = 4 if augment else 1
        outputs = channels * (2 if illum else 1) + crops * per_crop
        gpu = self.device.type == "cuda"

        @pipeline_def(**self._pipeline_args())
        def pipeline():
            inputs = fn.external_source(source=self._file_feed(feed), num_outputs=outputs, batch=True)
            planes = []
            for c in range(channels):
                encoded = fn.maefast_read_image(inputs[c], dtype=dtype, height=d.image_shape[0], width=d.image_shape[1])
                plane = fn.decoders.image(encoded, output_type=types.ANY_DATA, dtype=dtype)
                if illum:
                    function = fn.decoders.numpy(fn.io.file.read(inputs[channels + c]), dtype=types.FLOAT)
                    corrected = dali_math.floor(plane / fn.expand_dims(function, axes=[2]) + 0.5)
                    plane = fn.cast(dali_math.clamp(corrected, 0, np.iinfo(d.dtype).max), dtype=dtype)
                planes.append(plane)
            image = fn.cat(*planes, axis=2) if channels > 1 else planes[0]
            out = []
            base = channels * (2 if illum else 1)
            for k in range(crops):
                args = inputs[base + k * per_crop: base + (k + 1) * per_crop]
                crop = fn.slice(image, start=args[0], shape=[size, size], axes=[0, 1], out_of_bounds_policy="error")
                crop = fn.transpose(crop.gpu() if gpu else crop, perm=[2, 0, 1], output_layout="CHW")
                out.append(_augment(crop, args[1:]) if augment else crop)
            return fn.stack(*out, axis=0) if crops > 1 else fn.expand_dims(out[0], axes=[0])

        return pipeline()

    def _native_feed(self, feed: list[Batch]):
        """Per image: the file paths (one per channel, or the shard and its row), anchors, augment flags."""
        for batch in feed:
            slots = self._padded(batch)
            rows = batch.images[slots]
            if self.dataset.layout == "packed":
                columns = [[_encode(p) for p in self._shards[rows]],
                           [np.array([r], np.int32) for r in self._rows[rows]]]
            else:
                columns = [[_encode(p) for p in self._files[rows, c]] for c in range(self._files.shape[1])]
            columns.append(list(batch.anchors[slots].astype(np.int32)))
            if self.augment:
                columns.append(list(batch.augment[slots].astype(np.uint8)))
            yield tuple(columns)

    def _native_pipeline(self, feed: list[Batch]):
        d, gpu = self.dataset, self.device.type == "cuda"
        options = dict(crop_size=self.crop_size, dtype=_DALI_TYPES[d.dtype], augment=self.augment)
        height, width = (int(n) for n in d.image_shape)
        packed = d.layout == "packed"
        paths = 2 if packed else len(d.channels)  # (shard, row) or one file per channel

        @pipeline_def(**self._pipeline_args())
        def pipeline():
            inputs = fn.external_source(source=self._native_feed(feed), num_outputs=paths + 1 + self.augment,
                                        batch=True)
            if packed:
                crops = fn.maefast_packed_crops(*inputs, channels=list(d.channel_index),
                                                image_shape=[len(d.stored_channels), height, width], **options)
            else:
                crops = fn.maefast_png_crops(*inputs, channels=len(d.channels), height=height, width=width, **options)
            return crops.gpu() if gpu else crops

        return pipeline()
