"""Files crafted by the tests: TIFFs, PNGs and JPEG 2000s with every field under control (valid ones come from
tifffile, Pillow and imagecodecs, the writers users have), .npy headers, and small data sets made of such files,
one image per file (or per parquet row in the RxRx3-core layout)."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import imagecodecs
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image

from tests.data.test_png_decoder import _chunk, encode_png

# TIFF field types: SHORT, LONG
SHORT, LONG = 3, 4


def tiff_bytes(image: np.ndarray, byteorder: str = "<", strips: int = 1, tags: dict | None = None,
               drop: tuple = (), extra: list | None = None, strip_data: list[bytes] | None = None) -> bytes:
    """A classic TIFF of one uncompressed page in `strips` strips, written field by field: `tags` replaces or
    adds entries {tag: (type, [values])}, `drop` removes tags, `extra` appends entries as they are (a tag
    given twice), `strip_data` replaces the strips' bytes (compressed data, say: set tag 259 too)."""
    height, width = image.shape
    order = ">" if byteorder == ">" else "<"
    raw = image.astype(image.dtype.newbyteorder(order)).tobytes()
    rows = -(-height // strips)
    row_bytes = width * image.itemsize
    chunks = strip_data or [raw[k * rows * row_bytes:(k + 1) * rows * row_bytes] for k in range(strips)]
    offsets, position = [], 8
    for chunk in chunks:
        offsets.append(position)
        position += len(chunk)
    entries = {256: (LONG, [width]), 257: (LONG, [height]), 258: (SHORT, [8 * image.itemsize]), 259: (SHORT, [1]),
               262: (SHORT, [1]), 273: (LONG, offsets), 277: (SHORT, [1]), 278: (LONG, [rows]),
               279: (LONG, [len(c) for c in chunks])}
    entries.update(tags or {})
    for tag in drop:
        entries.pop(tag, None)
    listed = sorted([(tag, kind, values) for tag, (kind, values) in entries.items()] + list(extra or []))
    ifd_offset = position + (position % 2)
    out_of_line, ifd = b"", struct.pack(order + "H", len(listed))
    after_ifd = ifd_offset + 2 + 12 * len(listed) + 4
    for tag, kind, values in listed:
        code = "H" if kind == SHORT else "I"
        packed = struct.pack(order + code * len(values), *values)
        if len(packed) <= 4:
            field = packed.ljust(4, b"\0")
        else:
            field = struct.pack(order + "I", after_ifd + len(out_of_line))
            out_of_line += packed
        ifd += struct.pack(order + "HHI", tag, kind, len(values)) + field
    ifd += struct.pack(order + "I", 0)
    header = (b"II" if order == "<" else b"MM") + struct.pack(order + "HI", 42, ifd_offset)
    body = b"".join(chunks)
    return header + body + b"\0" * (ifd_offset - position) + ifd + out_of_line


def tifffile_bytes(image: np.ndarray, **options) -> bytes:
    import tifffile
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, image, **options)
    return buffer.getvalue()


def pillow_bytes(image: np.ndarray, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=format, **options)
    return buffer.getvalue()


def png_stream_bytes(image: np.ndarray, stream: bytes, interlace: int = 0, depth: int | None = None,
                     color: int = 0) -> bytes:
    """A PNG of `image`'s size whose image data is the zlib stream given."""
    height, width = image.shape
    header = struct.pack(">IIBBBBB", width, height, depth or 8 * image.itemsize, color, 0, 0, interlace)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", stream) + _chunk(b"IEND", b"")


def filtered_rows(image: np.ndarray) -> bytes:
    """PNG rows with filter type 0 (none), big-endian samples."""
    raw = image.astype(">u2").view(np.uint8).reshape(image.shape[0], -1) if image.itemsize == 2 else image
    return b"".join(b"\0" + row.tobytes() for row in raw)


ADAM7 = [(0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2), (1, 0, 2, 1)]


def interlaced_png(image: np.ndarray) -> bytes:
    """A valid Adam7-interlaced grayscale PNG (which Pillow reads and maefast does not take)."""
    rows = b""
    for y0, x0, dy, dx in ADAM7:
        sub = image[y0::dy, x0::dx]
        if sub.size:
            rows += filtered_rows(sub)
    return png_stream_bytes(image, zlib.compress(rows), interlace=1)


def npy_bytes(header: str, data: bytes) -> bytes:
    """An .npy file (format 1.0) with exactly this header text (padded as numpy pads it)."""
    text = header.encode("latin1")
    padding = 64 - (10 + len(text) + 1) % 64
    text += b" " * padding + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text + data


def write_files(root: Path, folder: str, names: list[str], contents: list[bytes]) -> list[Path]:
    (root / folder).mkdir(parents=True, exist_ok=True)
    paths = []
    for name, content in zip(names, contents):
        path = root / folder / name
        path.write_bytes(content)
        paths.append(path)
    return paths


def jump_screen(root: Path, files: list[bytes], illumination: list[bytes] | None = None) -> Path:
    """A one-channel JUMP-layout data set (load_data.csv), image i's TIFF being files[i] (and its illumination
    function illumination[i])."""
    root.mkdir(parents=True, exist_ok=True)
    names = [f"img{i:03d}.tiff" for i in range(len(files))]
    write_files(root, "images", names, files)
    table = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": [f"A{i:03d}" for i in range(len(files))],
                          "Metadata_Site": 1, "FileName_OrigDNA": names, "PathName_OrigDNA": "images",
                          "Metadata_Perturbation": "EMPTY"})
    if illumination is not None:
        illum_names = [f"illum{i:03d}.npy" for i in range(len(files))]
        write_files(root, "illum", illum_names, illumination)
        table["FileName_IllumDNA"], table["PathName_IllumDNA"] = illum_names, "illum"
    table.to_csv(root / "load_data.csv", index=False)
    return root


