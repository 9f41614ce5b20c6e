"""Reading the files a data set is made of: channel images, packed shards, illumination functions.

Every reader (the PyTorch loader, `maefast data pack` and `maefast data check` here; the DALI operators in
csrc/dali) goes through maefast's own C++ readers (csrc/decode, here through maefast._C), so one table of
accepted formats (csrc/decode/formats.h, shown in docs/data.md) decides what is read, and one decoder what
it decodes to: what one path accepts the others accept with the same pixels, and what one refuses the others
refuse for the same reason. A channel image decodes to a 2-D uint8 or uint16 array, exactly the stored
integers; Pillow and tifffile are the references the tests compare those pixels with.

Decoding is bounded by the data set's spec (ImageSpec): a file larger than such an image can take is not
read, a header that differs from the spec is refused before anything of the image's size is allocated, no
inflate writes past the spec's bytes, and a file that claims to expand more than MAX_RATIO-fold is refused.
Files are opened without blocking and must be regular files (a FIFO is refused, not waited on).

A file on object storage (a URL) is read the same way from its local copy in the bounded cache of
maefast.data.storage (downloaded with retries on transient errors); errors name the URL, and an object that
cannot be had is an ImageReadError of kind "missing" or "unreadable" like a local file.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from maefast.data import native
from maefast.data.storage import StorageError, is_remote, object_cache
from maefast.errors import MissingDependency, UserInputError

ERROR_POLICIES = ("raise", "skip")  # what a loader does with an image it cannot read: stop, or skip and count it
RATIO_VARIABLE = "MAEFAST_MAX_DECOMPRESSION_RATIO"
# The most decoded bytes per byte of file: above DEFLATE's own limit (1032:1 for a blank image), so it refuses
# LZW and malformed files that claim more, not real images.
DEFAULT_MAX_RATIO = 1100.0


def check_error_policy(on_error: str) -> str:
    if on_error not in ERROR_POLICIES:
        raise UserInputError(f"on_error must be one of {ERROR_POLICIES}, got {on_error!r}")
    return on_error


def max_ratio() -> float:
    """The decompression ratio cap: MAEFAST_MAX_DECOMPRESSION_RATIO, else DEFAULT_MAX_RATIO."""
    text = os.environ.get(RATIO_VARIABLE)
    if text is None:
        return DEFAULT_MAX_RATIO
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value > 0 or value == float("inf"):
        raise UserInputError(f"{RATIO_VARIABLE}={text!r} must be a positive number (decoded bytes per file byte)")
    return value


def readers():
    """The C++ readers every loader path decodes with: maefast._C, or where it was not built the same bindings
    compiled on first use (maefast.data.native); MissingDependency when neither is possible."""
    from maefast.ops.backend import cpp_extension
    return cpp_extension() or native.readers_module()


class ImageReadError(UserInputError):
    """A channel file is missing, unreadable, truncated, or has the wrong size or dtype.

    Attributes: path (the file), reason (what was wrong), image_id (the image's id when known), kind:
    "missing" (no such file), "unreadable" (the decoder failed: corrupt or truncated, or not a regular file),
    "format" (well formed, but not what the data set's spec and the table of accepted formats say).
    """

    def __init__(self, path, reason: str, image_id: str | None = None, kind: str = "unreadable"):
        self.path, self.reason, self.image_id, self.kind = str(path), reason, image_id, kind
        where = f" (image {image_id})" if image_id is not None else ""
        super().__init__(f"{path}{where}: {reason}")

    def record(self) -> dict:
        """The skipped image as data (what loaders list in `skipped` and manifests store): id, path, reason, kind."""
        image_id = self.image_id.item() if isinstance(self.image_id, np.generic) else self.image_id
        return {"id": image_id, "path": self.path, "reason": self.reason, "kind": self.kind}


def skipped_summary(skipped: list[dict], listed_in: str, shown: int = 5) -> str:
    """What a job that skipped unreadable images (on_error="skip") says about them: how many, the first few with
    their reasons, and where all are listed."""
    first = "; ".join(f"{entry['id']} ({entry['reason']})" for entry in skipped[:shown])
    more = f"; and {len(skipped) - shown} more" if len(skipped) > shown else ""
    return f"skipped {len(skipped)} unreadable image(s), all listed in {listed_in}: {first}{more}"


@contextmanager
def reading(path, image_id: str | None = None):
    """Every exception raised while reading `path` becomes one ImageReadError naming it (its kind from the
    C++ reader's error class), so that no reader failure escapes on_error="skip"."""
    try:
        yield
    except ImageReadError as error:
        if error.image_id is None and image_id is not None:
            raise ImageReadError(error.path, error.reason, image_id, error.kind) from None
        raise
    except MissingDependency:
        raise
    except StorageError as error:
        raise ImageReadError(path, error.reason, image_id, error.kind) from None
    except Exception as error:
        module = readers()
        if isinstance(error, module.MissingImage):
            raise ImageReadError(path, str(error), image_id, "missing") from None
        if isinstance(error, module.ImageFormatError):
            raise ImageReadError(path, str(error), image_id, "format") from None
        if isinstance(error, module.DecodeError):
            raise ImageReadError(path, str(error), image_id) from None
        raise ImageReadError(path, f"unreadable ({type(error).__name__}: {error})", image_id) from error


def local_file(path) -> str:
    """The file the readers open for `path`: itself, or for a URL its local copy in the storage layer's cache
    (call inside `reading`, which names the URL when it cannot be had)."""
    return str(object_cache().local_path(str(path))) if is_remote(path) else str(path)


@dataclass(frozen=True)
class ImageSpec:
    """What every channel image of a dataset must be: one page of height x width pixels of one dtype.

    The one description that every reader checks (through csrc/decode: ImageSpec in header.h), with the
    decompression ratio cap that bounds decoding.
    """
    shape: tuple[int, int]  # (height, width)
    dtype: np.dtype         # uint8 or uint16
    max_ratio: float = field(default_factory=max_ratio, compare=False)

    def __str__(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]} {np.dtype(self.dtype)}, one page"

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def image_bytes(self) -> int:
        return int(self.shape[0]) * int(self.shape[1]) * self.itemsize


def read_channel(path: str | os.PathLike, image_id: str | None = None, spec: ImageSpec | None = None) -> np.ndarray:
    """Decodes one single-page, single-channel image file (PNG or TIFF) into a 2-D uint8/uint16 array.

    The image must match `spec` (size, dtype); without one, the file's own header (a single-page 2-D uint8 or
    uint16 image). Raises ImageReadError naming the file.
    """
    with reading(path, image_id):
        local = local_file(path)
        if spec is None:
            spec = header_spec(local)
        array = readers().read_image(local, int(spec.shape[0]), int(spec.shape[1]), spec.itemsize,
                                     spec.max_ratio)
    return array


def header_spec(path) -> ImageSpec:
    """The spec a file's own header describes (for reading a file outside a data set)."""
    return spec_of_header(readers().image_header(str(path)), path)


def spec_of_header(header: tuple, where) -> ImageSpec:
    """The spec of a header (the readers' (height, width, samples, dtype, pages)): a single-page 2-D uint8 or
    uint16 image, else ImageReadError (kind "format") naming `where`."""
    height, width, samples, dtype, pages = header
    if samples != 1 or pages != 1 or dtype not in ("uint8", "uint16"):
        found = f"{height}x{width}" + (f"x{samples}" if samples != 1 else "") + f" {dtype}"
        found += f", {pages} pages" if pages != 1 else ""
        raise ImageReadError(where, f"expected a single-page 2-D uint8 or uint16 image, found {found}", kind="format")
    return ImageSpec((height, width), np.dtype(dtype))


def describe_header(header: tuple) -> tuple[tuple[int, int], str]:
    """(height, width) and the kind of an image from the readers' header tuple: "uint16", "uint8, 3 pages",
    "uint16x3", "palette", ..."""
    height, width, samples, dtype, pages = header
    kind = dtype + (f"x{samples}" if samples != 1 else "") + (f", {pages} pages" if pages != 1 else "")
    return (height, width), kind


def probe_channel(path: str | os.PathLike) -> tuple[tuple[int, int], str]:
    """(height, width) and the kind of one channel file's first page (describe_header), from its header."""
    with reading(path):
        return describe_header(readers().image_header(local_file(path)))


def read_shard(path, channels: int, spec: ImageSpec, image_id: str | None = None) -> np.ndarray:
    """A packed shard, memory-mapped: (n, channels, height, width) of the spec's dtype, C order, whole
    (csrc/decode/npy.h reads its header strictly); ImageReadError naming the file otherwise."""
    with reading(path, image_id):
        local = local_file(path)
        shape, offset = readers().shard_header(local, channels, int(spec.shape[0]), int(spec.shape[1]),
                                               spec.itemsize)
        dtype = np.dtype(spec.dtype).newbyteorder("<")
        if shape[0] == 0:
            return np.empty(shape, dtype)
        return np.memmap(local, dtype=dtype, mode="r", offset=offset, shape=tuple(shape))


def check_shard_row(path, row: int, shard: np.ndarray, image_id: str | None = None) -> None:
    """ImageReadError (kind "format") when the index names a row outside the shard."""
    with reading(path, image_id):
        readers().check_shard_row(int(row), int(shard.shape[0]))


def read_illumination(path, spec: ImageSpec, image_id: str | None = None) -> np.ndarray:
    """An illumination function: the (height, width) .npy array, float32 or float64, C order, every value
    finite and > 0, as float32."""
    with reading(path, image_id):
        return readers().read_illumination(local_file(path), int(spec.shape[0]), int(spec.shape[1]))


def apply_illumination(raw: np.ndarray, illum: np.ndarray) -> np.ndarray:
    """Illumination correction that keeps integer pixels: floor(raw / illum + 0.5) in float32, clipped to
    the dtype's range (the DALI operator computes exactly this, csrc/decode/image.h)."""
    if illum.shape != raw.shape:
        raise ValueError(f"illumination function shape {illum.shape} does not match image shape {raw.shape}")
    corrected = np.floor(raw.astype(np.float32) / illum.astype(np.float32) + np.float32(0.5))
    return np.clip(corrected, 0, np.iinfo(raw.dtype).max).astype(raw.dtype)


def accepted_formats_table() -> str:
    """The table of accepted formats (csrc/decode/formats.h, as maefast._C exports it) in Markdown: what
    docs/data.md shows (tests/data/test_formats.py checks that it does)."""
    table = readers().accepted_formats()

    def codes(values):
        return ", ".join(f"{value} ({name})" for value, name in values)

    def dtypes(descrs):
        return ", ".join(np.dtype(descr).name for descr in descrs) + " (little-endian)"

    png, tiff, jpeg2000 = table["png"], table["tiff"], table["jpeg2000"]
    depths = " or ".join(str(d) for d in png["bit_depths"])
    rows = [
        ("PNG channel image", f"grayscale (colour type 0), {depths} bits, not interlaced, one frame (a file, or a row "
                              "of an RxRx3-core parquet shard)"),
        ("JPEG 2000 channel image (RxRx3-core parquet row)",
         f"JP2 file or raw codestream, one component, not subsampled, no palette, unsigned "
         f"{min(jpeg2000['bit_depths'])} to {max(jpeg2000['bit_depths'])} bits (8 decode to uint8, more to uint16), "
         f"at most {jpeg2000['max_tiles']} tiles; header and codestream structure checked before imagecodecs "
         "(OpenJPEG) decodes it"),
        ("TIFF channel image", "one page, one sample per pixel, unsigned "
                               f"{' or '.join(str(d) for d in tiff['bit_depths'])} bits, in strips, either byte "
                               "order, classic or BigTIFF, ImageDepth 1"),
        ("TIFF compression", codes(tiff["compressions"])),
        ("TIFF predictor", codes(tiff["predictors"]) + " (LZW and Deflate)"),
        ("TIFF photometric interpretation", codes(tiff["photometrics"]) + " or no tag"),
        ("TIFF orientation", codes(tiff["orientations"]) + " or no tag"),
        ("TIFF planar configuration", codes(tiff["planar_configurations"])),
        ("packed shard (.npy)", f"(n, channels, height, width), C order, {dtypes(table['shard']['descrs'])}: the "
                                "manifest's dtype"),
        ("illumination function (.npy)", f"(height, width), C order, {dtypes(table['illumination']['descrs'])}, "
                                         "every value finite and > 0"),
    ]
    return "\n".join(["| file | accepted |", "|---|---|"] + [f"| {what} | {accepted} |" for what, accepted in rows])
