"""One definition of a valid image and shard on every path: each crafted (and, in test_png_fuzz.py, fuzzed)
file goes through the PyTorch loader, the DALI loader and `maefast data check`. What one accepts the others
accept with the same pixels (which equal the reference decoders'), what one refuses the others refuse with
the same named reason, and on_error="skip" skips and reports it whatever failed inside the reader.

The refused cases are the ones a probe of the loaders found (issue 22): TIFFs with ImageDepth 2, a tag given
twice, an Orientation tag (DALI rotated them), a palette, strip offsets outside the file; PNGs of 4 bits,
interlaced, without their Adler-32, or whose zlib stream holds half the rows (zero-filled by Pillow); 5-D,
big-endian, Fortran-order and float64 shards, a header whose comment repeats the expected dtype, index rows
of -1 and 2^32 + 1; a (1, W) illumination function (broadcast by DALI)."""
from __future__ import annotations

import re
import zlib

import numpy as np
import pandas as pd
import pytest

from maefast.data import ImageReadError, make_tile_loader, open_dataset
from maefast.data.check import check_dataset
from maefast.data.decode import apply_illumination
from maefast.data.packed import pack_dataset
from maefast.data.torch_backend import ImageReader
from maefast.io import read_json
from tests.data.crafted import (
    LONG,
    SHORT,
    encode_png,
    interlaced_png,
    jpeg2000_bytes,
    jpeg2000_claiming,
    jump_screen,
    npy_bytes,
    pillow_bytes,
    png_stream_bytes,
    rxrx3_core_screen,
    rxrx_screen,
    textured_image,
    tiff_bytes,
    tifffile_bytes,
)

SIZE = 32
pytest.importorskip("nvidia.dali")


def read_by_every_path(root, crop: int = SIZE, **options) -> tuple[dict, set]:
    """({image id: ("read", its tiles (K, C, crop, crop)) or ("refused", path, kind, reason)} on which both
    loaders agree, {(path, kind, reason) data check reports}). Asserts that the three paths agree."""
    dataset = open_dataset(root, **options)
    results = []
    for backend in ("torch", "dali"):
        loader = make_tile_loader(dataset, batch_size=5, crop_size=crop, backend=backend, on_error="skip",
                                  num_workers=0)
        tiles = {}
        for batch in loader:
            for pixels, image_id in zip(batch["pixels"], batch["ids"]):
                tiles.setdefault(image_id, []).append(pixels.numpy())
        outcome = {image_id: ("read", np.stack(found)) for image_id, found in tiles.items()}
        for skipped in loader.skipped:
            outcome[skipped["id"]] = ("refused", skipped["path"], skipped["kind"], skipped["reason"])
        assert sorted(outcome) == sorted(dataset.ids), backend
        results.append(outcome)
    torch_outcome, dali_outcome = results
    for image_id, expected in torch_outcome.items():
        got = dali_outcome[image_id]
        assert got[0] == expected[0], (image_id, expected[1:] if expected[0] == "refused" else got[1:])
        if expected[0] == "read":
            np.testing.assert_array_equal(got[1], expected[1], err_msg=image_id)
        else:
            assert got == expected
    report = check_dataset(root, progress=False, illumination=options.get("illumination", "raw"))
    checked = {(p["path"], p["kind"], p["reason"]) for p in report.problems}
    refused = {outcome[1:] for outcome in torch_outcome.values() if outcome[0] == "refused"}
    assert checked == refused
    return torch_outcome, checked


def assert_cases(outcome: dict, dataset, cases: dict, paths: dict) -> None:
    """Each case's image: its reference pixels, or refused with the kind and a reason matching the pattern."""
    for name, (_, expected) in cases.items():
        image_id = dataset.ids[paths[name]]
        got = outcome[image_id]
        if isinstance(expected, np.ndarray):
            assert got[0] == "read", (name, got)
            np.testing.assert_array_equal(got[1][0, 0], expected, err_msg=name)
        else:
            kind, pattern = expected
            assert got[0] == "refused" and got[2] == kind and re.fullmatch(pattern, got[3]), (name, got)


def screen_of(cases: dict, clean: list[bytes]) -> tuple[list[bytes], dict]:
    """The files of a screen: each case's file between clean ones (which set the norm of size and dtype)."""
    files, positions = [], {}
    for k, (name, (content, _)) in enumerate(cases.items()):
        files.append(clean[k % len(clean)])
        positions[name] = len(files)
        files.append(content)
    return files + clean, positions


