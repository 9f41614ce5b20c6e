"""Reference decoding of one channel file (Pillow for PNG, tifffile for TIFF, numpy for .npy).

This is the specification of what a channel file decodes to: a 2-D uint8 or uint16 array, exactly the
stored integers. The DALI pipelines must produce the same pixels; the tests compare them to this.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

INTEGER_DTYPES = (np.dtype(np.uint8), np.dtype(np.uint16))
TIFF_SUFFIXES = (".tif", ".tiff")


class ImageReadError(ValueError):
    """A channel file is missing, unreadable, truncated, or has the wrong size or dtype.

    Attributes: path (the file), reason (what was wrong), image_id (the image's id when known), kind:
    "missing" (no such file), "unreadable" (the decoder failed: corrupt or truncated), "format" (decoded,
    but not a single-channel uint8/uint16 image of the dataset's size).
    """

    def __init__(self, path, reason: str, image_id: str | None = None, kind: str = "unreadable"):
        self.path, self.reason, self.image_id, self.kind = str(path), reason, image_id, kind
        where = f" (image {image_id})" if image_id is not None else ""
        super().__init__(f"{path}{where}: {reason}")


def read_channel(path: str | os.PathLike, image_id: str | None = None) -> np.ndarray:
    """Decodes one single-channel image file into a 2-D uint8/uint16 array; raises ImageReadError."""
    path = Path(path)
    if not path.is_file():
        raise ImageReadError(path, "missing file", image_id, "missing")
    try:
        array = _decode(path)
    except ImageReadError:
        raise
    except Exception as error:  # every decoder failure becomes one documented error naming the file
        raise ImageReadError(path, f"unreadable or truncated image ({type(error).__name__}: {error})",
                             image_id) from error
    if array.ndim != 2:
        raise ImageReadError(path, f"expected a single-channel 2-D image, got shape {array.shape}", image_id, "format")
    if array.dtype not in INTEGER_DTYPES:
        raise ImageReadError(path, f"expected uint8 or uint16 pixels, got {array.dtype}", image_id, "format")
    return array


def _decode(path: Path) -> np.ndarray:
    suffix = path.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        import tifffile
        return tifffile.imread(path)
    if suffix == ".npy":
        return np.load(path, allow_pickle=False)
    from PIL import Image
    with Image.open(path) as image:
        image.load()
        if image.mode in ("I", "I;16", "I;16B"):  # 16-bit grayscale PNG
            array = np.asarray(image)
            if array.dtype != np.uint16:
                if array.size and (array.min() < 0 or array.max() > 65535):
                    raise ImageReadError(path, "expected 16-bit pixel values")
                array = array.astype(np.uint16)
            return array
        if image.mode != "L":
            raise ImageReadError(path, f"expected a grayscale 8- or 16-bit image, got mode {image.mode}", kind="format")
        return np.asarray(image)


def probe_channel(path: str | os.PathLike) -> tuple[tuple[int, int], np.dtype]:
    """(height, width) and dtype of one channel file, from its header where the format allows."""
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
            dtype = np.uint8 if image.mode == "L" else np.uint16
            return (image.height, image.width), np.dtype(dtype)
    except Exception as error:
        raise ImageReadError(path, f"unreadable image header ({type(error).__name__}: {error})") from error


def apply_illumination(raw: np.ndarray, illum: np.ndarray) -> np.ndarray:
    """Illumination correction that keeps integer pixels: floor(raw / illum + 0.5) in float32, clipped to
    the dtype's range (the DALI pipeline computes exactly this)."""
    if illum.shape != raw.shape:
        raise ValueError(f"illumination function shape {illum.shape} does not match image shape {raw.shape}")
    corrected = np.floor(raw.astype(np.float32) / illum.astype(np.float32) + np.float32(0.5))
    return np.clip(corrected, 0, np.iinfo(raw.dtype).max).astype(raw.dtype)