def jump_channels_screen(root: Path, images: np.ndarray, encode, illumination: np.ndarray | None = None) -> Path:
    """A JUMP-layout data set of images (n, C, H, W), channel c of image i saved as encode(images[i, c])
    (bytes), with one illumination function (C, H, W) per channel when given."""
    root.mkdir(parents=True, exist_ok=True)
    count, channels = images.shape[:2]
    table = pd.DataFrame({"Metadata_Plate": "P1", "Metadata_Well": [f"A{i:03d}" for i in range(count)],
                          "Metadata_Site": 1, "Metadata_Perturbation": "EMPTY"})
    for c in range(channels):
        names = [f"img{i:03d}_ch{c}" for i in range(count)]
        write_files(root, "images", names, [encode(images[i, c]) for i in range(count)])
        table[f"FileName_Orig{c}"], table[f"PathName_Orig{c}"] = names, "images"
        if illumination is not None:
            write_files(root, "illum", [f"illum_ch{c}.npy"], [npy_bytes(str(
                {"descr": "<f8", "fortran_order": False, "shape": illumination[c].shape}), illumination[c].tobytes())])
            table[f"FileName_Illum{c}"], table[f"PathName_Illum{c}"] = f"illum_ch{c}.npy", "illum"
    table.to_csv(root / "load_data.csv", index=False)
    return root


def rxrx_screen(root: Path, files: list[bytes]) -> Path:
    """A one-channel RxRx-layout data set, image i's PNG being files[i]."""
    root.mkdir(parents=True, exist_ok=True)
    wells = [f"A{i:03d}" for i in range(len(files))]
    write_files(root, "E1/Plate1", [f"{w}_s1_w1.png" for w in wells], files)
    pd.DataFrame({"experiment": "E1", "plate": 1, "well": wells, "site": 1, "perturbation": "EMPTY"}).to_csv(
        root / "metadata.csv", index=False)
    return root


def rxrx3_core_screen(root: Path, files: list[bytes], column: str = "jp2") -> Path:
    """A one-channel RxRx3-core-layout data set, image i's encoded bytes being row i of its parquet shard (row
    groups of 4 rows, so a reader crosses them)."""
    wells = [f"A{i:03d}" for i in range(len(files))]
    (root / "data").mkdir(parents=True, exist_ok=True)
    shard = pa.table({"__key__": [f"E1/Plate1/{well}_s1_1" for well in wells], column: pa.array(files, pa.binary())})
    pq.write_table(shard, root / "data" / "train-00000-of-00001.parquet", row_group_size=4)
    pd.DataFrame({"well_id": [f"E1_1_{well}" for well in wells], "experiment_name": "E1", "plate": 1,
                  "address": wells, "treatment": "EMPTY_control"}).to_csv(root / "metadata_rxrx3_core.csv", index=False)
    return root


def jpeg2000_bytes(image: np.ndarray, **options) -> bytes:
    """A lossless JPEG 2000 of `image` (imagecodecs, i.e. OpenJPEG): a JP2 file, or codecformat="j2k" for a raw
    codestream."""
    return bytes(imagecodecs.jpeg2k_encode(image, level=0, **{"codecformat": "jp2", **options}))


def jpeg2000_claiming(data: bytes, height: int, width: int, tile: tuple[int, int] | None = None,
                      blank: bool = False) -> bytes:
    """A JPEG 2000 of one tile (imagecodecs writes one) whose headers (a JP2's ihdr box and the codestream's SIZ
    marker) claim height x width, in one tile of that size or in tiles of `tile` (height, width). blank: its
    packets replaced by empty ones, so that it is a valid codestream of a blank image of that size (a few hundred
    bytes that OpenJPEG decodes to height x width: a decompression bomb)."""
    data = bytearray(data)
    codestream = data.index(b"\xff\x4f\xff\x51")  # SOC, then the SIZ marker: FF51, Lsiz, Rsiz, Xsiz, Ysiz, ...
    tile_height, tile_width = tile or (height, width)
    struct.pack_into(">IIIIII", data, codestream + 8, width, height, 0, 0, tile_width, tile_height)
    if b"ihdr" in data:
        struct.pack_into(">II", data, data.index(b"ihdr") + 4, height, width)
    if blank:
        tile_part = data.index(b"\xff\x90", codestream)  # SOT: FF90, Lsot, Isot, Psot (the tile-part's length), ...
        packets = data.index(b"\xff\x93", tile_part) + 2  # after SOD
        data = data[:packets] + bytes(64) + b"\xff\xd9"  # a zero byte: an empty packet
        struct.pack_into(">I", data, tile_part + 6, packets + 64 - tile_part)
        if b"jp2c" in data:
            box = data.index(b"jp2c") - 4
            struct.pack_into(">I", data, box, len(data) - box)
    return bytes(data)


def textured_image(rng, shape, dtype) -> np.ndarray:
    top = np.iinfo(dtype).max
    y, x = np.mgrid[:shape[0], :shape[1]]
    smooth = (np.sin(x / 3.0) + np.cos(y / 4.0) + 2) / 4 * top * 0.7
    return np.clip(smooth + rng.integers(0, top // 8, shape), 0, top).astype(dtype)


__all__ = ["encode_png", "filtered_rows", "interlaced_png", "jpeg2000_bytes", "jpeg2000_claiming",
           "jump_channels_screen", "jump_screen", "npy_bytes", "pillow_bytes", "png_stream_bytes", "rxrx3_core_screen",
           "rxrx_screen", "textured_image", "tiff_bytes", "tifffile_bytes"]
