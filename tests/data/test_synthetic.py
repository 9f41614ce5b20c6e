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
    assert "rendering 1 site of" in capsys.readouterr().out and first[0].is_file()  # the one missing site only
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


def test_compounds_mimic_their_targets_with_the_dose(tmp_path):
    from maefast.data.synthetic import design_compounds
    sites, genes = design_screen(num_genes=20, replicates=2, num_plates=2, num_experiments=1, controls_per_plate=4,
                                 sites_per_well=1, seed=4, num_compounds=5, concentrations=(0.1, 1.0, 10.0))
    compounds = design_compounds(genes, 5, (0.1, 1.0, 10.0), seed=4)
    treated = sites[sites["compound"].notna()]
    assert len(treated) == 5 * 3 * 2 and set(treated["concentration"]) == {0.1, 1.0, 10.0}
    assert treated.groupby(["compound", "concentration"])["plate"].nunique().eq(2).all()  # replicates on 2 plates
    assert sites.loc[sites["compound"].isna(), "perturbation"].equals(sites.loc[sites["compound"].isna(), "gene"])
    effects = genes.set_index("gene").drop(columns="complex")
    for _, rows in compounds.groupby("compound"):
        vectors = rows.set_index("concentration")[effects.columns]
        norms = np.linalg.norm(vectors.to_numpy(), axis=1)
        assert np.all(np.diff(norms) > 0)  # stronger at higher doses
        targets = rows["targets"].iloc[0].split()
        if targets:  # mimics the mean of its targets' knockouts
            target = effects.loc[targets].mean().to_numpy()
            cosine = vectors.iloc[-1].to_numpy() @ target / (norms[-1] * np.linalg.norm(target))
            assert cosine > 0.85
    assert (compounds.drop_duplicates("compound")["targets"] == "").sum() == 1  # one decoy in five
    out = synth_screen(tmp_path / "screen", layout="rxrx", num_genes=6, replicates=1, num_plates=1,
                       num_experiments=1, controls_per_plate=2, sites_per_well=1, size=32, channels=2,
                       num_compounds=2, concentrations=(1.0, 5.0), workers=1, progress=False)
    table = open_dataset(out).table
    assert set(table["perturbation"]) >= {"CMPD-001", "CMPD-002", "EMPTY"}
    assert sorted(table["concentration"].dropna().unique()) == [1.0, 5.0]
    pairs = pd.read_csv(out / "compound_targets.csv")
    assert list(pairs.columns) == ["compound", "gene"] and set(pairs["gene"]) <= set(table["perturbation"])
