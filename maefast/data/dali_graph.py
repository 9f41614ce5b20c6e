"""The DALI graph of each loader path, built by one function whose device choice is a parameter (Placement).

Four sources of images, by the data set:

- packed shards and PNG / TIFF channel files: maefast's reader operators (csrc/dali) read on the host, check
  and decode (PNG, TIFF), and copy each image's crops (K, C, s, s) out of the shard or the decoded planes (a
  region-of-interest read). In the CPU pipeline they also transpose and flip each crop in that copy (SSE2),
  which costs nothing over the copy itself. In the GPU pipeline they copy the crops as they lie; the crops
  move to the device and DALI's GPU operators transpose and flip them there.
- images the feed decoded on the host (RxRx3-core's PNG or, in the CPU pipeline, JPEG 2000 channel images,
  maefast.data.rxrx3_core.decode_image): maefast_decoded_crops copies their crops, as the reader operators do.
- JPEG / JPEG 2000 channel files, or RxRx3-core's JPEG 2000 bytes in the GPU pipeline: maefast_compressed_image
  reads and checks each file or bytes (header, size, type, whole: csrc/decode/jpeg.h, jpeg2000.h) before DALI's
  decoder sees its bytes; the decoder runs on the device ("mixed": nvJPEG, nvJPEG2000) in the GPU pipeline, on
  the host (libjpeg-turbo, OpenJPEG) in the CPU one. Then, on the same device: the illumination correction with
  its integer cast (when the data set has functions), the channels stacked, each crop sliced, transposed to
  (C, s, s), flipped / rotated, and the crops stacked.

The GPU pipeline's graph is the same builder with the device "gpu" and maefast's readers not augmenting
(GPU_PIPELINE); built with the device "cpu" (GPU_GRAPH_ON_CPU) it runs everywhere DALI runs, so the tests check
on a CPU machine that the GPU pipeline's operators give the CPU pipeline's pixels, and `operators` lists what
runs where. Each crop's augmentation is one of the 8 symmetries of the square (maefast.data.plan): transpose,
then flip rows, then columns. The transpose is a conditional (DALI's `if` on a per-sample predicate), the
flips per-sample arguments of fn.flip.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nvidia.dali import fn, types
from nvidia.dali import math as dali_math

DALI_TYPES = {np.dtype(np.uint8): types.UINT8, np.dtype(np.uint16): types.UINT16}


@dataclass(frozen=True)
class Placement:
    """Where a pipeline's stages run."""

    device: str   # "cpu" | "gpu": crops cut, flipped, stacked and compressed images decoded there
    fused: bool   # maefast's reader operators augment the crops in their copy (the CPU pipeline)

    @property
    def decoder(self) -> str:
        """The device of DALI's image decoder: "mixed" (host input, device output) in a GPU pipeline."""
        return "mixed" if self.device == "gpu" else "cpu"


CPU_PIPELINE = Placement("cpu", fused=True)
GPU_PIPELINE = Placement("gpu", fused=False)
GPU_GRAPH_ON_CPU = Placement("cpu", fused=False)  # the GPU pipeline's operators, every one on the host


@dataclass(frozen=True)
class Source:
    """What the pipeline reads, from the data set (maefast.data.dali_backend.source_of)."""

    kind: str                   # "packed" | "files" (PNG / TIFF) | "compressed" (JPEG / JPEG 2000) | "decoded"
    channels: int               # channels handed over (selected)
    height: int
    width: int
    dtype: np.dtype
    max_ratio: float
    illumination: bool = False  # an illumination function per channel file
    from_files: bool = True     # compressed: the inputs are file paths (else the encoded bytes)
    stored_channels: int = 0    # packed: channels in the shards
    channel_index: tuple[int, ...] = ()  # packed: the selected channels' positions in the shards

    def inputs(self, augment: bool) -> int:
        """How many per-sample inputs the feed gives: paths (or bytes), then anchors and the augment flags."""
        paths = 2 if self.kind in ("packed", "decoded") else self.channels * (2 if self.illumination else 1)
        return paths + 1 + augment


def build(inputs: list, source: Source, placement: Placement, crop_size: int, crops: int, augment: bool,
          to_gpu: bool) -> tuple:
    """The graph's outputs: the pixels (K, C, s, s) per image, then the errors of its reads (each an encoded
    message or empty: maefast.data.dali_backend.decode_error), in the order that the first failing one names the
    image. inputs: the external source's outputs. to_gpu: the loader's device is a GPU (a CPU pipeline's crops
    move there at its end)."""
    anchors = inputs[source.inputs(augment) - 1 - augment]
    flags = inputs[-1] if augment else None
    if source.kind == "compressed":
        image, errors = decoded_image(inputs, source, placement)
        pixels = fn.stack(*[augmented(cut(image, anchors[k], crop_size), flags, k) for k in range(crops)])
    else:
        fused = placement.fused and augment
        crops_out, errors = reader_crops(inputs, source, crop_size, fused, anchors, flags)
        errors = [errors]
        pixels = crops_out.gpu() if placement.device == "gpu" else crops_out
        if augment and not fused:
            pixels = fn.stack(*[augmented(fn.reshape(pixels[k], layout="CHW"), flags, k) for k in range(crops)])
    if to_gpu and placement.device == "cpu":
        pixels = pixels.gpu()
    return (pixels, *errors)


