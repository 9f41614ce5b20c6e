"""Reference decoding of one channel file (Pillow for PNG, tifffile for TIFF, numpy for .npy).

This is the specification of what a channel file decodes to: a 2-D uint8 or uint16 array, exactly the
stored integers. The DALI pipelines must produce the same pixels; the tests compare them to this.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from maefast.errors import UserInputError

INTEGER_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
TIFF_SUFFIXES = (".tif", ".tiff")
PNG_MODES = {"L": np.uint8, "I": np.uint16, "I;16": np.uint16, "I;16B": np.uint16}  # Pillow's grayscale modes


ERROR_POLICIES = ("raise", "skip")  # what a loader does with an image it cannot read: stop, or skip and count it


def check_error_policy(on_error: str) -> str:
    if on_error not in ERROR_POLICIES:
        raise UserInputError(f"on_error must be one of {ERROR_POLICIES}, got {on_error!r}")
    return on_error


class ImageReadError(UserInputError):
    """A channel file is missing, unreadable, truncated, or has the wrong size or dtype.

    Attributes: path (the file), reason (what was wrong), image_id (the image's id when known), kind:
    "missing" (no such file), "unreadable" (the decoder failed: corrupt or truncated), "format" (decoded,
    but not a single-channel uint8/uint16 image of the dataset's size).
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


@dataclass(frozen=True)
class ImageSpec:
    """What every channel image of a dataset must be: one page of height x width pixels of one dtype.

    The one description that every reader checks: `data check` and the PyTorch reader through
    `read_channel` / `check_shard`, the DALI pipelines by handing the same numbers to maefast's C++
    operators (csrc/decode/header.h), whose refusals the backend then names with this class's errors.
    """
    shape: tuple[int, int]  # (height, width)
    dtype: np.dtype         # uint8 or uint16

    def __str__(self) -> str:
        return f"{self.shape[0]}x{self.shape[1]} {np.dtype(self.dtype)}, one page"

    def check(self, path, shape, dtype, pages: int = 1, image_id: str | None = None) -> None:
        """Raises ImageReadError (kind "format") naming the file when a decoded image is not what the spec says."""
        if tuple(shape) != tuple(self.shape) or np.dtype(dtype) != np.dtype(self.dtype) or pages != 1:
            found = describe_image(shape, dtype, pages)
            raise ImageReadError(path, f"expected {self}, found {found}", image_id, "format")

    def check_shard(self, path, shape, dtype, channels: int, image_id: str | None = None) -> None:
        """The same for a packed shard: an (n, channels, height, width) array of the dtype."""
        expected = (channels,) + tuple(self.shape)
        if len(shape) != 4 or tuple(shape[1:]) != expected or np.dtype(dtype) != np.dtype(self.dtype):
            raise ImageReadError(path, f"expected a shard of (n, {', '.join(map(str, expected))}) "
                                       f"{np.dtype(self.dtype)} images, found {tuple(shape)} {np.dtype(dtype)}",
                                 image_id, "format")


def describe_image(shape, dtype, pages: int = 1) -> str:
    text = "x".join(str(n) for n in shape) + f" {np.dtype(dtype)}"
    return text + (f", {pages} pages" if pages != 1 else "")


def read_channel(path: str | os.PathLike, image_id: str | None = None, spec: ImageSpec | None = None) -> np.ndarray:
    """Decodes one single-page, single-channel image file (PNG or TIFF) into a 2-D uint8/uint16 array.

    With `spec`, the image must also match it (size, dtype). Raises ImageReadError naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "missing file", image_id, "missing")
    try:
        array, pages = _decode(path)
    except ImageReadError as error:
        raise ImageReadError(error.path, error.reason, image_id, error.kind) from None
    except Exception as error:  # every decoder failure becomes one documented error naming the file
        raise ImageReadError(path, f"unreadable or truncated image ({type(error).__name__}: {error})",
                             image_id) from error
    if spec is not None:
        spec.check(path, array.shape, array.dtype, pages, image_id)
    elif pages != 1 or array.ndim != 2 or array.dtype not in INTEGER_DTYPES:
        raise ImageReadError(path, "expected a single-page 2-D uint8 or uint16 image, found "
                                   f"{describe_image(array.shape, array.dtype, pages)}", image_id, "format")
    return array


def _decode(path: Path) -> tuple[np.ndarray, int]:
    """(the first page's pixels, the number of pages)."""
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile
        with tifffile.TiffFile(path) as tif:
            return tif.pages[0].asarray(), len(tif.pages)
    if suffix == ".npy":
        return np.load(path, allow_pickle=False), 1
    from PIL import Image
    with Image.open(path) as image:
        if image.format != "PNG":
            raise ImageReadError(path, f"expected a PNG or TIFF file, found {image.format}", kind="format")
        image.load()
        pages = getattr(image, "n_frames", 1)
        if PNG_MODES.get(image.mode) == np.uint16:
            array = np.asarray(image)
            if array.dtype != np.uint16:
                if array.size and (array.min() < 0 or array.max() > 65535):
                    raise ImageReadError(path, "expected 16-bit pixel values")
                array = array.astype(np.uint16)
            return array, pages
        if image.mode != "L":
            raise ImageReadError(path, f"expected a grayscale 8- or 16-bit image, found mode {image.mode}",
                                 kind="format")
        return np.asarray(image), pages


def probe_channel(path: str | os.PathLike) -> tuple[tuple[int, int], np.dtype]:
    """(height, width) and dtype of one channel file's first page, from its header."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "missing file", kind="missing")
    suffix = path.suffix.lower()
    try:
        if suffix in TIFF_SUFFIXES:
            import tifffile
            with tifffile.TiffFile(path) as tif:
                page = tif.pages[0]
                return tuple(page.shape[:2]), np.dtype(page.dtype)
        if suffix == ".npy":
            array = np.load(path, mmap_mode="r", allow_pickle=False)
            return tuple(array.shape[:2]), array.dtype
        from PIL import Image
        with Image.open(path) as image:
            if image.mode not in PNG_MODES:
                raise ValueError(f"mode {image.mode} is not 8- or 16-bit grayscale")
            return (image.height, image.width), np.dtype(PNG_MODES[image.mode])
    except Exception as error:
        raise ImageReadError(path, f"unreadable image header ({type(error).__name__}: {error})") from error


def apply_illumination(raw: np.ndarray, illum: np.ndarray) -> np.ndarray:
    """Illumination correction that keeps integer pixels: floor(raw / illum + 0.5) in float32, clipped to
    the dtype's range (the DALI pipeline computes exactly this)."""
    if illum.shape != raw.shape:
        raise ValueError(f"illumination function shape {illum.shape} does not match image shape {raw.shape}")
    corrected = np.floor(raw.astype(np.float32) / illum.astype(np.float32) + np.float32(0.5))
    return np.clip(corrected, 0, np.iinfo(raw.dtype).max).astype(raw.dtype)
