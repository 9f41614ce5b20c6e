"""DALI pipelines executing a plan (maefast.data.plan): read, check, decode, correct, crop, flip/rotate.

The graph of each path (maefast.data.dali_graph) is built by one function whose device choice is a
parameter: on a CPU machine every stage runs on the host (CPU_PIPELINE); with a GPU (GPU_PIPELINE) the host
reads and checks the files (and decodes PNG and TIFF with maefast's exact readers), JPEG and JPEG 2000
are decoded on the GPU (nvJPEG, nvJPEG2000), and the crops are flipped, rotated and stacked there. The
pipeline runs ahead of the training step by `prefetch` batches on DALI's own CUDA stream; its output is handed
to torch through DLPack without a copy, and torch's stream waits for it on an event, not on the host
(DeviceHandover). `dali_device="cpu"` keeps a GPU loader's stages on the host and moves the finished crops.
RxRx3-core's channel images (PNG or JPEG 2000 bytes in parquet shards, maefast.data.rxrx3_core) take the same
scheme: in the CPU pipeline the feed decodes them on the host with the PyTorch loader's reader
(rxrx3_core.decode_image, on `num_threads` threads) and maefast_decoded_crops cuts and flips the crops; in the
GPU pipeline JPEG 2000 bytes go through maefast_compressed_image's checks to nvJPEG2000, while PNG ones are
still decoded on the host and their crops moved to the GPU.

Sharding, order and crop positions come from the plan, not from DALI's readers, so both backends agree and
a pipeline can be rebuilt at any step (resume). An image that cannot be read does not stop the pipeline:
maefast's operators return each image's error beside its pixels (kind, path, reason, whatever the reader
raised: a compressed file is checked before the decoder sees it, and a refused one is replaced by a blank
image), and the backend raises the first as an ImageReadError (on_error="raise") or drops those images from
the batch and reports them ("skip"), as the PyTorch loader does. A compressed file that passes the checks but
that DALI's decoder still fails on stops the pipeline: the backend names it (DALI gives the sample; Pillow's
reading of it gives the reason the PyTorch loader gives), refuses or skips it, and rebuilds the pipeline from
that batch.
"""
from __future__ import annotations

import collections
import itertools
import os
import re
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

# nvImageCodec's OpenCV-based JPEG 2000 reader logs a warning for every image without a colour space
os.environ.setdefault("OPENCV_LOG_LEVEL", "ERROR")

from nvidia.dali import fn, pipeline_def  # noqa: E402

from maefast.data import dali_graph, dali_plugin  # noqa: E402
from maefast.data.dataset import Dataset  # noqa: E402
from maefast.data.decode import ImageReadError  # noqa: E402
from maefast.data.plan import Batch  # noqa: E402
from maefast.data.rxrx3_core import LAYOUT as ENCODED_LAYOUT  # noqa: E402
from maefast.data.rxrx3_core import EncodedImages, codec_of  # noqa: E402

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


def source_of(dataset: Dataset, placement: dali_graph.Placement) -> dali_graph.Source:
    """What a pipeline reads for `dataset`: packed shards, PNG / TIFF files, JPEG / JPEG 2000 files (or, in the
    GPU pipeline's graph, RxRx3-core's JPEG 2000 bytes), or images the feed decoded (RxRx3-core otherwise)."""
    height, width = (int(n) for n in dataset.image_shape)
    from_files = True
    if dataset.layout == ENCODED_LAYOUT:
        from_files = False
        kind = "compressed" if not placement.fused and codec_of(dataset) == "jpeg2000" else "decoded"
    else:
        kind = "packed" if dataset.layout == "packed" else "compressed" if dataset.compressed else "files"
    return dali_graph.Source(kind, len(dataset.channels), height, width, np.dtype(dataset.dtype),
                             dataset.spec.max_ratio, illumination=dataset.illumination == "illum",
                             from_files=from_files, stored_channels=len(dataset.stored_channels),
                             channel_index=tuple(dataset.channel_index) if kind == "packed" else ())


def placement_of(device: torch.device, dali_device: str = "auto") -> dali_graph.Placement:
    """The GPU pipeline for a CUDA loader (unless dali_device="cpu"), else the CPU one (maefast.data.loader
    checks dali_device)."""
    return dali_graph.GPU_PIPELINE if device.type == "cuda" and dali_device != "cpu" else dali_graph.CPU_PIPELINE


