"""The one table of accepted formats (csrc/decode/formats.h) is the one docs/data.md shows, and maefast's TIFF
reader decodes what the writers users have (tifffile, Pillow's libtiff) write, as they read it back."""
import io
from pathlib import Path

import numpy as np
import pytest
import tifffile

from maefast import _C
from maefast.data.decode import accepted_formats_table
from tests.data.crafted import LONG, pillow_bytes, textured_image, tiff_bytes, tifffile_bytes

DOCS = Path(__file__).resolve().parents[2] / "docs" / "data.md"


def test_the_documented_table_is_the_one_the_readers_use():
    assert accepted_formats_table() in DOCS.read_text()
    table = _C.accepted_formats()
    assert [code for code, _ in table["tiff"]["compressions"]] == [1, 5, 8, 32946, 32773]
    assert table["png"]["bit_depths"] == [8, 16] and table["shard"]["descrs"] == ["|u1", "<u2"]
    assert [code for code, _ in table["jpeg"]["processes"]] == [0, 1, 2] and table["jpeg"]["bit_depths"] == [8]
    assert table["jpeg2000"]["bit_depths"] == list(range(8, 17)) and table["jpeg2000"]["max_tiles"] == 4096


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("writer, options", [
    ("tifffile", {}), ("tifffile", dict(byteorder=">")), ("tifffile", dict(bigtiff=True)),
    ("tifffile", dict(compression="zlib")), ("tifffile", dict(compression="zlib", predictor=True, rowsperstrip=3)),
    ("tifffile", dict(byteorder=">", compression="zlib", predictor=True, rowsperstrip=7)),
    ("pillow", dict(compression="tiff_lzw")), ("pillow", dict(compression="packbits")),
    ("pillow", dict(compression="tiff_adobe_deflate")), ("pillow", dict(compression="raw")),
])
def test_tiff_as_the_writers_write_it(dtype, writer, options):
    image = textured_image(np.random.default_rng(5), (37, 53), dtype)  # odd sizes: partial last strips
    data = tifffile_bytes(image, **options) if writer == "tifffile" else pillow_bytes(image, "TIFF", **options)
    decoded = _C.decode_image(data, 37, 53, image.itemsize, 1100.0)
    np.testing.assert_array_equal(decoded, image)
    if writer == "tifffile":  # and tifffile reads the same back
        np.testing.assert_array_equal(decoded, tifffile.imread(io.BytesIO(data)))


def test_lzw_with_the_early_code_width_change_and_table_resets():
    """An image long enough to fill LZW's 4096-entry table several times (libtiff then sends clear codes)."""
    rng = np.random.default_rng(6)
    image = rng.integers(0, 60000, (300, 200)).astype(np.uint16)
    data = pillow_bytes(image, "TIFF", compression="tiff_lzw")
    np.testing.assert_array_equal(_C.decode_image(data, 300, 200, 2, 1100.0), image)


def test_a_duplicate_among_every_possible_tag():
    """An IFD of 65,000 distinct tags and one repeated (the check is a bitmap of the 16-bit tags, linear in the
    entries, where a search of the tags seen was quadratic)."""
    image = np.zeros((4, 4), np.uint8)
    extra = [(tag, LONG, [1]) for tag in range(400, 65536) if tag not in (32997,)] + [(500, LONG, [2])]
    data = tiff_bytes(image, extra=extra)
    with pytest.raises(_C.DecodeError, match=r"corrupt TIFF: tag 500 appears twice in the first IFD"):
        _C.decode_image(data, 4, 4, 1, 1100.0)