def reader_crops(inputs: list, source: Source, crop_size: int, fused: bool, anchors, flags):
    """maefast's crop operators: (crops (K, C, s, s) on the host, errors); augmented in the copy when fused."""
    options = dict(crop_size=crop_size, dtype=DALI_TYPES[source.dtype], augment=fused)
    plan = [anchors, flags] if fused else [anchors]
    if source.kind == "decoded":  # the decoded images and their errors
        return fn.maefast_decoded_crops(inputs[0], inputs[1], *plan, channels=source.channels, **options)
    if source.kind == "packed":
        return fn.maefast_packed_crops(inputs[0], inputs[1], *plan, channels=list(source.channel_index),
                                       image_shape=[source.stored_channels, source.height, source.width], **options)
    files = inputs[:source.channels * (2 if source.illumination else 1)]
    return fn.maefast_image_crops(*files, *plan, channels=source.channels, height=source.height, width=source.width,
                                  max_ratio=source.max_ratio, illumination=source.illumination, **options)


def decoded_image(inputs: list, source: Source, placement: Placement):
    """JPEG / JPEG 2000 channel images checked, decoded (on placement.decoder), corrected by their illumination
    functions and stacked: ((H, W, C) on the placement's device, [each channel's errors: image, function])."""
    dtype = DALI_TYPES[source.dtype]
    size = dict(height=source.height, width=source.width)
    planes, errors = [], []
    for c in range(source.channels):
        encoded, error = fn.maefast_compressed_image(inputs[c], dtype=dtype, max_ratio=source.max_ratio,
                                                     from_files=source.from_files, **size)
        # GRAY: the files hold one component (checked); the decoder's ANY_DATA crashes DALI 2.4 on JPEG
        plane = fn.decoders.image(encoded, device=placement.decoder, output_type=types.GRAY, dtype=dtype,
                                  adjust_orientation=False)
        errors.append(error)
        if source.illumination:
            function, function_error = fn.maefast_illumination(inputs[source.channels + c], **size)
            errors.append(function_error)
            function = fn.expand_dims(function, axes=[2])
            plane = corrected(plane, function.gpu() if placement.device == "gpu" else function, source.dtype)
        planes.append(plane)
    return (fn.cat(*planes, axis=2) if len(planes) > 1 else planes[0]), errors


def corrected(plane, function, dtype: np.dtype):
    """The illumination correction of maefast.data.decode.apply_illumination: floor(raw / illum + 0.5) in
    float32, clipped to the dtype and cast back to it."""
    value = dali_math.floor(plane / function + np.float32(0.5))
    return fn.cast(dali_math.clamp(value, 0, int(np.iinfo(dtype).max)), dtype=DALI_TYPES[np.dtype(dtype)])


def cut(image, anchor, size: int):
    """The s x s crop of an (H, W, C) image at anchor (top, left), as (C, s, s)."""
    crop = fn.slice(image, start=anchor, shape=[size, size], axes=[0, 1], out_of_bounds_policy="error")
    return fn.transpose(crop, perm=[2, 0, 1], output_layout="CHW")


def augmented(crop, flags, k: int):
    """Crop k of an image ((C, s, s), layout CHW) as its augment flags (K, 3) say: transposed, then its rows
    flipped, then its columns (maefast.data.plan.apply_augment). No flags: as it is."""
    if flags is None:
        return crop
    if fn.cast(flags[k, 0], dtype=types.BOOL):
        crop = fn.transpose(crop, perm=[0, 2, 1], transpose_layout=False)
    return fn.flip(crop, vertical=fn.cast(flags[k, 1], dtype=types.INT32),
                   horizontal=fn.cast(flags[k, 2], dtype=types.INT32))


def operators(outputs) -> list[tuple[str, str]]:
    """(operator, device) of every operator that the graph's outputs depend on, each once, from the outputs
    back to the external source: what a pipeline runs where, without building it (no device needed)."""
    found, seen, stack = [], set(), list(outputs)
    while stack:
        node = stack.pop()
        operator = node.source
        if operator is None or id(operator) in seen:
            continue
        seen.add(id(operator))
        definition = operator._op  # DALI's operator object: its schema and device
        found.append((getattr(definition, "schema_name", type(definition).__name__), definition.device))
        stack.extend(operator.inputs)  # regular and argument inputs
    return found
