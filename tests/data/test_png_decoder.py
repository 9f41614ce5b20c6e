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
    with pytest.raises((OSError, SyntaxError, ValueError)):  # how Pillow refuses a damaged PNG
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


# Regressions found by fuzzing (csrc/fuzz/fuzz_png.cc): inputs the decoder accepted although zlib / Pillow
# refuse them, or whose declared size it allocated before looking at the data.

def _zlib_refuses(stream: bytes) -> bool:
    try:
        zlib.decompress(stream)
    except zlib.error:
        return True
    return False


def _png_with_stream(width: int, height: int, stream: bytes) -> bytes:
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def test_zlib_window_size_over_32k_is_refused():
    stream = bytearray(zlib.compress(b"\x00" + b"A" * 9))
    stream[0] = 0x88  # CINFO 8: a 64 KiB window, which zlib refuses; the check bits made valid again
    stream[1] = (stream[1] & 0xE0) | (31 - (stream[0] * 256 + (stream[1] & 0xE0)) % 31) % 31
    assert _zlib_refuses(bytes(stream))
    with pytest.raises(ValueError, match="window size"):
        _C.decode_png(_png_with_stream(9, 1, bytes(stream)))


class _BitWriter:
    """Bits of a deflate stream, least significant first; Huffman codes most significant first."""

    def __init__(self):
        self.value, self.count = 0, 0

    def bits(self, value: int, n: int) -> "_BitWriter":
        self.value |= value << self.count
        self.count += n
        return self

    def code(self, code: int, n: int) -> "_BitWriter":
        return self.bits(int(f"{code:0{n}b}"[::-1], 2), n)

    def bytes(self) -> bytes:
        return self.value.to_bytes((self.count + 7) // 8, "little")


def _canonical_codes(lengths: dict) -> dict:
    """{symbol: (code, length)} of the canonical Huffman code with these code lengths (RFC 1951 3.2.2)."""
    codes, code, previous = {}, 0, 0
    for symbol in sorted(lengths, key=lambda s: (lengths[s], s)):
        code <<= lengths[symbol] - previous
        codes[symbol], previous = (code, lengths[symbol]), lengths[symbol]
        code += 1
    return codes


def _dynamic_block_with_literal_codes(lengths: dict) -> _BitWriter:
    """The header of a final dynamic block whose literal/length code has the code lengths `lengths` (1 to 3
    bits) and whose distance code is empty."""
    writer = _BitWriter().bits(1, 1).bits(2, 2).bits(0, 5).bits(0, 5).bits(15, 4)  # 257 lit, 1 dist, 19 cl
    order = [16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15]
    code_lengths = {0: 2, 2: 2, 17: 2, 18: 3, 1: 4, 3: 4}  # a complete code: 3/4 + 1/8 + 2/16
    for symbol in order:
        writer.bits(code_lengths.get(symbol, 0), 3)
    codes = _canonical_codes(code_lengths)
    sequence = [lengths.get(symbol, 0) for symbol in range(257)] + [0]
    i = 0
    while i < len(sequence):
        run = next((j for j in range(i, len(sequence)) if sequence[j] != 0), len(sequence)) - i
        if run >= 11:
            take = min(run, 138)
            writer.code(*codes[18]).bits(take - 11, 7)
        elif run >= 3:
            take = run
            writer.code(*codes[17]).bits(take - 3, 3)
        else:
            take = 1
            writer.code(*codes[sequence[i]])
        i += take
    return writer


def test_incomplete_huffman_codes_are_refused():
    raw = b"\x00" + b"A" * 9
    adler = struct.pack(">I", zlib.adler32(raw))

    def stream(lengths):
        writer, codes = _dynamic_block_with_literal_codes(lengths), _canonical_codes(lengths)
        for symbol in list(raw) + [256]:  # 256: end of block
            writer.code(*codes[symbol])
        return b"\x78\x01" + writer.bytes() + adler

    complete = stream({0: 1, 65: 2, 256: 2})  # 1/2 + 1/4 + 1/4
    np.testing.assert_array_equal(_C.decode_png(_png_with_stream(9, 1, complete)), np.full((1, 9), 65, np.uint8))
    assert zlib.decompress(complete) == raw
    incomplete = stream({0: 2, 65: 2, 256: 2})  # 3/4 of the code space
    assert _zlib_refuses(incomplete)
    with pytest.raises(ValueError, match="incomplete Huffman code"):
        _C.decode_png(_png_with_stream(9, 1, incomplete))


def test_absurd_size_is_refused_before_allocating():
    stream = zlib.compress(b"\x00" * 17)
    header = struct.pack(">IIBBBBB", 1 << 20, 1 << 20, 16, 0, 0, 0, 0)  # 2 TiB of pixels from 20 bytes
    data = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")
    with pytest.raises(ValueError, match="cannot hold a 1048576x1048576 image"):
        _C.decode_png(data)


def test_chunks_checked_as_pillow_checks_them():
    rng = np.random.default_rng(2)
    image = textured(rng, 6, 8, np.uint8)
    good = encode_png(image, rng.integers(0, 5, 6), idat_parts=2)
    end = good.index(b"IEND") - 4
    deflated = zlib.compress(_filter_rows(image, np.zeros(6, int), 1))
    variants = {
        "bad checksum of chunk gAMA": good[:33] + _chunk(b"gAMA", b"\x00\x00\xb1\x8f")[:-1] + b"\x00" + good[33:],
        "runs past the end": good[:end] + struct.pack(">I", 4000) + b"tEXt" + b"x" * 10,
        "truncated deflate stream": (good[:33] + _chunk(b"IDAT", deflated[:20])
                                  + _chunk(b"tIME", b"\x07\xe8\x01\x01\x00\x00\x00")
                                  + _chunk(b"IDAT", deflated[20:])
                                  + _chunk(b"IEND", b"")),
    }
    variants["checksum missing"] = good[:33] + _chunk(b"tEXt", b"a\x00b")[:-2]  # the file ends in it
    for reason, data in variants.items():
        with pytest.raises((OSError, SyntaxError, ValueError)):  # how Pillow refuses a damaged PNG
            Image.open(io.BytesIO(data)).load()
        with pytest.raises(ValueError, match=reason):
            _C.decode_png(data)
    # what Pillow reads, maefast reads: no IEND, a last chunk without its checksum, a non-chunk tail
    for data in (good[:end], good[:-4], good[:end] + b"\x00\x00"):
        np.testing.assert_array_equal(_C.decode_png(data), np.asarray(Image.open(io.BytesIO(data))))
