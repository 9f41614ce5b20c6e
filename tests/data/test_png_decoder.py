"""maefast's PNG decoder (csrc/decode, used by the DALI loader) against Pillow and the encoded arrays.

PNG files are written here with every row filter (None, Sub, Up, Average, Paeth), split image data
chunks, stored / fixed / dynamic deflate blocks, 8 and 16 bit; corrupt and truncated files must raise.
"""
import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from maefast import _C


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _filter_rows(raw: np.ndarray, filters: np.ndarray, bpp: int) -> bytes:
    """PNG row filtering of a (H, row_bytes) uint8 array, filter type per row."""
    out, prior = [], np.zeros(raw.shape[1], np.int64)
    for row, kind in zip(raw.astype(np.int64), filters):
        left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
        up_left = np.concatenate([np.zeros(bpp, np.int64), prior[:-bpp]])
        if kind == 0:
            predicted = np.zeros_like(row)
        elif kind == 1:
            predicted = left
        elif kind == 2:
            predicted = prior
        elif kind == 3:
            predicted = (left + prior) // 2
        else:
            p = left + prior - up_left
            pa, pb, pc = np.abs(p - left), np.abs(p - prior), np.abs(p - up_left)
            predicted = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, prior, up_left))
        out.append(bytes([kind]) + ((row - predicted) % 256).astype(np.uint8).tobytes())
        prior = row
    return b"".join(out)


def encode_png(image: np.ndarray, filters: np.ndarray, level: int = 6, idat_parts: int = 1, strategy: int = 0) -> bytes:
    height, width = image.shape
    depth = 8 * image.itemsize
    raw = image.astype(">u2").view(np.uint8).reshape(height, -1) if depth == 16 else image
    compressor = zlib.compressobj(level, zlib.DEFLATED, 15, 9, strategy)
    stream = compressor.compress(_filter_rows(raw, filters, image.itemsize)) + compressor.flush()
    cuts = np.linspace(0, len(stream), idat_parts + 1).astype(int)
    header = struct.pack(">IIBBBBB", width, height, depth, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + b"".join(_chunk(b"IDAT", stream[a:b]) for a, b in zip(cuts[:-1], cuts[1:])) + _chunk(b"IEND", b""))


def textured(rng, height, width, dtype):
    """Smooth structure plus noise and flat runs: exercises literals, short and long matches."""
    top = np.iinfo(dtype).max
    y, x = np.mgrid[:height, :width]
    base = (np.sin(x / 7.0) + np.cos(y / 5.0) + 2) / 4 * top * 0.8
    noise = rng.normal(0, top * 0.02, (height, width))
    image = np.clip(base + noise, 0, top)
    image[: height // 4] = image[0, 0]  # a flat band: distance-1 runs
    return image.astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("level,strategy", [(0, 0), (1, 0), (6, 0), (9, 0), (6, zlib.Z_FIXED), (6, zlib.Z_RLE)])
def test_all_filters_and_block_kinds_match_pillow(dtype, level, strategy):
    rng = np.random.default_rng(level * 10 + strategy)
    for height, width in [(1, 1), (7, 13), (64, 50), (129, 257)]:
        image = textured(rng, height, width, dtype)
        filters = rng.integers(0, 5, height)
        data = encode_png(image, filters, level, idat_parts=int(rng.integers(1, 4)), strategy=strategy)
        decoded = _C.decode_png(data)
        assert decoded.dtype == dtype and decoded.shape == (height, width)
        np.testing.assert_array_equal(decoded, image)
        np.testing.assert_array_equal(decoded, np.asarray(Image.open(io.BytesIO(data))))


def test_pillow_written_files():
    rng = np.random.default_rng(3)
    for dtype in (np.uint8, np.uint16):
        image = textured(rng, 200, 300, dtype)
        for options in (dict(), dict(compress_level=1), dict(optimize=True)):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="PNG", **options)
            np.testing.assert_array_equal(_C.decode_png(buffer.getvalue()), image)
    assert _C.png_info(buffer.getvalue()) == (200, 300, "uint16")


def _refused_by_both(data: bytes, match: str):
    with pytest.raises(ValueError, match=match):
        _C.decode_png(data)
    with pytest.raises(Exception):
        Image.open(io.BytesIO(data)).load()


def test_truncated_and_corrupt_files_raise():
    rng = np.random.default_rng(7)
    image = textured(rng, 96, 96, np.uint8)
    data = encode_png(image, rng.integers(0, 5, 96))
    _refused_by_both(data[: len(data) // 2], "truncated")
    _refused_by_both(data[:40], "truncated|no image data")
    _refused_by_both(b"GIF89a" + data[6:], "signature")
    start = data.index(b"IDAT") + 4
    for offset in (40, 200, 600):  # a flipped byte inside the compressed data
        broken = bytearray(data)
        broken[start + offset] ^= 0x5A
        with pytest.raises(ValueError):
            _C.decode_png(bytes(broken))


def test_unsupported_kinds_name_the_reason():
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((4, 4, 3), np.uint8) + 9).save(buffer, format="PNG")
    with pytest.raises(ValueError, match="color type 2"):
        _C.decode_png(buffer.getvalue())
