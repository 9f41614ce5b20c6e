"""Embeddings and maps as parquet, AnnData (.h5ad) and pycytominer-style tables: round trips, atomic
writes, the command line (embed --format, export, map --format, benchmark on any format)."""
import sys

import numpy as np
import pandas as pd
import pytest

import maefast
from maefast.cli import main
from maefast.embedding.outputs import read_embeddings
from maefast.evaluate import build_map
from maefast.tables import FORMATS, feature_columns, feature_names, metadata_column, row_names, write_table

SUFFIX = {"parquet": ".parquet", "h5ad": ".h5ad", "pycytominer-csv": ".csv.gz", "pycytominer-parquet": ".parquet"}


def has_anndata() -> bool:
    try:
        import anndata  # noqa: F401
    except ImportError:
        return False
    return True


def with_anndata(formats):
    """h5ad runs where anndata is installed (the [anndata] extra pins pandas < 3, so CI's test extra leaves it out)."""
    return [pytest.param(f, marks=pytest.mark.skipif(not has_anndata(), reason="anndata not installed"))
            if f == "h5ad" else f for f in formats]


def site_table(rows: int = 12, features: int = 5, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    metadata = pd.DataFrame({"id": [f"P1_A{r:02d}_s1" for r in range(rows)], "plate": ["P1"] * rows,
                             "well": [f"A{r:02d}" for r in range(rows)], "site": np.arange(rows) % 2 + 1,
                             "perturbation": [f"gene{r % 3}" for r in range(rows)],
                             "is_control": np.arange(rows) % 4 == 0})
    values = rng.standard_normal((rows, features)).astype(np.float32)
    return pd.concat([metadata, pd.DataFrame(values, columns=[f"feature_{i:04d}" for i in range(features)])], axis=1)


def perturbation_map(entities: int = 25, features: int = 4) -> pd.DataFrame:
    values = np.random.default_rng(1).standard_normal((entities, features)).astype(np.float32)
    return pd.DataFrame(values, columns=[f"feature_{i}" for i in range(features)],
                        index=pd.Index([f"gene{i}" for i in range(entities)], name="perturbation"))


@pytest.mark.parametrize("format", with_anndata(FORMATS))
def test_site_tables_round_trip(tmp_path, format):
    table = site_table()
    path = write_table(table, tmp_path / f"sites{SUFFIX[format]}", format)
    assert not list(tmp_path.glob(".*partial"))
    back = read_embeddings(path)
    pd.testing.assert_frame_equal(back, table, check_dtype=format in ("parquet", "pycytominer-parquet"))
    assert back.filter(like="feature_").to_numpy().dtype == np.float32 or format == "pycytominer-csv"


@pytest.mark.parametrize("format", with_anndata(FORMATS))
def test_maps_round_trip_with_their_perturbation_index(tmp_path, format):
    table = perturbation_map()
    path = write_table(table, tmp_path / f"map{SUFFIX[format]}", format)
    back = read_embeddings(path)
    if format.startswith("pycytominer"):
        back = back.set_index("perturbation")  # a pycytominer map keeps its perturbations in Metadata_perturbation
    pd.testing.assert_frame_equal(back, table, check_dtype=format != "pycytominer-csv")


def test_pycytominer_columns_and_file_names(tmp_path):
    write_table(site_table(rows=3), tmp_path / "sites.csv", "pycytominer-csv")
    columns = list(pd.read_csv(tmp_path / "sites.csv").columns)
    assert columns[:6] == ["Metadata_id", "Metadata_plate", "Metadata_well", "Metadata_site", "Metadata_perturbation",
                           "Metadata_is_control"] and columns[6:] == [f"feature_{i:04d}" for i in range(5)]
    with pytest.raises(ValueError, match=r"a h5ad file's name ends with .h5ad"):
        write_table(site_table(), tmp_path / "sites.parquet", "h5ad")
    with pytest.raises(ValueError, match="format must be one of"):
        write_table(site_table(), tmp_path / "sites.parquet", "loom")


@pytest.mark.skipif(not has_anndata(), reason="anndata not installed")
def test_h5ad_is_what_anndata_users_expect(tmp_path):
    import anndata
    table = site_table()
    data = anndata.read_h5ad(write_table(table, tmp_path / "sites.h5ad", "h5ad"))
    assert data.X.dtype == np.float32 and data.shape == (12, 5)
    assert list(data.var_names) == [f"feature_{i:04d}" for i in range(5)]
    assert list(data.obs["perturbation"]) == list(table["perturbation"]) and data.obs["is_control"].dtype == bool
    np.testing.assert_array_equal(data.X, table.filter(like="feature_").to_numpy())
    assert list(data.obs_names) == list(table["id"])  # the site ids, not row numbers


def test_rows_are_named_by_site_id_well_key_or_map_index():
    """What names a table's rows in AnnData (obs_names): a site table's ids, a well table's batch/plate/well, a
    map's perturbations; nothing when no column names each row once."""
    sites = site_table()
    assert list(row_names(sites)) == list(sites["id"])
    wells = sites.drop(columns=["id", "site"]).assign(batch="exp1")
    assert list(row_names(wells)) == [f"exp1/P1/A{r:02d}" for r in range(12)]
    assert list(row_names(perturbation_map())) == [f"gene{i}" for i in range(25)]
    assert row_names(sites.assign(id="same").drop(columns=["well"])) is None


def test_a_column_is_found_with_or_without_the_metadata_prefix():
    cytominer = pd.DataFrame(columns=["Metadata_gene", "plate", "feature_0000"])
    assert metadata_column(cytominer, "gene") == "Metadata_gene"
    assert metadata_column(cytominer, "Metadata_plate") == "plate"
    assert metadata_column(cytominer, "plate") == "plate"
    with pytest.raises(ValueError, match=r"unknown column 'well'; the columns are \['Metadata_gene', 'plate', "):
        metadata_column(cytominer, "well")


def test_h5ad_without_anndata_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "anndata", None)
    with pytest.raises(ImportError, match=r"pip install \"maefast\[anndata\]\""):
        write_table(site_table(), tmp_path / "sites.h5ad", "h5ad")
    assert not list(tmp_path.iterdir())  # nothing half-written
    assert main(["export", "--embeddings", str(write_table(site_table(), tmp_path / "s.parquet")), "--out",
                 str(tmp_path / "s.h5ad"), "--format", "h5ad"]) == 2


