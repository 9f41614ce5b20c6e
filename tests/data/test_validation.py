"""Every loader path checks every image against what the dataset declares (maefast.data.decode.ImageSpec):
a larger channel image, an 8-bit TIFF in a 16-bit screen, a packed shard of another size and a multi-page
TIFF are refused with an error naming the file (both backends, and `data check` says the same), or skipped
and counted with on_error="skip", the first image of a run included."""
import shutil

import numpy as np
import pytest
import tifffile
from PIL import Image

from maefast.data import ImageReadError, make_loader, make_tile_loader, open_dataset
from maefast.data.check import check_dataset
from maefast.data.packed import pack_dataset

BACKENDS = ["dali", "torch"]


def copy_screen(source, tmp_path):
    root = tmp_path / "screen"
    shutil.copytree(source, root)
    return root


def read_all(dataset, backend, on_error="raise", tiles=False):
    options = dict(batch_size=4, crop_size=32, backend=backend, on_error=on_error, num_workers=0)
    loader = make_tile_loader(dataset, **options) if tiles else make_loader(dataset, seed=1, **options)
    ids = [i for batch in loader for i in batch["ids"]]
    return loader, ids


def assert_refused_then_skipped(dataset, backend, row, path, reason, tiles=False):
    """raise: the ImageReadError names the file and gives `reason` (what was expected, what was found);
    skip: exactly that image is left out and listed in loader.skipped with the same reason."""
    image_id = dataset.table.at[row, "id"]
    with pytest.raises(ImageReadError) as caught:
        read_all(dataset, backend, tiles=tiles)
    error = caught.value
    assert (error.path, error.image_id, error.kind, error.reason) == (str(path), image_id, "format", reason)
    assert str(path) in str(error)
    loader, ids = read_all(dataset, backend, on_error="skip", tiles=tiles)
    assert set(ids) == set(dataset.ids) - {image_id}
    assert loader.skipped == [dict(id=image_id, path=str(path), reason=reason, kind="format")]


@pytest.mark.parametrize("backend", BACKENDS)
def test_larger_channel_image(rxrx8, tmp_path, backend):
    root = copy_screen(rxrx8, tmp_path)
    path = open_dataset(root).table.at[5, "file_ER"]
    Image.fromarray(np.full((128, 128), 9, np.uint8)).save(path)
    assert_refused_then_skipped(open_dataset(root), backend, 5, path,
                                "expected 96x96 uint8, one page, found 128x128 uint8")