def dense(outputs) -> torch.Tensor:
    """A pipeline output (a batch of equally shaped samples) as one torch tensor: DALI's contiguous buffer itself,
    through DLPack; a batch whose samples DALI did not lay out contiguously is stacked (a copy)."""
    if outputs.is_dense_tensor():
        return torch.from_dlpack(outputs.as_tensor())
    return torch.stack([torch.from_dlpack(outputs[i]) for i in range(len(outputs))])


class DeviceHandover:
    """Hands a pipeline's CUDA output to torch without a copy, and keeps DALI's buffers alive until torch's
    stream is past the work that read them.

    torch.from_dlpack passes torch's current stream to DALI, which makes that stream wait on the output's ready
    event: the step waits on the GPU, not on the host. DALI frees a buffer in its own stream's order when the
    last reference goes, so a buffer that torch dropped while kernels reading it were still queued on torch's
    stream could be reused by DALI too early. Each batch's outputs are therefore held here until an event that
    torch's stream records when the next batch is taken (after the step that read this one was queued) has
    completed; at most `limit` batches are held (beyond that the oldest event is waited for, which only happens
    when the host runs that many steps ahead of the GPU)."""

    def __init__(self, limit: int = 8):
        self.limit, self.held = limit, collections.deque()  # [outputs, event or None]

    def __call__(self, outputs, device: torch.device) -> torch.Tensor:
        stream = torch.cuda.current_stream(device)
        if self.held and self.held[-1][1] is None:
            event = torch.cuda.Event()
            event.record(stream)
            for entry in self.held:
                if entry[1] is None:
                    entry[1] = event
        pixels = dense(outputs)
        self.held.append([outputs, None])
        while self.held and self.held[0][1] is not None and (len(self.held) > self.limit or self.held[0][1].query()):
            self.held[0][1].synchronize()
            self.held.popleft()
        return pixels


