"""The RxRx3-core layout: a small screen maefast writes in it opens as a data set, decodes on the CPU to the
pixels it was rendered with (JPEG 2000 and PNG), loads through both loader backends, and its published-style
embeddings table reads through read_embeddings."""
import json

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from maefast.cli import main
from maefast.data import make_loader, make_tile_loader, open_dataset
from maefast.data.decode import ImageReadError, ImageSpec, readers
from maefast.data.rxrx3_core import decode_image, perturbation_of
from maefast.data.rxrx3_core_write import encode_image
from maefast.data.synthetic import synth_screen
from maefast.data.torch_backend import ImageReader
from maefast.errors import UserInputError
from tests.data.crafted import jpeg2000_bytes, jpeg2000_claiming

SMALL = dict(num_genes=6, replicates=2, num_plates=2, num_experiments=2, controls_per_plate=2, sites_per_well=1,
             size=64, channels=3, workers=1, progress=False, num_compounds=1, concentrations=(1.0, 3.0))


@pytest.fixture(scope="module")
def screens(tmp_path_factory):
    root = tmp_path_factory.mktemp("rxrx3core")
    rxrx = synth_screen(root / "rxrx", layout="rxrx", **SMALL)
    core = synth_screen(root / "core", layout="rxrx3-core", **SMALL)
    return rxrx, core


def test_written_layout_opens_with_the_rendered_pixels(screens):
    rxrx, core = screens
    assert sorted(p.name for p in (core / "data").iterdir()) == ["train-00000-of-00001.parquet"]
    shard = pq.read_table(core / "data" / "train-00000-of-00001.parquet")
    assert shard.column_names == ["__key__", "jp2"] and shard.num_rows == 3 * len(open_dataset(rxrx))
    assert shard.column("__key__")[0].as_py().count("/") == 2
    metadata = pd.read_csv(core / "metadata_rxrx3_core.csv")
    assert list(metadata.columns)[:6] == ["well_id", "experiment_name", "plate", "address", "gene", "treatment"]
    assert set(metadata["perturbation_type"]) == {"CRISPR", "COMPOUND"}
    assert (metadata["treatment"] == "EMPTY_control").sum() == 4
    reference, dataset = open_dataset(rxrx), open_dataset(core)
    assert dataset.layout == "rxrx3-core" and dataset.channels == reference.channels  # channels.json names
    assert dataset.image_shape == (64, 64) and dataset.dtype == np.uint8 and len(dataset) == len(reference)
    by_id = {(r.batch, str(r.plate), r.well): i for i, r in enumerate(reference.table.itertuples())}
    ours, theirs = ImageReader(dataset), ImageReader(reference)
    for row in range(len(dataset)):
        record = dataset.table.iloc[row]
        expected = theirs.read_image(by_id[(record["batch"], record["plate"], record["well"])])
        np.testing.assert_array_equal(ours.read_image(row), expected)  # lossless JPEG 2000
    table = dataset.table.set_index("well")
    assert table["is_control"].sum() == 4 and set(table.loc[table["is_control"], "perturbation"]) == {"EMPTY_control"}
    assert table["concentration"].notna().sum() == 2 * 2


def test_both_loaders_give_the_same_crops(screens):
    dataset = open_dataset(screens[1])
    batches = {}
    for backend in ("torch", "dali"):
        loader = make_loader(dataset, batch_size=4, crop_size=32, crops_per_image=2, seed=1, backend=backend,
                             num_workers=0 if backend == "torch" else 1)
        batches[backend] = [b["pixels"].numpy() for b in loader]
    assert len(batches["torch"]) == len(batches["dali"]) > 0
    for a, b in zip(batches["torch"], batches["dali"]):
        np.testing.assert_array_equal(a, b)
    tiles = next(iter(make_tile_loader(dataset, batch_size=2, crop_size=32, backend="torch", num_workers=0)))
    assert tiles["pixels"].shape == (8, 3, 32, 32)


def test_png_and_16_bit_images_decode_and_bad_bytes_are_named(tmp_path):
    rng = np.random.default_rng()
    for dtype in (np.uint8, np.uint16):
        image = rng.integers(0, np.iinfo(dtype).max, (20, 24), dtype=dtype)
        for codec in ("png", "jpeg2000"):
            np.testing.assert_array_equal(decode_image(encode_image(image, codec)), image)
            spec = ImageSpec((20, 24), np.dtype(dtype))
            np.testing.assert_array_equal(decode_image(encode_image(image, codec), spec=spec), image)
    twelve_bits = rng.integers(0, 4096, (20, 24)).astype(np.uint16)  # 12-bit samples decode to uint16 values
    np.testing.assert_array_equal(decode_image(jpeg2000_bytes(twelve_bits, bitspersample=12)), twelve_bits)
    with pytest.raises(ImageReadError, match="shard.parquet#3: expected a JPEG 2000 or PNG image"):
        decode_image(b"GIF89a....", "shard.parquet#3")
    with pytest.raises(ImageReadError, match=r"^x#1: truncated JP2 \(box 'jp2h' of 45 bytes runs past the end of "
                                             r"the file\)$"):
        decode_image(encode_image(rng.integers(0, 255, (20, 24), dtype=np.uint8), "jpeg2000")[:60], "x#1")
    with pytest.raises(ImageReadError, match=r"expected 20x24 uint8, one page, found 20x24 int8"):
        decode_image(jpeg2000_bytes(rng.integers(-100, 100, (20, 24), dtype=np.int8)), spec=ImageSpec((20, 24),
                                                                                                      np.uint8))
    assert list(perturbation_of(pd.Series(["AAK1_2", "EMPTY_control", "CMPD-001"]))) == ["AAK1", "EMPTY_control",
                                                                                         "CMPD-001"]