TIFF_PROBES = {  # what replaces one channel file of the 16-bit 72x72 jump screen, and what the error says
    "8-bit TIFF": (np.full((72, 72), 9, np.uint8), {}, "72x72 uint8"),
    "multi-page TIFF": (np.full((3, 72, 72), 9, np.uint16), dict(photometric="minisblack"), "72x72 uint16, 3 pages"),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("probe", sorted(TIFF_PROBES))
def test_tiff_of_another_kind(jump16, tmp_path, backend, probe):
    array, options, found = TIFF_PROBES[probe]
    root = copy_screen(jump16, tmp_path)
    dataset = open_dataset(root)
    path = dataset.table.at[6, f"file_{dataset.channels[1]}"]
    tifffile.imwrite(path, array, **options)
    assert_refused_then_skipped(open_dataset(root), backend, 6, path, f"expected 72x72 uint16, one page, found {found}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_packed_shard_of_another_size(rxrx8, tmp_path, backend):
    out = pack_dataset(open_dataset(rxrx8), tmp_path / "packed", shard_images=4, progress=False)
    dataset = open_dataset(out)
    shard = dataset.table.at[0, "shard"]
    stored = np.load(shard)
    np.save(shard, np.zeros(stored.shape[:2] + (120, 100), stored.dtype))
    in_shard = set(dataset.table.loc[dataset.table["shard"] == shard, "id"])
    reason = f"expected a shard of (n, 6, 96, 96) uint8 images, found {(len(stored), 6, 120, 100)} uint8"
    with pytest.raises(ImageReadError) as caught:
        read_all(dataset, backend)
    assert (caught.value.path, caught.value.kind, caught.value.reason) == (shard, "format", reason)
    loader, ids = read_all(dataset, backend, on_error="skip")
    assert set(ids) == set(dataset.ids) - in_shard
    assert {s["id"] for s in loader.skipped} == in_shard and {s["reason"] for s in loader.skipped} == {reason}
    assert check_dataset(out, progress=False).problems == [dict(kind="format", id=None, path=shard, reason=reason)]


@pytest.mark.parametrize("backend", BACKENDS)
def test_first_image_can_be_skipped(rxrx8, jump16, tmp_path, backend):
    """The first image of the table (and of a tiling run) neither sets the norm nor escapes the checks."""
    root = copy_screen(rxrx8, tmp_path)
    path = open_dataset(root).table.at[0, "file_DNA"]
    with open(path, "r+b") as handle:
        handle.truncate(30)  # not even a whole header
    dataset = open_dataset(root)
    assert (dataset.image_shape, dataset.dtype, len(dataset.channels)) == ((96, 96), np.uint8, 6)
    loader, ids = read_all(dataset, backend, on_error="skip", tiles=True)
    assert set(ids) == set(dataset.ids[1:])
    assert [(s["id"], s["path"], s["kind"]) for s in loader.skipped] == [(dataset.ids[0], path, "unreadable")]

    jump = copy_screen(jump16, tmp_path / "jump")
    first = open_dataset(jump).table.at[0, f"file_{open_dataset(jump).channels[0]}"]
    tifffile.imwrite(first, np.full((72, 72), 9, np.uint8))
    dataset = open_dataset(jump)
    assert dataset.dtype == np.uint16
    assert_refused_then_skipped(dataset, backend, 0, first, "expected 72x72 uint16, one page, found 72x72 uint8",
                                tiles=True)


def test_check_reports_what_the_loaders_refuse(jump16, tmp_path):
    root = copy_screen(jump16, tmp_path)
    dataset = open_dataset(root)
    files = dataset.table[[f"file_{c}" for c in dataset.channels]].to_numpy()
    tifffile.imwrite(files[1, 0], np.full((72, 72), 9, np.uint8))
    tifffile.imwrite(files[2, 1], np.full((3, 72, 72), 9, np.uint16), photometric="minisblack")
    tifffile.imwrite(files[3, 2], np.full((80, 72), 9, np.uint16))
    report = check_dataset(root, progress=False)
    found = {p["path"]: p["reason"] for p in report.problems}
    assert report.counts() == {"format": 3}
    for row, channel in ((1, 0), (2, 1), (3, 2)):
        with pytest.raises(ImageReadError) as caught:
            read_all(dataset.subset([row]), "torch")
        assert found[files[row, channel]] == caught.value.reason


def test_rxrx_paths_outside_the_root(rxrx8, tmp_path):
    """An `experiment` value with ../ leaves the data root: refused naming the row, read with the opt-in."""
    import pandas as pd

    from maefast.cli import main
    root = copy_screen(rxrx8, tmp_path)
    metadata = pd.read_csv(root / "metadata.csv")
    experiment = metadata.at[3, "experiment"]
    shutil.copytree(root / experiment, tmp_path / "elsewhere")
    metadata.loc[3:, "experiment"] = "../elsewhere"
    metadata.to_csv(root / "metadata.csv", index=False)
    escaped = f"{(tmp_path / 'screen').resolve()}/../elsewhere/Plate"
    with pytest.raises(ValueError, match=rf"metadata.csv: row 3 \(experiment, plate, well\) names {escaped}.*, "
                                         rf"outside the data root .*screen \(and {len(metadata) - 4} more rows\); "
                                         "metadata paths must stay inside the data root unless allowed"):
        open_dataset(root)
    assert check_dataset(root, progress=False).counts() == {"metadata": 1}
    assert main(["data", "info", str(root)]) == 2
    dataset = open_dataset(root, allow_outside_root=True)
    assert dataset.table.at[3, "file_DNA"].startswith(escaped)
    _, ids = read_all(dataset, "torch")
    assert sorted(ids) == sorted(dataset.ids)
    assert main(["data", "info", str(root), "--allow-outside-root"]) == 0
    assert check_dataset(root, progress=False, allow_outside_root=True).ok


@pytest.mark.parametrize("kind", ["absolute", "parent"])
def test_jump_paths_outside_the_root(jump16, tmp_path, kind):
    """PathName_* / FileName_* columns that leave the table's folder: refused, or read with the opt-in."""
    import pandas as pd

    from maefast.train.config import build_config
    root = copy_screen(jump16, tmp_path)
    table = pd.read_csv(root / "load_data.csv")
    channel = open_dataset(root).channels[2]
    outside = tmp_path / "outside"
    outside.mkdir()
    source = root / table.at[5, f"PathName_Orig{channel}"] / table.at[5, f"FileName_Orig{channel}"]
    shutil.copy(source, outside / "moved.tiff")
    if kind == "absolute":
        table.at[5, f"PathName_Orig{channel}"] = str(outside)
    else:
        table.at[5, f"PathName_Orig{channel}"] = "../outside"
    table.at[5, f"FileName_Orig{channel}"] = "moved.tiff"
    table.to_csv(root / "load_data.csv", index=False)
    with pytest.raises(ValueError, match=rf"load_data.csv: row 5 \(PathName_Orig{channel}, FileName_Orig{channel}\) "
                                         r"names .*moved.tiff, outside the data root"):
        open_dataset(root)
    dataset = open_dataset(root, allow_outside_root=True)
    assert dataset.table.at[5, f"file_{channel}"].endswith("moved.tiff")
    for backend in BACKENDS:
        _, ids = read_all(dataset, backend)
        assert sorted(ids) == sorted(dataset.ids)
    assert build_config({"data": {"allow_outside_root": True}}).data.allow_outside_root
    with pytest.raises(ValueError, match="data.allow_outside_root='yes please' must be true or false"):
        build_config({"data": {"allow_outside_root": "yes please"}})


def test_packed_shard_names_stay_inside(rxrx8, tmp_path):
    import pandas as pd
    out = pack_dataset(open_dataset(rxrx8), tmp_path / "packed", shard_images=8, progress=False)
    index = pd.read_parquet(out / "index.parquet")
    index.loc[index["shard"] == "shard-00001.npy", "shard"] = "../../shard-00001.npy"
    index.to_parquet(out / "index.parquet")
    with pytest.raises(ValueError, match=r"index.parquet: row 8 \(shard\) names .*/shards/../../shard-00001.npy, "
                                         r"outside the data root .*packed \(and 7 more rows\)"):
        open_dataset(out)


def test_a_dotdot_after_a_symlink_inside_the_root(rxrx8, tmp_path):
    """`link/..` reads as the root itself, but the kernel resolves it as the parent of the link's target: with a
    link inside the root to a folder elsewhere, the metadata read outside the root."""
    import pandas as pd
    root = copy_screen(rxrx8, tmp_path)
    metadata = pd.read_csv(root / "metadata.csv")
    experiment = metadata.at[0, "experiment"]
    outside = tmp_path / "outside"
    shutil.copytree(root / experiment, outside / experiment)  # what link/../<experiment> reaches
    (outside / "inner").mkdir()
    (root / "link").symlink_to(outside / "inner")
    metadata["experiment"] = "link/../" + metadata["experiment"].astype(str)
    metadata.to_csv(root / "metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"metadata.csv: row 0 \(experiment, plate, well\) names .*/link/\.\./.*, "
                                         r"outside the data root"):
        open_dataset(root)
    assert len(open_dataset(root, allow_outside_root=True)) == len(metadata)
    (root / "link").unlink()
    (root / "link").mkdir()  # a real folder: link/.. is the root, as the text says
    assert len(open_dataset(root)) == len(metadata)
