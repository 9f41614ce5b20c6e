"""Bounded decoding on every path: a decompression bomb is refused before it is inflated (its header claims
more than the data set's spec: TIFF, PNG and RxRx3-core's JPEG 2000, before imagecodecs sees it) or after the
spec's bytes (its header matches, its data does not end there);
a file that claims to expand more than the ratio cap is refused before decoding; a FIFO named as an image or
a shard is refused, not waited on. Memory is measured in a separate process (its peak resident size)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest

from maefast.data import open_dataset
from maefast.data.packed import pack_dataset
from tests.data.crafted import (
    LONG,
    SHORT,
    jpeg2000_bytes,
    jpeg2000_claiming,
    jump_screen,
    pillow_bytes,
    png_stream_bytes,
    rxrx3_core_screen,
    rxrx_screen,
    textured_image,
    tiff_bytes,
    tifffile_bytes,
)
from tests.data.test_parity import read_by_every_path

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("nvidia.dali")

MEASURE = """
import json, resource, sys
from maefast.data import make_tile_loader, open_dataset
from maefast.data.check import check_dataset

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def read(dataset, backend):
    loader = make_tile_loader(dataset, batch_size=4, crop_size=128, backend=backend, on_error="skip", num_workers=0)
    ids = [i for batch in loader for i in batch["ids"]]
    return ids, [(s["id"], s["kind"], s["reason"]) for s in loader.skipped]

outcomes = {}
for root in sys.argv[1:]:
    dataset = open_dataset(root)
    clean = dataset.subset([r for r in range(len(dataset)) if r % 2 == 0])  # the bombs are at odd rows
    for backend in ("torch", "dali"):
        read(clean, backend)
    check_dataset(clean.root, progress=False).problems  # every path has run once: its own memory is counted
    before = peak()
    outcome = {backend: read(dataset, backend) for backend in ("torch", "dali")}
    outcome["check"] = [(p["id"], p["kind"], p["reason"]) for p in check_dataset(root, progress=False).problems]
    outcome["growth"] = peak() - before
    outcomes[root] = outcome
