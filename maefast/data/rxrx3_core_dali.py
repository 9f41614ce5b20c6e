"""The DALI loader of RxRx3-core-style data: encoded channel images (JPEG 2000, PNG) decoded by DALI's image
decoder, on the GPU where there is one (device "mixed": nvJPEG2000 for JPEG 2000), else on the CPU.

It executes the same plan (maefast.data.plan) as the PyTorch loader, which decodes with
maefast.data.rxrx3_core.decode_image, and gives the same pixels: the encoded bytes of each image's channels
are read from the parquet shards on the host (maefast.data.rxrx3_core.EncodedImages) and fed to the
pipeline, which decodes, stacks the channels, cuts the planned crops and applies the planned flips. A
failing batch is handled as DaliBackend handles one: the reference reader names the bad images.
"""
from __future__ import annotations

import numpy as np
import torch
from nvidia.dali import fn, pipeline_def
from nvidia.dali.types import ANY_DATA

from maefast.data.dali_backend import _DALI_TYPES, CPU, DaliBackend, _augment
from maefast.data.dataset import Dataset
from maefast.data.plan import Batch
from maefast.data.rxrx3_core import EncodedImages
from maefast.data.torch_backend import ImageReader


class EncodedImagesDaliBackend(DaliBackend):
    def __init__(self, dataset: Dataset, crop_size: int, crops_per_image: int, batch_size: int, augment: bool,
                 num_threads: int = 2, on_error: str = "raise", device: torch.device = CPU, prefetch: int = 2):
        self.dataset, self.crop_size, self.crops, self.batch_size = dataset, crop_size, crops_per_image, batch_size
        self.augment, self.num_threads, self.on_error = augment, num_threads, on_error
        self.device, self.prefetch = device, prefetch
        self.reader = ImageReader(dataset)
        self.images = EncodedImages()
        self._illum, self._native = None, False
        table = dataset.table
        self._sources = [(table[f"shard_{c}"].to_numpy(), table[f"row_{c}"].to_numpy()) for c in dataset.channels]

    def _file_feed(self, feed: list[Batch]):
        """Per image: the encoded bytes of each channel, then each crop's anchor and augment flags."""
        for batch in feed:
            slots = self._padded(batch)
            rows = batch.images[slots]
            columns = [[np.frombuffer(self.images.encoded(shards[r], int(positions[r])), np.uint8) for r in rows]
                       for shards, positions in self._sources]
            for k in range(self.crops):
                columns.append(list(batch.anchors[slots, k].astype(np.int32)))
                if self.augment:
                    columns.append([np.array(t) for t in batch.augment[slots, k, 0]])
                    columns += [list(batch.augment[slots, k, a].astype(np.int32)) for a in (1, 2)]
            yield tuple(columns)

    def _file_pipeline(self, feed: list[Batch]):
        d, size, crops, augment = self.dataset, self.crop_size, self.crops, self.augment
        channels, dtype = len(d.channels), _DALI_TYPES[d.dtype]
        per_crop = 4 if augment else 1
        gpu = self.device.type == "cuda"

        @pipeline_def(**self._pipeline_args())
        def pipeline():
            inputs = fn.external_source(source=self._file_feed(feed), num_outputs=channels + crops * per_crop,
                                        batch=True)
            planes = [fn.decoders.image(inputs[c], device="mixed" if gpu else "cpu", output_type=ANY_DATA,
                                        dtype=dtype) for c in range(channels)]
            image = fn.cat(*planes, axis=2) if channels > 1 else planes[0]
            out = []
            for k in range(crops):
                args = inputs[channels + k * per_crop: channels + (k + 1) * per_crop]
                crop = fn.slice(image, start=args[0].gpu() if gpu else args[0], shape=[size, size], axes=[0, 1],
                                out_of_bounds_policy="error")
                crop = fn.transpose(crop, perm=[2, 0, 1], output_layout="CHW")
                out.append(_augment(crop, args[1:]) if augment else crop)
            return fn.stack(*out, axis=0) if crops > 1 else fn.expand_dims(out[0], axes=[0])

        return pipeline()