def test_tiff_files(tmp_path):
    rng = np.random.default_rng(0)
    image = textured_image(rng, (SIZE, SIZE), np.uint16)
    clean = [tifffile_bytes(textured_image(rng, (SIZE, SIZE), np.uint16)) for _ in range(4)]
    bomb = zlib.compress(b"\0" * (SIZE * SIZE * 2 * 64))  # a strip that inflates to 64 times the image
    cases = {
        "tifffile": (tifffile_bytes(image), image),
        "big-endian": (tifffile_bytes(image, byteorder=">"), image),
        "BigTIFF": (tifffile_bytes(image, bigtiff=True), image),
        "Deflate, predictor, strips of 5 rows": (
            tifffile_bytes(image, compression="zlib", predictor=True, rowsperstrip=5), image),
        "LZW (libtiff)": (pillow_bytes(image, "TIFF", compression="tiff_lzw"), image),
        "PackBits (libtiff)": (pillow_bytes(image, "TIFF", compression="packbits"), image),
        "Adobe Deflate (libtiff)": (pillow_bytes(image, "TIFF", compression="tiff_adobe_deflate"), image),
        "orientation 1 tag, no photometric tag": (tiff_bytes(image, tags={274: (SHORT, [1])}, drop=(262,)), image),
        "ImageDepth 2": (tiff_bytes(image, tags={32997: (LONG, [2])}), ("format", r"TIFF ImageDepth 2 \(a volume\).*")),
        "two ImageWidth tags": (tiff_bytes(image, extra=[(256, LONG, [SIZE])]),
                                ("unreadable", r"corrupt TIFF: tag 256 \(ImageWidth\) appears twice in the first IFD")),
        "Orientation 6": (tiff_bytes(image, tags={274: (SHORT, [6])}),
                          ("format", r"TIFF orientation 6 \(rotated 90 degrees\); maefast reads 1 \(top-left\).*")),
        "palette": (tifffile_bytes((image % 256).astype(np.uint8), photometric="palette",
                                   colormap=np.zeros((3, 256), np.uint16)),
                    ("format", r"expected 32x32 uint16, one page, found 32x32 palette")),
        "palette 16-bit": (tiff_bytes(image, tags={262: (SHORT, [3])}),
                           ("format", r"expected 32x32 uint16, one page, found 32x32 palette")),
        "WhiteIsZero": (tiff_bytes(image, tags={262: (SHORT, [0])}),
                        ("format", r"TIFF photometric interpretation 0 \(WhiteIsZero \(inverted\)\).*")),
        "strip offset outside the file": (tiff_bytes(image, tags={273: (LONG, [10**6])}),
                                          ("unreadable", r"corrupt TIFF: strip 0 \(offset 1000000, 2048 bytes\) lies "
                                                         r"outside the \d+-byte file")),
        "strip counts for 1 of 2 strips": (tiff_bytes(image, strips=2, tags={279: (LONG, [SIZE * SIZE])}),
                                           ("unreadable", r"corrupt TIFF: 2 strip offsets and 1 byte counts for the 2 "
                                                          r"strips of 32 rows")),
        "Zstandard": (tiff_bytes(image, tags={259: (SHORT, [50000])}),
                      ("format", r"TIFF compression 50000 \(Zstandard\) is not supported; maefast reads 1 \(none\), "
                                 r"5 \(LZW\), 8 \(Deflate\), 32946 \(Deflate\), 32773 \(PackBits\)")),
        "strip that inflates past its rows": (tiff_bytes(image, tags={259: (SHORT, [8])}, strip_data=[bomb]),
                                              ("unreadable", r"TIFF strip 0: deflate stream decodes to more bytes than "
                                                             r"the image holds")),
        "tiled": (tifffile_bytes(image, tile=(16, 16)),
                  ("format", r"tiled TIFF is not supported \(maefast reads TIFFs in strips\)")),
        "8-bit": (tifffile_bytes((image % 256).astype(np.uint8)),
                  ("format", r"expected 32x32 uint16, one page, found 32x32 uint8")),
        "float32": (tifffile_bytes(image.astype(np.float32)),
                    ("format", r"expected 32x32 uint16, one page, found 32x32 float32")),
        "3 pages": (tifffile_bytes(np.stack([image] * 3), photometric="minisblack"),
                    ("format", r"expected 32x32 uint16, one page, found 32x32 uint16, 3 pages")),
        "truncated": (tifffile_bytes(image)[:1000],
                      ("unreadable", r"corrupt TIFF: strip 0 \(offset \d+, 2048 bytes\) lies outside the "
                                     r"1000-byte file")),
        "text": (b"not an image at all", ("format", r"expected a PNG or TIFF file")),
    }
    files, positions = screen_of(cases, clean)
    root = jump_screen(tmp_path / "tiff", files)
    outcome, _ = read_by_every_path(root)
    assert_cases(outcome, open_dataset(root), cases, positions)


