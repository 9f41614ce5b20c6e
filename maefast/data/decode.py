"""Reading the files a data set is made of: channel images, packed shards, illumination functions.

Every reader (the PyTorch loader, `maefast data pack` and `maefast data check` here; the DALI operators in
csrc/dali) goes through maefast's own C++ readers (csrc/decode, here through maefast._C), so one table of
accepted formats (csrc/decode/formats.h, shown in docs/data.md) decides what is read, and one decoder what
it decodes to: what one path accepts the others accept with the same pixels, and what one refuses the others
refuse for the same reason. A channel image decodes to a 2-D uint8 or uint16 array, exactly the stored
integers; Pillow and tifffile are the references the tests compare those pixels with.

A data set's channel images are of one family (ImageSpec.compressed): PNG and TIFF, which maefast decodes
itself, or JPEG and JPEG 2000, whose headers and structure maefast checks (the same C++ checks on every path)
before a decoder sees their bytes: DALI's (nvJPEG / nvJPEG2000 on a GPU, libjpeg-turbo / OpenJPEG on the CPU)
in the DALI loader, Pillow's (libjpeg-turbo / OpenJPEG) here. A file that passes the checks and still does not
decode is refused with the reason Pillow gives, by both loaders.

Decoding is bounded by the data set's spec (ImageSpec): a file larger than such an image can take is not
read, a header that differs from the spec is refused before anything of the image's size is allocated, no
inflate writes past the spec's bytes, and a file that claims to expand more than MAX_RATIO-fold is refused.
Files are opened without blocking and must be regular files (a FIFO is refused, not waited on).

A file on object storage (a URL) is read the same way from its local copy in the bounded cache of
maefast.data.storage (downloaded with retries on transient errors); errors name the URL, and an object that
cannot be had is an ImageReadError of kind "missing" or "unreadable" like a local file.
"""
from __future__ import annotations

import io
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
    compressed: bool = False  # JPEG / JPEG 2000 files (decoded by DALI or Pillow), not PNG / TIFF (by maefast)

    def __str__(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]} {np.dtype(self.dtype)}, one page"

    @property
    def formats(self) -> str:
        return "JPEG or JPEG 2000" if self.compressed else "PNG or TIFF"

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize

    @property
    def image_bytes(self) -> int:
        return int(self.shape[0]) * int(self.shape[1]) * self.itemsize


def read_channel(path: str | os.PathLike, image_id: str | None = None, spec: ImageSpec | None = None) -> np.ndarray:
    """Decodes one single-page, single-channel image file (PNG, TIFF, JPEG or JPEG 2000) into a 2-D uint8/uint16
    array.

    The image must match `spec` (size, dtype, family); without one, the file's own header (a single-page 2-D
    uint8 or uint16 image). Raises ImageReadError naming the file.
    """
    with reading(path, image_id):
        local = local_file(path)
        if spec is None:
            spec = header_spec(local)
        size = (int(spec.shape[0]), int(spec.shape[1]), spec.itemsize, spec.max_ratio)
        if spec.compressed:
            return decode_compressed(readers().read_compressed(str(local), *size), spec, path, image_id)
        return readers().read_image(str(local), *size)


# The formats Pillow reads JPEG and JPEG 2000 files as, and the modes their checked images decode to.
PILLOW_FORMATS = {"JPEG": "JPEG", "JPEG2000": "JPEG 2000"}
PILLOW_MODES = {"L": np.uint8, "I;16": np.uint16}


JPEG2000_SIGNATURES = (b"\x00\x00\x00\x0cjP  \r\n\x87\n", b"\xff\x4f\xff\x51")  # a JP2 file, a raw codestream


def decode_compressed(data: bytes, spec: ImageSpec, path, image_id: str | None = None) -> np.ndarray:
    """The host's decode of a JPEG or JPEG 2000 image that maefast's checks passed (readers().read_compressed /
    check_compressed): JPEG 2000 by decode_jpeg2000, JPEG by Pillow; a 2-D array of the spec's size and dtype, or
    ImageReadError naming `path` with the decoder's reason. The DALI loader names an image its decoder fails on
    with this same reason."""
    if data.startswith(JPEG2000_SIGNATURES):
        return decode_jpeg2000(data, spec, path, image_id)
    from PIL import Image
    try:
        with Image.open(io.BytesIO(data), formats=list(PILLOW_FORMATS)) as image:
            image.load()
            array = np.asarray(image)
    except ImageReadError:
        raise
    except Exception as error:
        raise ImageReadError(path, f"corrupt image data: the decoder failed ({error})", image_id) from None
    if array.shape != tuple(spec.shape) or array.dtype != np.dtype(spec.dtype):  # maefast's checks let it through
        raise ImageReadError(path, f"Pillow decoded a {describe_array(array)} image where the header said "
                                   f"{spec}", image_id, "format")
    return array


def import_imagecodecs():
    try:
        import imagecodecs
    except ImportError:
        raise MissingDependency("JPEG 2000 images need imagecodecs: "
                                "python -m pip install \"maefast[jpeg2000]\"") from None
    return imagecodecs


