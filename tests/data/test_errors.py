"""Truncated PNG and missing channel file: documented errors in raise mode, exactly them skipped in skip mode."""
import json
import os

import numpy as np
import pandas as pd
import pytest

import maefast
from maefast.cli import main
from maefast.data import ImageReadError, make_loader, open_dataset
from maefast.data.check import check_dataset
from maefast.data.packed import pack_dataset
from maefast.data.synthetic import synth_screen


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_raise_names_the_bad_file(broken_rxrx, backend):
    root, bad = broken_rxrx
    loader = make_loader(open_dataset(root), batch_size=16, crop_size=32, backend=backend, num_workers=1)
    with pytest.raises(ImageReadError) as caught:
        list(loader)
    error = caught.value
    assert error.path in bad.values() and error.image_id in bad and error.path in str(error)
    assert error.kind == ("missing" if error.path == bad[error.image_id] and not os.path.exists(error.path)
                          else "unreadable")


@pytest.mark.parametrize("backend", ["dali", "torch"])
def test_skip_skips_exactly_the_bad_images(broken_rxrx, backend):
    root, bad = broken_rxrx
    dataset = open_dataset(root)
    loader = make_loader(dataset, batch_size=4, crop_size=32, crops_per_image=2, seed=3, backend=backend,
                         on_error="skip", num_workers=1)
    batches = list(loader)
    seen = [i for b in batches for i in b["ids"][::2]]
    assert sorted(seen) == sorted(set(dataset.ids) - set(bad))
    assert all(len(b["ids"]) == len(b["pixels"]) for b in batches)
    assert {s["id"]: s["path"] for s in loader.skipped} == bad
    assert {s["id"]: s["kind"] for s in loader.skipped} == {
        image_id: "unreadable" if os.path.exists(path) else "missing" for image_id, path in bad.items()}
    assert loader.state_dict()["skipped"] == loader.skipped


def test_check_reports_the_problems(broken_rxrx, tmp_path, capsys):
    root, bad = broken_rxrx
    report = check_dataset(root, progress=False)
    assert report.counts() == {"unreadable": 1, "missing": 1}
    assert {p["path"] for p in report.problems} == set(bad.values())
    assert main(["data", "check", str(root), "--json", str(tmp_path / "report.json")]) == 1
    assert json.loads((tmp_path / "report.json").read_text())["counts"] == {"unreadable": 1, "missing": 1}
    assert "missing file" in capsys.readouterr().out


def test_check_metadata_duplicates_and_sizes(rxrx8, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(rxrx8, root)
    metadata = pd.read_csv(root / "metadata.csv")
    pd.concat([metadata, metadata.iloc[:1]]).to_csv(root / "metadata.csv", index=False)
    from PIL import Image
    path = open_dataset(rxrx8).table.at[2, "file_DNA"].replace(str(rxrx8), str(root))
    Image.fromarray(np.full((50, 60), 7, np.uint8)).save(path)
    report = check_dataset(root, progress=False)
    counts = report.counts()
    assert counts["duplicate id"] == 1 and counts["format"] == 1
    with pytest.raises(ValueError, match="duplicate image ids"):
        open_dataset(root)
    metadata.drop(columns="site").to_csv(root / "metadata.csv", index=False)
    with pytest.raises(ValueError, match=r"missing metadata column\(s\) \['site'\]"):
        open_dataset(root)
    assert check_dataset(root, progress=False).counts() == {"metadata": 1}


def test_pack_skips_and_resumes(broken_rxrx, tmp_path):
    root, bad = broken_rxrx
    dataset = open_dataset(root)
    with pytest.raises(ImageReadError):
        pack_dataset(dataset, tmp_path / "strict", shard_images=4, progress=False)
    out = tmp_path / "packed"
    pack_dataset(dataset, out, shard_images=4, on_error="skip", progress=False)
    packed = open_dataset(out)
    assert sorted(packed.ids) == sorted(set(dataset.ids) - set(bad))
    manifest = json.loads((out / "manifest.json").read_text())
    assert {s["id"] for shard in manifest["shards"].values() for s in shard["skipped"]} == set(bad)
    # an interrupted run: the last shard and the completion mark are gone; the rest must not be rewritten
    last = sorted(manifest["shards"])[-1]
    os.remove(out / "shards" / last)
    del manifest["shards"][last]
    manifest["complete"] = False
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ValueError, match="not complete"):
        open_dataset(out)
    first = out / "shards" / "shard-00000.npy"
    before = first.stat().st_mtime_ns
    pack_dataset(dataset, out, shard_images=4, on_error="skip", progress=False)
    assert first.stat().st_mtime_ns == before
    assert sorted(open_dataset(out).ids) == sorted(packed.ids)
    assert check_dataset(out, progress=False).ok
    with pytest.raises(ValueError, match="other settings"):
        pack_dataset(dataset, out, shard_images=5, progress=False)


def test_skipped_images_are_reported_and_stored_as_records(broken_rxrx, tmp_path, capsys):
    """--on-error skip: pack and embed say what they skipped, in one line each, and store each skip as a record
    (id, path, reason, kind) in the manifest, not as the text of a Python object."""
    root, bad = broken_rxrx
    assert main(["data", "pack", str(root), "--out", str(tmp_path / "packed"), "--on-error", "skip",
                 "--shard-images", "4"]) == 0
    out = capsys.readouterr().out
    assert f"packed {16 - len(bad)} images" in out
    line = next(line for line in out.splitlines() if line.startswith("maefast data pack: skipped"))
    assert line.startswith(f"maefast data pack: skipped {len(bad)} unreadable image(s), all listed in ")
    assert all(image_id in line for image_id in bad)
    checkpoint = tmp_path / "encoder"
    maefast.save_pretrained(maefast.create_model("vit_debug_patch8_64", in_chans=6, img_size=32), checkpoint)
    assert main(["embed", "--checkpoint", str(checkpoint), "--data", str(root), "--out", str(tmp_path / "emb"),
                 "--on-error", "skip", "--backend", "torch", "--no-progress"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("maefast embed: skipped"))
    assert line.startswith(f"maefast embed: skipped {len(bad)} unreadable image(s), all listed in ")
    manifest = json.loads((tmp_path / "emb" / "manifest.json").read_text())
    assert {entry["id"]: entry["path"] for entry in manifest["skipped"]} == bad
    assert {entry["kind"] for entry in manifest["skipped"]} == {"missing", "unreadable"}
    assert all(set(entry) == {"id", "path", "reason", "kind"} for entry in manifest["skipped"])


def test_data_info_counts_plates_per_experiment(tmp_path, capsys):
    """RxRx plate numbers start at 1 in every experiment: 2 experiments of 2 plates are 4 plates, not 2."""
    root = synth_screen(tmp_path / "screen", layout="rxrx", num_genes=4, replicates=2, num_plates=4,
                        num_experiments=2, controls_per_plate=1, sites_per_well=1, size=64, progress=False)
    assert main(["data", "info", str(root)]) == 0
    assert "batches 2, plates 4 (2 per batch), perturbations 5, control images 4" in capsys.readouterr().out