@pytest.mark.parametrize("format", with_anndata(["h5ad", "pycytominer-csv", "pycytominer-parquet"]))
def test_embed_format_export_and_map_on_each_format(screen, tmp_path, format, capsys):
    encoder = maefast.create_model("vit_debug_patch8_64", in_chans=3)
    maefast.save_pretrained(encoder, tmp_path / "ckpt", channel_names=["Mito", "DNA", "RNA"])
    job = tmp_path / "emb"
    assert main(["embed", "--checkpoint", str(tmp_path / "ckpt"), "--data", str(screen), "--out", str(job),
                 "--no-progress", "--format", format]) == 0
    ending = {"h5ad": ".h5ad", "pycytominer-csv": ".pycytominer.csv.gz", "pycytominer-parquet": ".pycytominer.parquet"}
    sites = maefast.read_embeddings(job)
    for level, expected in (("site", sites), ("well", maefast.read_embeddings(job, level="well"))):
        exported = read_embeddings(job / f"{level}s{ending[format]}")
        if format == "pycytominer-csv":  # CSV keeps text, not types: plate "1" reads back as the number 1
            metadata = [c for c in expected.columns if not c.startswith("feature_")]
            exported[metadata], expected = exported[metadata].astype(str), expected.astype({c: str for c in metadata})
        pd.testing.assert_frame_equal(exported, expected, check_dtype=False, check_exact=False, rtol=1e-6)
    converted = tmp_path / f"sites{SUFFIX[format]}"
    assert main(["export", "--embeddings", str(job), "--out", str(converted), "--format", format]) == 0
    out = tmp_path / f"map{SUFFIX[format]}"
    assert main(["map", "--embeddings", str(converted), "--out", str(out), "--format", format,
                 "--perturbation-col", "perturbation", "--control", "EMPTY", "--batch-col", "plate",
                 "--pca-components", "0", "--no-tvn"]) == 0
    expected_map = tmp_path / "map_reference.parquet"
    assert main(["map", "--embeddings", str(job / "shards"), "--out", str(expected_map),
                 "--perturbation-col", "perturbation", "--control", "EMPTY", "--batch-col", "plate",
                 "--pca-components", "0", "--no-tvn"]) == 0
    from maefast.cli.evaluate import read_map
    np.testing.assert_allclose(read_map(out, None).sort_index().to_numpy(),
                               read_map(expected_map, None).sort_index().to_numpy(), rtol=1e-4, atol=1e-5)


def test_every_writer_names_features_one_way_and_readers_take_the_earlier_names(tmp_path):
    assert feature_names(3) == ["feature_0000", "feature_0001", "feature_0002"]
    wide = feature_names(11 * 1024)  # a CA-MAE ViT-L embedding per channel: more than 10,000 features
    assert wide[0] == "feature_00000" and wide[-1] == "feature_11263" and wide == sorted(wide)
    rng = np.random.default_rng(0)
    labels = ["CONTROL"] * 12 + [f"gene{i}" for i in range(8) for _ in range(3)]
    earlier = pd.DataFrame(rng.normal(size=(len(labels), 5)), columns=[f"feature_{i}" for i in range(5)])
    earlier["perturbation"] = labels  # a table as maps were written before: feature_0, feature_1, ...
    write_table(earlier, tmp_path / "earlier.parquet")
    table = read_embeddings(tmp_path / "earlier.parquet")
    assert feature_columns(table) == [f"feature_{i}" for i in range(5)]
    perturbation_map = build_map(table, perturbation_col="perturbation", control_label="CONTROL",
                                 pca_components=3, tvn=False)
    assert list(perturbation_map.columns) == feature_names(3) and len(perturbation_map) == 8


def test_a_map_of_some_feature_columns_holds_only_their_normalized_features():
    """The features feature_cols leaves out (here a constant one) stay out of the map: they would otherwise be
    carried as metadata and share names with the normalized features."""
    rng = np.random.default_rng(1)
    labels = ["CONTROL"] * 12 + [f"gene{i}" for i in range(8) for _ in range(3)]
    table = pd.DataFrame(rng.normal(size=(len(labels), 5)), columns=feature_names(5)).assign(perturbation=labels)
    table["feature_0004"] = 7.0
    perturbation_map = build_map(table, perturbation_col="perturbation", control_label="CONTROL",
                                 feature_cols=feature_names(4), pca_components=3, tvn=False)
    assert list(perturbation_map.columns) == feature_names(3)