def test_jpeg2000_tiles_and_ratio_are_capped_before_decoding():
    """The check before imagecodecs: a header of more tiles than the table allows (each costs OpenJPEG memory,
    whatever its size), and a file that would expand more than the ratio cap (a blank codestream of 4096 x 4096
    in 281 bytes decodes, matching its header, to 16 MB)."""
    image = np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    data = jpeg2000_bytes(image)
    in_tiles = jpeg2000_claiming(data, 1024, 1024, tile=(8, 8))
    with pytest.raises(ImageReadError, match=r"^x: JPEG 2000 image in 16384 tiles; maefast reads at most 4096$"):
        decode_image(in_tiles, "x", spec=ImageSpec((1024, 1024), np.uint8))
    blank = jpeg2000_claiming(data, 4096, 4096, blank=True)
    with pytest.raises(ImageReadError, match=rf"a {len(blank)}-byte file that decodes to 16777216 bytes \(\d+:1\) "
                                             r"exceeds the decompression ratio cap of 1100:1"):
        decode_image(blank, "x", spec=ImageSpec((4096, 4096), np.uint8))
    small_blank = jpeg2000_claiming(data, 64, 64, blank=True)  # at a size the cap allows: mid-grey (DC shift)
    np.testing.assert_array_equal(decode_image(small_blank, "x", spec=ImageSpec((64, 64), np.uint8)),
                                  np.full((64, 64), 128, np.uint8))
    assert readers().accepted_formats()["jpeg2000"] == {"bit_depths": list(range(8, 17)), "max_tiles": 4096}


def test_the_fingerprint_covers_the_parquet_shards(screens, tmp_path):
    """Another screen with the same metadata and keys (one channel image re-encoded with other pixels) is told
    apart by its content; a moved copy keeps the fingerprint."""
    core = screens[1]
    fingerprint = open_dataset(core).fingerprint()
    assert fingerprint["content"]["files"] == 1
    moved = tmp_path / "moved"
    moved.mkdir()
    for name in ("metadata_rxrx3_core.csv", "channels.json"):
        (moved / name).write_bytes((core / name).read_bytes())
    shard = pq.read_table(core / "data" / "train-00000-of-00001.parquet")
    (moved / "data").mkdir()
    pq.write_table(shard, moved / "data" / "train-00000-of-00001.parquet")
    assert open_dataset(moved).fingerprint() == fingerprint
    images = [value["bytes"] for value in shard.column("jp2").to_pylist()]  # the Hugging Face image struct
    images[5] = encode_image(255 - decode_image(images[5]), "jpeg2000")
    pq.write_table(shard.set_column(1, "jp2", pa.array(images, pa.binary())),
                   moved / "data" / "train-00000-of-00001.parquet")
    changed = open_dataset(moved).fingerprint()
    assert changed["table_sha256"] == fingerprint["table_sha256"]
    assert changed["content"]["sha256"] != fingerprint["content"]["sha256"]


def test_damaged_layout_is_refused_naming_the_problem(screens, tmp_path):
    core = screens[1]
    (tmp_path / "data").mkdir()
    (tmp_path / "metadata_rxrx3_core.csv").write_bytes((core / "metadata_rxrx3_core.csv").read_bytes())
    pq.write_table(pa.table({"__key__": ["not a key"], "jp2": [b"x"]}), tmp_path / "data" / "a.parquet")
    with pytest.raises(UserInputError, match="not <experiment>/Plate<plate>/<well>_s<site>_<channel>"):
        open_dataset(tmp_path)
    pq.write_table(pa.table({"__key__": ["SYN-01/Plate1/A01_s1_1"], "image": [b"x"]}), tmp_path / "data" / "a.parquet")
    with pytest.raises(UserInputError, match="one image column"):
        open_dataset(tmp_path)


def test_published_embeddings_read_and_benchmark_like_maefast_own(screens, tmp_path, capsys):
    core = screens[1]
    metadata = pd.read_csv(core / "metadata_rxrx3_core.csv")
    rng = np.random.default_rng()
    published = pd.DataFrame(rng.normal(size=(len(metadata), 8)), columns=[f"feature_{i}" for i in range(8)])
    published.insert(0, "well_id", metadata["well_id"])
    published.to_parquet(tmp_path / "OpenPhenom_embeddings.parquet", index=False)
    from maefast import read_embeddings
    table = read_embeddings(tmp_path / "OpenPhenom_embeddings.parquet", metadata=core / "metadata_rxrx3_core.csv")
    assert {"perturbation", "is_control", "batch", "concentration"} <= set(table.columns) and len(table) == 20
    assert table.filter(like="feature_").shape[1] == 8
    assert main(["map", "--embeddings", str(tmp_path / "OpenPhenom_embeddings.parquet"), "--metadata",
                 str(core / "metadata_rxrx3_core.csv"), "--perturbation-col", "perturbation", "--control",
                 "EMPTY_control", "--batch-col", "batch", "--pca-components", "0", "--no-tvn",
                 "--out", str(tmp_path / "map.parquet")]) == 0
    assert len(pd.read_parquet(tmp_path / "map.parquet")) == 6 + 1  # the genes and the compound
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "unrelated.csv", index=False)
    with pytest.raises(UserInputError, match="no column in common"):
        read_embeddings(tmp_path / "OpenPhenom_embeddings.parquet", metadata=tmp_path / "unrelated.csv")
    assert json.loads((core / "synth.json").read_text())["layout"] == "rxrx3-core"