class DaliBackend:
    def __init__(self, dataset: Dataset, crop_size: int, crops_per_image: int, batch_size: int, augment: bool,
                 num_threads: int = 2, on_error: str = "raise", device: torch.device = CPU, prefetch: int = 2,
                 dali_device: str = "auto", placement: dali_graph.Placement | None = None):
        """batch_size: the most images a batch of the plan holds (the pipeline's batch). placement: the stages'
        placement, instead of the one device and dali_device choose (the tests run the GPU pipeline's graph on
        the host with dali_graph.GPU_GRAPH_ON_CPU)."""
        self.dataset, self.crop_size, self.crops, self.batch_size = dataset, crop_size, crops_per_image, batch_size
        self.augment, self.num_threads, self.on_error = augment, num_threads, on_error
        self.device, self.prefetch = device, prefetch
        self.placement = placement or placement_of(device, dali_device)
        self.source = source_of(dataset, self.placement)
        self.handover = DeviceHandover() if device.type == "cuda" else None
        self._stop()
        table = dataset.table
        if self.source.kind == "packed":
            self._shards, self._rows = table["shard"].to_numpy(), table["row"].to_numpy(np.int64)
        elif dataset.layout == ENCODED_LAYOUT:
            self._encoded = EncodedImages()
            self._shards = table[[f"shard_{c}" for c in dataset.channels]].to_numpy()
            self._rows = table[[f"row_{c}" for c in dataset.channels]].to_numpy(np.int64)
        else:
            self._files = table[[f"file_{c}" for c in dataset.channels]].to_numpy()
            if self.source.illumination:
                self._files = np.concatenate([self._files, table[[f"illum_{c}" for c in dataset.channels]].to_numpy()],
                                             axis=1)
        dali_plugin.load()

    def run(self, batches: list[Batch], following=None):
        """Yields (batch actually read, pixels (n*K, C, s, s) on the device, skipped) like TorchBackend.run.

        following: a callable giving the batches that come after these (the next epochs'), lazily. The pipeline
        reads ahead into them, so the end of an epoch does not wait for the next one's first batches, and a next
        run() that starts with them continues the same pipeline instead of building another."""
        batches, skipped, position = list(batches), collections.defaultdict(list), 0
        while position < len(batches):
            batch = batches[position]
            if not len(batch.images):
                yield batch, self._empty(), skipped.pop(position, [])
                position += 1
                continue
            if not (self._fed and self._fed[0].same(batch)):
                self._start(batches[position:], following)
            try:
                pixels, *errors = self._pipe.run()
            except RuntimeError as error:
                self._stop()  # a pipeline that failed is no longer valid
                if self.source.kind != "compressed":
                    raise
                batches[position], undecodable = self._without_undecodable(batch, error)
                skipped[position] += undecodable
                continue
            self._fed.popleft()
            batch, pixels, refused = self._read(batch, pixels, errors)
            yield batch, pixels, skipped.pop(position, []) + refused
            position += 1

    def _start(self, batches: list[Batch], following=None) -> None:
        """A new pipeline reading `batches`, then those `following()` gives."""
        self._stop()
        stream = itertools.chain(batches, following() if following is not None else ())
        self._pipe = self._pipeline(self._feed(batch for batch in stream if len(batch.images)))
        self._pipe.build()

    def _stop(self) -> None:
        self._pipe, self._fed = None, collections.deque()  # the batches fed to the pipeline, not yet returned
        self._feed_failures = {}  # id(batch) -> {image: error} of images whose bytes the feed could not read

    def _read(self, batch: Batch, pixels, errors) -> tuple[Batch, torch.Tensor, list]:
        """The batch without the images its operators could not read, their pixels, and those images' errors
        (or the first one raised, with on_error="raise")."""
        count = len(batch.images)
        unread = self._feed_failures.pop(id(batch), {})
        failures = [unread.get(i) or self._first_failure(int(batch.images[i]), errors, i) for i in range(count)]
        skipped = []
        for row, failure in zip(batch.images, failures):
            if failure is not None:
                error = ImageReadError(failure["path"], failure["reason"], self.dataset.ids[row], failure["kind"])
                if self.on_error == "raise":
                    raise error
                skipped.append(error.record())
        pixels = self._to_torch(pixels, count)
        if skipped:
            keep = np.array([failure is None for failure in failures])
            pixels = pixels.reshape(count, -1, *pixels.shape[1:])[torch.from_numpy(keep).to(pixels.device)]
            pixels = pixels.reshape(-1, *pixels.shape[2:])
            batch = batch.without(keep)
        return batch, pixels, skipped

    def _without_undecodable(self, batch: Batch, error: RuntimeError) -> tuple[Batch, list]:
        """The batch without the image(s) DALI's decoder failed on, and their errors (ImageReadError with
        on_error="raise"): the sample DALI's message names (a padding sample is the batch's first image), or,
        where it names none, the images the host's decoder (the PyTorch loader's) cannot read either. The reason
        is that decoder's, as the PyTorch loader gives it; an image it reads is named with DALI's message."""
        from maefast.data.torch_backend import ImageReader
        reader, count = ImageReader(self.dataset), len(batch.images)
        named = re.search(r"Failed to decode sample #(\d+)[^\n]*", str(error))
        suspects = range(count) if named is None else [int(named.group(1)) if int(named.group(1)) < count else 0]
        failures = {}
        for index in suspects:
            row = int(batch.images[index])
            try:
                reader.read_image(row)
            except ImageReadError as refused:
                failures[index] = refused.record()
                continue
            if named is not None:
                failures[index] = ImageReadError(self._channel_place(row), f"DALI's decoder failed "
                                                 f"({named.group(0).strip()}); the host's decoder reads it",
                                                 self.dataset.ids[row]).record()
        if not failures:
            raise error
        if self.on_error == "raise":
            first = failures[min(failures)]
            raise ImageReadError(first["path"], first["reason"], first["id"], first["kind"]) from None
        keep = np.array([i not in failures for i in range(count)])
        return batch.without(keep), [failures[i] for i in sorted(failures)]

    def _first_failure(self, row: int, errors, sample: int) -> dict | None:
        """The first error of sample `sample` (image `row`) among the operators' errors outputs (one per channel
        and function, or one per image); bytes checked in the pipeline carry no path: their channel's is named."""
        for channel, output in enumerate(errors):
            failure = decode_error(output.at(sample))
            if failure is not None:
                failure["path"] = failure["path"] or self._channel_place(row, channel)
                return failure
        return None

    def _channel_place(self, row: int, channel: int = 0) -> str:
        """Where a channel of image `row` is: its file, or (RxRx3-core) its shard and row there."""
        if self.dataset.layout == ENCODED_LAYOUT:
            return f"{self._shards[row, channel]}#{self._rows[row, channel]}"
        return self.dataset.channel_files(row)[channel]

    def _empty(self) -> torch.Tensor:
        shape = (0, len(self.dataset.channels), self.crop_size, self.crop_size)
        return torch.from_numpy(np.empty(shape, self.dataset.dtype)).to(self.device)

    def _to_torch(self, outputs, count: int) -> torch.Tensor:
        """The pipeline's output as a torch tensor without a copy: the dynamic executor gives each run's outputs
        their own buffers, owned by the returned objects (a copy of a 25 MB batch costs more than cutting its
        crops); on a GPU through DeviceHandover."""
        pixels = self.handover(outputs, self.device) if self.handover is not None else dense(outputs)
        return pixels[:count].reshape(-1, len(self.dataset.channels), self.crop_size, self.crop_size)

    # ---------------------------------------------------------------- pipelines

    def _pipeline(self, feed, device_id: int | None = None, placement=None):
        """One pipeline (defined, not built) reading the batches of the generator `feed`; its batch size is the
        largest batch the plan gives (smaller batches are padded with their first image)."""
        placement = placement or self.placement
        gpu = self.device.type == "cuda"
        if gpu and device_id is None:
            device_id = self.device.index if self.device.index is not None else torch.cuda.current_device()
        augment_on_device = self.augment and (self.source.kind == "compressed" or not placement.fused)

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=device_id,
                      prefetch_queue_depth=self.prefetch, exec_dynamic=True, seed=0,
                      enable_conditionals=augment_on_device)
        def pipeline():
            inputs = fn.external_source(source=feed, num_outputs=self.source.inputs(self.augment), batch=True)
            outputs = dali_graph.build(list(inputs), self.source, placement, self.crop_size, self.crops,
                                       self.augment, to_gpu=gpu)
            self.graph_outputs = outputs
            return outputs

        return pipeline()

    def operators(self, batches: list[Batch], placement=None) -> list[tuple[str, str]]:
        """(operator, device) of everything the pipeline for `batches` runs: its graph defined (serialized), not
        built, so a GPU pipeline's graph can be read on a machine without a GPU."""
        feed = self._feed(iter(batches), collections.deque())
        self._pipeline(feed, device_id=0 if self.device.type == "cuda" else None, placement=placement).serialize()
        return dali_graph.operators(self.graph_outputs)

    def _padded(self, batch: Batch) -> np.ndarray:
        """Sample positions into the batch, padded to the pipeline's batch size with the first sample."""
        count = len(batch.images)
        if count > self.batch_size:
            raise ValueError(f"a batch of {count} images for a pipeline of {self.batch_size}")
        return np.concatenate([np.arange(count), np.zeros(self.batch_size - count, np.int64)])

    def _feed(self, batches, fed: collections.deque | None = None):
        """The external source: per image, the file paths (one per channel and its illumination file, or the
        shard and its row; RxRx3-core: each channel's encoded bytes, or the image decoded here and its error),
        anchors, augment flags; each batch appended to `fed` (default: self._fed) as the pipeline takes it, so
        that its outputs are matched with it in order."""
        fed = self._fed if fed is None else fed
        pool = ThreadPoolExecutor(max(1, self.num_threads)) if self.dataset.layout == ENCODED_LAYOUT else None
        try:
            for batch in batches:
                fed.append(batch)
                yield self._columns(batch, pool)
        finally:
            if pool is not None:
                pool.shutdown()

    def _columns(self, batch: Batch, pool) -> tuple:
        """One batch's inputs, padded to the pipeline's batch size (_padded)."""
        slots = self._padded(batch)
        rows = batch.images[slots]
        if self.source.kind == "packed":
            columns = [[_encode(p) for p in self._shards[rows]], [np.array([r], np.int64) for r in self._rows[rows]]]
        elif self.source.kind == "decoded":
            images, errors = self._decoded(batch.images, pool)  # each image once; the padding repeats the first
            columns = [[images[k] for k in slots], [errors[k] for k in slots]]
        elif self.dataset.layout == ENCODED_LAYOUT:
            encoded = self._encoded_bytes(batch, pool)
            columns = [[encoded[k][c] for k in slots] for c in range(len(self.dataset.channels))]
        else:
            columns = [[_encode(p) for p in self._files[rows, c]] for c in range(self._files.shape[1])]
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

    def _encoded_bytes(self, batch: Batch, pool) -> list[list[np.ndarray]]:
        """Per image of `batch`, its channels' encoded bytes, for maefast_compressed_image to check. Bytes that
        cannot be read (a shard or row that is not there) are empty, and the image's error is kept for _read."""
        def read(index: int) -> list[np.ndarray]:
            row = int(batch.images[index])
            try:
                return [np.frombuffer(self._encoded.encoded(self._shards[row, c], int(self._rows[row, c])), np.uint8)
                        for c in range(len(self.dataset.channels))]
            except ImageReadError as error:
                self._feed_failures.setdefault(id(batch), {})[index] = dict(
                    id=self.dataset.ids[row], path=error.path, reason=error.reason, kind=error.kind)
                return [np.zeros(0, np.uint8)] * len(self.dataset.channels)
        return list(pool.map(read, range(len(batch.images))))
