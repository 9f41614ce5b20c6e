"""The synthetic screen: deterministic, realistic metadata, CORUM complexes, shared complex effects."""
import numpy as np
import pandas as pd
import pytest

from maefast.cli import main
from maefast.data import open_dataset, read_channel, render_sites
from maefast.data.synthetic import design_screen, load_complexes, synth_screen


def test_render_sites_deterministic_integer_images():
    a = render_sites(3, channels=7, size=64, seed=1, dtype=np.uint16)
    assert a.shape == (3, 7, 64, 64) and a.dtype == np.uint16
    assert np.array_equal(a, render_sites(3, channels=7, size=64, seed=1, dtype=np.uint16))
    assert not np.array_equal(a, render_sites(3, channels=7, size=64, seed=2, dtype=np.uint16))
    assert (a.reshape(3, 7, -1).std(axis=-1) > 0).all()


def test_screen_metadata_and_complexes(rxrx8):
    dataset = open_dataset(rxrx8)
    table = dataset.table
    assert dataset.channels == ("DNA", "ER", "RNA", "AGP", "Mito", "Membrane")
    assert table["is_control"].sum() == 4 and set(table.loc[table.is_control, "perturbation"]) == {"EMPTY"}
    genes = pd.read_csv(rxrx8 / "genes.csv")
    assert set(table.loc[~table.is_control, "perturbation"]) == set(genes["gene"])
    members = load_complexes().set_index("complex")["genes"]
    for name, group in genes.groupby("complex"):
        assert set(group["gene"]) <= set(members[name])


def test_same_complex_shares_the_effect():
    _, genes = design_screen(num_genes=40, seed=3)
    features = genes.drop(columns=["gene", "complex"]).to_numpy()
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    similarity = unit @ unit.T
    same = genes["complex"].to_numpy()[:, None] == genes["complex"].to_numpy()[None, :]
    off_diagonal = ~np.eye(len(genes), dtype=bool)
    assert similarity[same & off_diagonal].mean() > 0.8 > 0.3 > abs(similarity[~same].mean())


def test_synth_is_deterministic_and_resumes(tmp_path, capsys):
    args = ["data", "synth", "--layout", "jump", "--genes", "3", "--plates", "2", "--experiments", "1",
            "--controls", "1", "--sites", "1", "--size", "48", "--channels", "2", "--workers", "1"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert main(args + ["--out", str(tmp_path / "b")]) == 0
    first = sorted((tmp_path / "a" / "images").rglob("*.tiff"))
    assert len(first) == 2 * (6 + 2)
    for path in first:
        assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()
    first[0].unlink()
    assert main(args + ["--out", str(tmp_path / "a")]) == 0
    assert "resuming" in capsys.readouterr().out and first[0].is_file()
    with pytest.raises(ValueError, match="other parameters"):
        synth_screen(tmp_path / "a", layout="jump", num_genes=4)


def test_the_jump_layout_in_compressed_codecs(tmp_path):
    """`--codec jpeg2000` writes the sites the TIFF screen holds, losslessly, as JPEG 2000; `--codec jpeg` 8-bit
    JPEG (a 16-bit one is refused); both open as compressed data sets."""
    args = ["data", "synth", "--layout", "jump", "--genes", "2", "--plates", "1", "--experiments", "1",
            "--replicates", "1", "--controls", "1", "--sites", "1", "--size", "40", "--channels", "2",
            "--workers", "1"]
    assert main(args + ["--out", str(tmp_path / "tiff")]) == 0
    assert main(args + ["--out", str(tmp_path / "j2k"), "--codec", "jpeg2000"]) == 0
    assert main(args + ["--out", str(tmp_path / "jpeg"), "--codec", "jpeg", "--bit-depth", "8"]) == 0
    tiff, j2k, jpeg = (open_dataset(tmp_path / name) for name in ("tiff", "j2k", "jpeg"))
    assert not tiff.compressed and j2k.compressed and jpeg.compressed and jpeg.dtype == np.uint8
    assert all(path.endswith(".jp2") for path in j2k.files_read() if not path.endswith(".npy"))
    for row in range(len(tiff)):
        for a, b in zip(tiff.channel_files(row), j2k.channel_files(row)):
            np.testing.assert_array_equal(read_channel(b), read_channel(a))
    with pytest.raises(ValueError, match="codec jpeg writes 8-bit images"):
        synth_screen(tmp_path / "bad", layout="jump", codec="jpeg", bit_depth=16)