def test_png_files(tmp_path):
    rng = np.random.default_rng(1)
    image = textured_image(rng, (SIZE, SIZE), np.uint8)
    clean = [pillow_bytes(textured_image(rng, (SIZE, SIZE), np.uint8)) for _ in range(4)]
    rows = b"".join(b"\0" + row.tobytes() for row in image)
    stream = zlib.compress(rows)
    cases = {
        "Pillow": (pillow_bytes(image), image),
        "every filter, split image data": (encode_png(image, np.arange(SIZE) % 5, idat_parts=3), image),
        "4-bit": (pillow_bytes((image // 17).astype(np.uint8), bits=4),
                  ("format", r"expected 32x32 uint8, one page, found 32x32 uint4")),
        "interlaced": (interlaced_png(image),
                       ("format", r"interlaced PNG is not supported \(re-save without interlacing\)")),
        "half of the rows": (png_stream_bytes(image, zlib.compress(rows[:len(rows) // 2])),
                             ("unreadable", r"truncated image data: 528 of 1056 bytes decoded")),
        "no Adler-32": (png_stream_bytes(image, stream[:-4]), ("unreadable", r"truncated zlib stream \(no checksum\)")),
        "wrong Adler-32": (png_stream_bytes(image, stream[:-1] + bytes([stream[-1] ^ 1])),
                           ("unreadable", r"corrupt image data \(Adler-32 checksum mismatch\)")),
        "16-bit": (pillow_bytes(image.astype(np.uint16) * 200),
                   ("format", r"expected 32x32 uint8, one page, found 32x32 uint16")),
        "RGB": (pillow_bytes(np.stack([image] * 3, -1)),
                ("format", r"expected 32x32 uint8, one page, found 32x32x3 uint8")),
        "palette": (png_stream_bytes(image, stream, color=3),
                    ("format", r"expected 32x32 uint8, one page, found 32x32 palette")),
        "a row that inflates past the image": (png_stream_bytes(image, zlib.compress(rows + rows)),
                                               ("unreadable", r"deflate stream decodes to more bytes than the image "
                                                              r"holds")),
    }
    files, positions = screen_of(cases, clean)
    root = rxrx_screen(tmp_path / "png", files)
    outcome, _ = read_by_every_path(root)
    assert_cases(outcome, open_dataset(root), cases, positions)


def test_illumination_functions(tmp_path):
    rng = np.random.default_rng(2)
    images = [textured_image(rng, (SIZE, SIZE), np.uint16) for _ in range(8)]
    function = rng.uniform(0.5, 2.0, (SIZE, SIZE))
    valid = npy_bytes(str({"descr": "<f8", "fortran_order": False, "shape": (SIZE, SIZE)}), function.tobytes())
    functions = [valid] * 8
    functions[1] = npy_bytes(str({"descr": "<f4", "fortran_order": False, "shape": (1, SIZE)}),
                             np.ones((1, SIZE), np.float32).tobytes())
    functions[3] = npy_bytes(str({"descr": ">f4", "fortran_order": False, "shape": (SIZE, SIZE)}),
                             function.astype(">f4").tobytes())
    zero = function.copy()
    zero[2, 5] = 0
    functions[5] = npy_bytes(str({"descr": "<f8", "fortran_order": False, "shape": (SIZE, SIZE)}), zero.tobytes())
    root = jump_screen(tmp_path / "illum", [tifffile_bytes(image) for image in images], functions)
    outcome, checked = read_by_every_path(root, illumination="illum")
    dataset = open_dataset(root, illumination="illum")
    reasons = {
        1: "expected an illumination function of (32, 32) float32 or float64 values, found (1, 32) float32",
        3: "expected an illumination function of (32, 32) float32 or float64 values, found (32, 32) '>f4'",
        5: "illumination function value 0.000000 at (2, 5) is not a finite number > 0",
    }
    for row, image in enumerate(images):
        got = outcome[dataset.ids[row]]
        if row in reasons:
            assert got[0] == "refused" and got[2:] == ("format", reasons[row])
            assert got[1].endswith(f"illum{row:03d}.npy")
        else:
            np.testing.assert_array_equal(got[1][0, 0], apply_illumination(image, function.astype(np.float32)))
    assert len(checked) == 3


def test_packed_shards_and_index_rows(tmp_path):
    rng = np.random.default_rng(3)
    source = rxrx_screen(tmp_path / "source", [pillow_bytes(textured_image(rng, (SIZE, SIZE), np.uint8))
                                               for _ in range(18)])
    root = pack_dataset(open_dataset(source), tmp_path / "packed", shard_images=2, progress=False)
    shards = sorted((root / "shards").glob("*.npy"))
    stored = np.load(shards[0])
    header = {"descr": "|u1", "fortran_order": False, "shape": stored.shape}
    five_d = np.stack([stored, stored], axis=-1)
    np.save(shards[1], five_d)
    np.save(shards[2], stored.astype(np.uint16))  # another dtype than the manifest's
    np.save(shards[3], np.asfortranarray(stored))
    shards[4].write_bytes(npy_bytes(str({**header, "descr": "|u1", "fortran_order": True})
                                    + " # {'descr': '|u1', 'fortran_order': False}", np.asfortranarray(
                                        stored).tobytes(order="F")))
    shards[5].write_bytes(shards[5].read_bytes()[:-100])
    np.save(shards[6], stored.astype(np.float64))
    index = pd.read_parquet(root / "index.parquet")
    index.loc[14, "row"], index.loc[16, "row"] = -1, 2**32 + 1
    index.to_parquet(root / "index.parquet")
    outcome, checked = read_by_every_path(root)
    reasons = {
        1: ("format", r"expected a shard of \(n, 1, 32, 32\) uint8 images, found \(2, 1, 32, 32, 2\) uint8"),
        2: ("format", r"expected a shard of \(n, 1, 32, 32\) uint8 images, found \(2, 1, 32, 32\) uint16"),
        3: ("format", r"expected a shard of \(n, 1, 32, 32\) uint8 images in C order, found a Fortran-order array"),
        4: ("unreadable", r"corrupt \.npy header: text after the dict"),
        5: ("unreadable", r"truncated \.npy file: \d+ of 2048 bytes of data"),
        6: ("format", r"expected a shard of \(n, 1, 32, 32\) uint8 images, found \(2, 1, 32, 32\) float64"),
    }
    dataset = open_dataset(root)
    table = dataset.table
    for row, image_id in enumerate(dataset.ids):
        got = outcome[image_id]
        shard = int(re.search(r"shard-(\d+)", table.at[row, "shard"]).group(1))
        if row == 14:
            assert got[2:] == ("format", "the index names row -1, the shard holds 2 images")
        elif row == 16:
            assert got[2:] == ("format", "the index names row 4294967297, the shard holds 2 images")
        elif shard in reasons:
            kind, pattern = reasons[shard]
            assert got[0] == "refused" and got[2] == kind and re.fullmatch(pattern, got[3]), (row, got)
        else:
            expected = np.load(shards[shard])[table.at[row, "row"]]
            np.testing.assert_array_equal(got[1][0], expected)
    assert len(checked) == len(reasons) + 2


def test_rxrx3_core_images(tmp_path):
    """RxRx3-core's encoded channel images (rows of a parquet shard): JPEG 2000 checked against the spec before
    imagecodecs decodes it, PNG through maefast's reader, each refusal named alike by every path."""
    rng = np.random.default_rng(5)
    image = textured_image(rng, (SIZE, SIZE), np.uint8)
    clean = [jpeg2000_bytes(textured_image(rng, (SIZE, SIZE), np.uint8)) for _ in range(4)]
    jp2, j2k = jpeg2000_bytes(image), jpeg2000_bytes(image, codecformat="j2k")
    codestream = jp2.index(b"\xff\x4f\xff\x51")
    cod = jp2.index(b"\xff\x52", codestream)  # COD: FF52, Lcod, Scod, SGcod (4 bytes), decomposition levels, ...
    forty_levels = jp2[:cod + 9] + bytes([40]) + jp2[cod + 10:]
    packets = jp2.index(b"\xff\x93", codestream) + 2  # after SOD: the packets of the one tile
    rows = b"".join(b"\0" + row.tobytes() for row in image)
    cases = {
        "JP2": (jp2, image),
        "raw codestream": (j2k, image),
        "PNG": (pillow_bytes(image), image),
        "header claims 20000x20000": (jpeg2000_claiming(jp2, 20000, 20000),
                                      ("format", r"expected 32x32 uint8, one page, found 20000x20000 uint8")),
        "truncated JP2": (jp2[:len(jp2) // 2], ("unreadable", r"truncated JP2 \(box 'jp2c' of \d+ bytes runs past "
                                                              r"the end of the file\)")),
        "truncated codestream": (j2k[:-40], ("unreadable", r"truncated JPEG 2000 codestream: tile-part of tile 0 "
                                                           r"\(\d+ bytes at byte \d+\) runs past the end of the "
                                                           r"\d+-byte codestream")),
        "no end of codestream": (j2k[:-2], ("unreadable", r"truncated JPEG 2000 codestream \(no end-of-codestream "
                                                          r"marker\)")),
        "corrupt main header": (forty_levels, ("unreadable", r"corrupt JPEG 2000 image \(OpenJPEG: opj_read_header "
                                                             r"failed\)")),
        "corrupt packets": (jp2[:packets] + b"\xff" * 40 + jp2[packets + 40:],
                            ("unreadable", r"corrupt JPEG 2000 image \(OpenJPEG: opj_decode or opj_end_decompress "
                                           r"failed\)")),
        "12 bits": (jpeg2000_bytes(image.astype(np.uint16) * 16, bitspersample=12),
                    ("format", r"expected 32x32 uint8, one page, found 32x32 uint16")),
        "3 components": (jpeg2000_bytes(np.stack([image] * 3, -1)),
                         ("format", r"expected 32x32 uint8, one page, found 32x32x3 uint8")),
        "PNG bomb": (png_stream_bytes(image, zlib.compress(rows * 64)),
                     ("unreadable", r"deflate stream decodes to more bytes than the image holds")),
        "interlaced PNG": (interlaced_png(image),
                           ("format", r"interlaced PNG is not supported \(re-save without interlacing\)")),
        "GIF": (b"GIF89a" + bytes(100), ("format", r"expected a JPEG 2000 or PNG image")),
    }
    files, positions = screen_of(cases, clean)
    root = rxrx3_core_screen(tmp_path / "core", files)
    outcome, checked = read_by_every_path(root)
    dataset = open_dataset(root)
    assert_cases(outcome, dataset, cases, positions)
    shard = str((root / "data" / "train-00000-of-00001.parquet").resolve())
    refused = [name for name, (_, expected) in cases.items() if not isinstance(expected, np.ndarray)]
    assert {path for path, _, _ in checked} == {f"{shard}#{positions[name]}" for name in refused}
    # data pack, the fourth path: skips the same images for the same reasons, packs the others' pixels
    packed = pack_dataset(dataset, tmp_path / "packed", on_error="skip", shard_images=16, progress=False)
    skipped = {(e["path"], e["reason"]) for entry in read_json(packed / "manifest.json")["shards"].values()
               for e in entry["skipped"]}
    assert skipped == {(path, reason) for path, _, reason in checked}
    repacked = open_dataset(packed)
    assert not any(c.startswith(("shard_", "row_")) for c in repacked.table.columns)
    images = ImageReader(repacked)
    for row, image_id in enumerate(repacked.ids):
        np.testing.assert_array_equal(images.read_image(row)[0], outcome[image_id][1][0, 0], err_msg=image_id)


def test_raise_names_the_first_bad_image_on_both_loaders(tmp_path):
    rng = np.random.default_rng(4)
    image = textured_image(rng, (SIZE, SIZE), np.uint8)
    files = [pillow_bytes(image)] * 3 + [interlaced_png(image)] + [pillow_bytes(image)] * 3
    dataset = open_dataset(rxrx_screen(tmp_path / "png", files))
    for backend in ("torch", "dali"):
        loader = make_tile_loader(dataset, batch_size=2, crop_size=SIZE, backend=backend, num_workers=0)
        with pytest.raises(ImageReadError) as caught:
            list(loader)
        assert (caught.value.image_id, caught.value.kind) == (dataset.ids[3], "format")
        assert "interlaced PNG is not supported" in str(caught.value)
