"""DALI pipelines executing a plan (maefast.data.plan): decode, crop, flip/rotate, channel stack.

Per-channel files (PNG, TIFF): the plan's file names, crop corners and augmentation flags enter through one
external source; fn.io.file.read + fn.decoders.image decode each channel (8- or 16-bit kept exact), then
optional illumination correction, channel concatenation and crop slicing. With a GPU the crops move to the
device right after slicing (DALI decodes PNG/TIFF on the host; its GPU decoders cover JPEG formats) and
are transposed/flipped there. Packed shards: fn.readers.numpy with a region-of-interest read per crop (one
crop = one sample), on its GPU backend when the device is a GPU.

Sharding, order and crop positions come from the plan, not from DALI's readers, so both backends agree and
a pipeline can be rebuilt at any step (resume). A failing batch (missing or corrupt file) stops a DALI
pipeline; the backend then decodes that batch's files with the reference decoder to name the bad ones, and
either raises their ImageReadError or drops them and rebuilds the pipeline from that batch ("skip").
"""
from __future__ import annotations

import numpy as np
import torch
from nvidia.dali import fn, math as dali_math, pipeline_def, types

from maefast.data.dataset import Dataset
from maefast.data.decode import ImageReadError
from maefast.data.plan import Batch
from maefast.data.torch_backend import ImageReader

_DALI_TYPES = {np.dtype(np.uint8): types.UINT8, np.dtype(np.uint16): types.UINT16}


def _encode(path: str) -> np.ndarray:
    return np.frombuffer(path.encode("utf-8"), dtype=np.uint8)


def _augment(crop, flags):
    transpose, vertical, horizontal = flags
    if transpose:
        crop = fn.transpose(crop, perm=[0, 2, 1], output_layout="CHW")
    return fn.flip(crop, vertical=vertical, horizontal=horizontal)


class DaliBackend:
    def __init__(self, dataset: Dataset, crop_size: int, crops_per_image: int, batch_size: int, augment: bool,
                 num_threads: int = 2, on_error: str = "raise", device: torch.device = torch.device("cpu"),
                 prefetch: int = 2):
        self.dataset, self.crop_size, self.crops, self.batch_size = dataset, crop_size, crops_per_image, batch_size
        self.augment, self.num_threads, self.on_error = augment, num_threads, on_error
        self.device, self.prefetch = device, prefetch
        self.reader = ImageReader(dataset)
        table = dataset.table
        if dataset.layout == "packed":
            self._shards, self._rows = table["shard"].to_numpy(), table["row"].to_numpy()
        else:
            self._files = table[[f"file_{c}" for c in dataset.channels]].to_numpy()
            self._illum = (table[[f"illum_{c}" for c in dataset.channels]].to_numpy()
                           if dataset.illumination == "illum" else None)

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
                except RuntimeError as error:
                    failed, failure = position, error
                    break
                yield batch, self._to_torch(outputs, len(batch.images)), pending.pop(position, [])
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
                    skipped.append(dict(id=error.image_id, path=error.path, reason=error.reason, kind=error.kind))
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
        if self.device.type == "cuda":
            pixels = torch.from_dlpack(tensor).clone()
        else:
            pixels = torch.from_numpy(np.array(tensor))
        crops_per_sample = 1 if self.dataset.layout == "packed" else self.crops
        return pixels[:count * self.crops // crops_per_sample].reshape(
            -1, len(self.dataset.channels), self.crop_size, self.crop_size)

    # ---------------------------------------------------------------- pipelines

    def _pipeline_args(self) -> dict:
        gpu = self.device.type == "cuda"
        device_id = (self.device.index if self.device.index is not None else torch.cuda.current_device()) if gpu else None
        samples = self.batch_size * (self.crops if self.dataset.layout == "packed" else 1)
        return dict(batch_size=samples, num_threads=self.num_threads, device_id=device_id,
                    prefetch_queue_depth=self.prefetch, enable_conditionals=self.augment, seed=0)

    def _build(self, feed: list[Batch]):
        pipe = (self._packed_pipeline(feed) if self.dataset.layout == "packed" else self._file_pipeline(feed))
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
                plane = fn.decoders.image(fn.io.file.read(inputs[c]), output_type=types.ANY_DATA, dtype=dtype)
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

    def _packed_feed(self, feed: list[Batch]):
        for batch in feed:
            slots = self._padded(batch)
            rows = self._rows[batch.images[slots]]
            starts, flags = [], [[], [], []]
            for i, row in enumerate(rows):
                for k in range(self.crops):
                    y, x = batch.anchors[slots[i], k]
                    starts.append(np.array([row, 0, y, x], np.int32))
                    t, v, h = batch.augment[slots[i], k]
                    flags[0].append(np.array(t))
                    flags[1].append(np.int32(v))
                    flags[2].append(np.int32(h))
            yield (starts, *flags) if self.augment else (starts,)

    def _packed_pipeline(self, feed: list[Batch]):
        d, size, augment = self.dataset, self.crop_size, self.augment
        files = [self._shards[b.images[s]] for b in feed for s in self._padded(b)
                 for _ in range(self.crops)]
        stored, selected = len(d.stored_channels), d.channel_index
        device = "gpu" if self.device.type == "cuda" else "cpu"

        @pipeline_def(**self._pipeline_args())
        def pipeline():
            inputs = fn.external_source(source=self._packed_feed(feed), num_outputs=4 if augment else 1, batch=True)
            crop = fn.readers.numpy(files=files, roi_start=inputs[0], roi_shape=[1, stored, size, size],
                                    cache_header_information=True, device=device)
            crop = fn.reshape(crop, shape=[stored, size, size], layout="CHW")
            if selected != list(range(stored)):
                crop = fn.reshape(fn.stack(*[crop[c] for c in selected], axis=0), layout="CHW")
            return _augment(crop, inputs[1:]) if augment else crop

        return pipeline()