print(json.dumps(outcomes))
"""

BOMB_BYTES = 800 << 20  # what each bomb inflates to


@pytest.fixture(scope="module")
def zeros_stream():
    compressor, block = zlib.compressobj(1), b"\0" * (1 << 20)
    return b"".join(compressor.compress(block) for _ in range(BOMB_BYTES >> 20)) + compressor.flush()


def test_decompression_bombs_are_refused_before_they_inflate(tmp_path, zeros_stream):
    rng = np.random.default_rng(0)
    clean = [tifffile_bytes(textured_image(rng, (128, 128), np.uint16)) for _ in range(4)]
    claims_more = tiff_bytes(np.zeros((20000, 20000), np.uint16)[:1, :1], tags={
        256: (LONG, [20000]), 257: (LONG, [20000]), 259: (SHORT, [8]), 278: (LONG, [20000]),
        279: (LONG, [len(zeros_stream)])}, strip_data=[zeros_stream])
    matches = tiff_bytes(np.zeros((128, 128), np.uint16), tags={259: (SHORT, [8])}, strip_data=[zeros_stream])
    tiffs = jump_screen(tmp_path / "tiff", [clean[0], claims_more, clean[1], matches, clean[2], clean[3]])
    # a 128x128 16-bit PNG whose image data inflates to 800 MB
    png_bomb = png_stream_bytes(np.zeros((128, 128), np.uint16), zeros_stream)
    pngs = rxrx_screen(tmp_path / "png", [pillow_bytes(textured_image(rng, (128, 128), np.uint16)), png_bomb]
                       + [pillow_bytes(textured_image(rng, (128, 128), np.uint16))] * 2)
    # RxRx3-core: a 281-byte JPEG 2000 that OpenJPEG decodes to 8000 x 8000 (over 300 MB at its peak) and the
    # 800 MB PNG bomb (8-bit), each in a row of the parquet shard
    jpeg2000 = [jpeg2000_bytes(textured_image(rng, (128, 128), np.uint8)) for _ in range(4)]
    cores = rxrx3_core_screen(tmp_path / "core", [jpeg2000[0], jpeg2000_claiming(jpeg2000[0], 8000, 8000, blank=True),
                                                  jpeg2000[1], png_stream_bytes(np.zeros((128, 128), np.uint8),
                                                                                zeros_stream)] + jpeg2000[2:])
    result = subprocess.run([sys.executable, "-c", MEASURE, str(tiffs), str(pngs), str(cores)], capture_output=True,
                            text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    outcomes = json.loads(result.stdout.strip().splitlines()[-1])
    tiff_ids, png_ids, core_ids = open_dataset(tiffs).ids, open_dataset(pngs).ids, open_dataset(cores).ids
    expected = {
        str(tiffs): [(tiff_ids[1], "format", "expected 128x128 uint16, one page, found 20000x20000 uint16"),
                     (tiff_ids[3], "unreadable", "TIFF strip 0: deflate stream decodes to more bytes than the image "
                                                 "holds")],
        str(pngs): [(png_ids[1], "unreadable", "deflate stream decodes to more bytes than the image holds")],
        str(cores): [(core_ids[1], "format", "expected 128x128 uint8, one page, found 8000x8000 uint8"),
                     (core_ids[3], "unreadable", "deflate stream decodes to more bytes than the image holds")],
    }
    for root, refused in expected.items():
        outcome = outcomes[root]
        for path in ("torch", "dali", "check"):
            skipped = outcome[path][1] if path != "check" else outcome[path]
            assert sorted(map(tuple, skipped)) == refused, (root, path, skipped)
        assert outcome["growth"] < 100 << 20, f"{root}: the peak grew by {outcome['growth'] >> 20} MiB"


def test_the_decompression_ratio_cap(tmp_path, monkeypatch):
    """A blank image compresses well as Deflate (libtiff): read under the default cap (1100:1), refused by every
    path under a cap of half its ratio, with the cap named."""
    rng = np.random.default_rng(1)
    blank = np.zeros((256, 256), np.uint16)
    files = [pillow_bytes(textured_image(rng, (256, 256), np.uint16), "TIFF") for _ in range(3)]
    files.insert(1, pillow_bytes(blank, "TIFF", compression="tiff_adobe_deflate"))
    ratio = blank.nbytes / len(files[1])
    assert ratio > 50
    root = jump_screen(tmp_path / "screen", files)
    outcome, checked = read_by_every_path(root)
    assert outcome[open_dataset(root).ids[1]][0] == "read" and not checked
    monkeypatch.setenv("MAEFAST_MAX_DECOMPRESSION_RATIO", str(int(ratio / 2)))
    outcome, checked = read_by_every_path(root)
    refused = outcome[open_dataset(root).ids[1]]
    assert refused[0] == "refused" and refused[2] == "format"
    assert refused[3].startswith(f"a {len(files[1])}-byte file that decodes to 131072 bytes (")
    assert refused[3].endswith(f"{int(ratio)}:1) exceeds the decompression ratio cap of {int(ratio / 2)}:1 "
                               f"(MAEFAST_MAX_DECOMPRESSION_RATIO)")
    monkeypatch.setenv("MAEFAST_MAX_DECOMPRESSION_RATIO", "-3")
    with pytest.raises(ValueError, match=r"MAEFAST_MAX_DECOMPRESSION_RATIO='-3' must be a positive number"):
        read_by_every_path(root)


FIFO_READS = """
import json, sys
from maefast.data import make_tile_loader, open_dataset
from maefast.data.check import check_dataset
result = {}
for root in sys.argv[1:]:
    dataset = open_dataset(root)
    for backend in ("torch", "dali"):
        loader = make_tile_loader(dataset, batch_size=4, crop_size=32, backend=backend, on_error="skip", num_workers=0)
        result[f"{root} {backend}"] = [len([i for b in loader for i in b["ids"]]),
                                        sorted({(s["kind"], s["reason"]) for s in loader.skipped})]
    result[f"{root} check"] = sorted({(p["kind"], p["reason"]) for p in check_dataset(root, progress=False).problems})
print(json.dumps(result))
"""


def test_a_fifo_is_refused_not_waited_on(tmp_path):
    """A read blocked on a FIFO ignored SIGTERM for over 11 minutes; now no path opens one for reading."""
    rng = np.random.default_rng(2)
    pngs = rxrx_screen(tmp_path / "png", [pillow_bytes(textured_image(rng, (32, 32), np.uint8)) for _ in range(4)])
    packed = pack_dataset(open_dataset(pngs), tmp_path / "packed", shard_images=2, progress=False)
    fifo = open_dataset(pngs).table.at[2, "file_w1"]
    os.unlink(fifo)
    os.mkfifo(fifo)
    shard = packed / "shards" / "shard-00001.npy"
    shard.unlink()
    os.mkfifo(shard)
    result = subprocess.run([sys.executable, "-c", FIFO_READS, str(pngs), str(packed)], capture_output=True,
                            text=True, timeout=300, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode == 0, result.stderr[-3000:]
    outcome = json.loads(result.stdout.strip().splitlines()[-1])
    refused = [["unreadable", "not a regular file (a FIFO)"]]
    for path in ("torch", "dali"):
        assert outcome[f"{pngs} {path}"] == [3, refused]
        assert outcome[f"{packed} {path}"] == [2, refused]
    assert outcome[f"{pngs} check"] == outcome[f"{packed} check"] == refused