def decode_jpeg2000(data: bytes, spec: ImageSpec, where, image_id: str | None = None) -> np.ndarray:
    """imagecodecs' (OpenJPEG's) decode of a JPEG 2000 image that maefast's checks passed (csrc/decode/jpeg2000.h,
    whose checked header bounds what it allocates), the one host decoder of JPEG 2000 files and RxRx3-core's
    images: its samples as stored (a 12-bit image's values stay below 4096, as DALI's decoders give them; Pillow
    would scale them to 16 bits). ImageReadError naming `where` when OpenJPEG refuses it."""
    imagecodecs = import_imagecodecs()
    try:  # one thread: the loaders decode many images in parallel
        image = imagecodecs.jpeg2k_decode(data, numthreads=1)
    except imagecodecs.Jpeg2kError as error:
        raise ImageReadError(where, f"corrupt JPEG 2000 image (OpenJPEG: {error})", image_id) from None
    if image.shape != tuple(spec.shape) or image.dtype != spec.dtype:  # what its checked header did not say
        raise ImageReadError(where, f"JPEG 2000 image decoded to {image.shape} {image.dtype}, not the {spec} of its "
                                    "header", image_id)
    return image


def describe_array(array: np.ndarray) -> str:
    return "x".join(map(str, array.shape)) + f" {array.dtype}"


def header_spec(path) -> ImageSpec:
    """The spec a file's own header describes (for reading a file outside a data set)."""
    return spec_of_header(readers().image_header(str(path)), path)


COMPRESSED_FORMATS = ("JPEG", "JPEG 2000")  # decoded by DALI or Pillow; PNG and TIFF by maefast


def spec_of_header(header: tuple, where) -> ImageSpec:
    """The spec of a header (the readers' (height, width, samples, dtype, pages, format)): a single-page 2-D uint8
    or uint16 image, else ImageReadError (kind "format") naming `where`."""
    height, width, samples, dtype, pages, format = header
    if samples != 1 or pages != 1 or dtype not in ("uint8", "uint16"):
        found = f"{height}x{width}" + (f"x{samples}" if samples != 1 else "") + f" {dtype}"
        found += f", {pages} pages" if pages != 1 else ""
        raise ImageReadError(where, f"expected a single-page 2-D uint8 or uint16 image, found {found}", kind="format")
    return ImageSpec((height, width), np.dtype(dtype), compressed=format in COMPRESSED_FORMATS)


def describe_header(header: tuple) -> tuple[tuple[int, int], str, bool]:
    """(height, width), the kind of an image ("uint16", "uint8, 3 pages", "uint16x3", "palette", ...) and whether
    it is compressed (JPEG or JPEG 2000), from the readers' header tuple."""
    height, width, samples, dtype, pages, format = header
    kind = dtype + (f"x{samples}" if samples != 1 else "") + (f", {pages} pages" if pages != 1 else "")
    return (height, width), kind, format in COMPRESSED_FORMATS


def probe_channel(path: str | os.PathLike) -> tuple[tuple[int, int], str, bool]:
    """(height, width), the kind of one channel file's first page and whether it is compressed
    (describe_header), from its header."""
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

    png, tiff, jpeg, jpeg2000 = table["png"], table["tiff"], table["jpeg"], table["jpeg2000"]

    def bits(values):
        return " or ".join(str(d) for d in values)

    depths = bits(png["bit_depths"])
    rows = [
        ("PNG channel image", f"grayscale (colour type 0), {depths} bits, not interlaced, one frame (a file, or a row "
                              "of an RxRx3-core parquet shard)"),
        ("TIFF channel image", "one page, one sample per pixel, unsigned "
                               f"{' or '.join(str(d) for d in tiff['bit_depths'])} bits, in strips, either byte "
                               "order, classic or BigTIFF, ImageDepth 1"),
        ("TIFF compression", codes(tiff["compressions"])),
        ("TIFF predictor", codes(tiff["predictors"]) + " (LZW and Deflate)"),
        ("TIFF photometric interpretation", codes(tiff["photometrics"]) + " or no tag"),
        ("TIFF orientation", codes(tiff["orientations"]) + " or no tag"),
        ("TIFF planar configuration", codes(tiff["planar_configurations"])),
        ("JPEG channel image", f"one component (grayscale), {bits(jpeg['bit_depths'])} bits, ending with its EOI "
                               "marker; EXIF orientation not applied"),
        ("JPEG process (SOFn)", codes(jpeg["processes"]) + ", Huffman-coded"),
        ("JPEG 2000 channel image", f"a file, or a row of an RxRx3-core parquet shard: JP2 file or raw codestream, "
                                    f"one component, unsigned {min(jpeg2000['bit_depths'])} to "
                                    f"{max(jpeg2000['bit_depths'])} bits (8 decode to uint8, more to uint16), not "
                                    f"subsampled, no palette, lossless or lossy, at most {jpeg2000['max_tiles']} "
                                    "tiles, every tile-part inside the codestream, ending with its EOC marker"),
        ("packed shard (.npy)", f"(n, channels, height, width), C order, {dtypes(table['shard']['descrs'])}: the "
                                "manifest's dtype"),
        ("illumination function (.npy)", f"(height, width), C order, {dtypes(table['illumination']['descrs'])}, "
                                         "every value finite and > 0"),
    ]
    return "\n".join(["| file | accepted |", "|---|---|"] + [f"| {what} | {accepted} |" for what, accepted in rows])
