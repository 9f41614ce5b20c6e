"""`maefast map` and `maefast benchmark` end to end, and the plots."""
import json
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from maefast.cli import main
from maefast.errors import UserInputError
from maefast.evaluate import (
    build_map,
    plot_map_pca,
    plot_recall_bars,
    plot_recall_sweep,
    plot_recall_vs_flops,
    plot_similarity_distributions,
    relationship_recall,
    score_map,
)
from maefast.evaluate.plots import _source_label
from maefast.tables import write_table
from tests.evaluate.evaluate_helpers import synthetic_screen

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    assert path.exists() and path.stat().st_size > 2000, path
    assert path.read_bytes()[:8] == PNG_MAGIC


@pytest.fixture()
def screen_dir(tmp_path):
    """A synthetic screen as two parquet shards plus a partial file that must be ignored."""
    table, relationships = synthetic_screen(np.random.default_rng(), n_groups=12, genes_per_group=3)
    shards = tmp_path / "embeddings"
    shards.mkdir()
    half = len(table) // 2
    table.iloc[:half].to_parquet(shards / "shard-00000.parquet")
    table.iloc[half:].to_parquet(shards / "shard-00001.parquet")
    (shards / ".shard-00002.parquet.x.partial").write_bytes(b"incomplete")
    relationships.to_csv(tmp_path / "groups.csv", index=False)
    return tmp_path, table


def test_map_and_benchmark_commands(screen_dir, capsys):
    tmp_path, table = screen_dir
    for name, pca in (("ckpt_a", "8"), ("ckpt_b", "0")):
        assert main(["map", "--embeddings", str(tmp_path / "embeddings"), "--out", str(tmp_path / f"{name}.parquet"),
                     "--perturbation-col", "perturbation", "--control", "CONTROL", "--batch-col", "plate",
                     "--pca-components", pca, "--consistency", str(tmp_path / f"{name}_consistency.csv")]) == 0
    written = pd.read_parquet(tmp_path / "ckpt_a.parquet")
    expected = build_map(table, perturbation_col="perturbation", control_label="CONTROL", batch_col="plate",
                         pca_components=8)
    pd.testing.assert_frame_equal(written, expected)
    consistency = pd.read_csv(tmp_path / "ckpt_a_consistency.csv")
    assert set(consistency["perturbation"]) == set(expected.index)

    pd.DataFrame({"checkpoint": ["ckpt_a", "ckpt_b"], "flops": [1e18, 3e18]}).to_csv(tmp_path / "flops.csv",
                                                                                      index=False)
    out = tmp_path / "bench"
    assert main(["benchmark", "--map", str(tmp_path / "ckpt_a.parquet"), "--map", str(tmp_path / "ckpt_b.parquet"),
                 "--out", str(out), "--source", str(tmp_path / "groups.csv"), "--source", "CORUM",
                 "--flops", str(tmp_path / "flops.csv")]) == 0
    recall = pd.read_csv(out / "recall.csv")
    assert list(recall.columns) == ["map", "source", "n_pairs", "n_all_pairs", "recall_0.05_0.95",
                                    "recall_0.05_0.95_low", "recall_0.05_0.95_high", "chance_0.05_0.95",
                                    "recall_0.1_0.9", "recall_0.1_0.9_low", "recall_0.1_0.9_high", "chance_0.1_0.9",
                                    "flops"]
    direct = relationship_recall(expected, sources=[tmp_path / "groups.csv", "CORUM"])
    mine = recall[recall["map"] == "ckpt_a"].reset_index(drop=True)
    np.testing.assert_array_equal(mine["recall_0.05_0.95"], direct["recall_0.05_0.95"])
    assert recall["chance_0.05_0.95"].tolist() == pytest.approx([0.1] * 4)
    assert recall["chance_0.1_0.9"].tolist() == pytest.approx([0.2] * 4)
    for _, row in recall[recall["n_pairs"] > 0].iterrows():  # Binomial(n, recall) / n quantiles over the pairs
        n, value = row["n_pairs"], row["recall_0.05_0.95"]
        low, high = stats.binom.ppf([0.025, 0.975], n, value) / n
        assert (row["recall_0.05_0.95_low"], row["recall_0.05_0.95_high"]) == pytest.approx((low, high))
        assert low <= value <= high
    assert mine.loc[0, "recall_0.05_0.95"] > 0.8  # the synthetic groups are recovered
    assert json.loads((out / "recall.json").read_text())[0]["map"] == "ckpt_a"
    sweep = pd.read_csv(out / "recall_sweep.csv")
    assert "recall_0.01_0.99" in sweep.columns and "recall_0.2_0.8" in sweep.columns
    for name in ("recall_bars", "recall_sweep", "recall_vs_flops", "similarity_ckpt_a", "similarity_ckpt_b"):
        assert_png(out / f"{name}.png")
    printed = capsys.readouterr().out
    assert "recall (0.05, 0.95) [95% interval]" in printed and "chance (0.05, 0.95)" in printed
    first = mine.iloc[0]
    assert (f"{first['recall_0.05_0.95']:.3f} [{first['recall_0.05_0.95_low']:.2f}, "
            f"{first['recall_0.05_0.95_high']:.2f}]") in printed


@pytest.mark.parametrize("argv, message", [
    (["--perturbation-col", "gene", "--control", "CONTROL"], "unknown perturbation column 'gene'"),
    (["--perturbation-col", "perturbation", "--control", "EMPTY"], "no control rows"),
    (["--perturbation-col", "perturbation", "--control", "CONTROL", "--feature-prefix", "emb_"], "--feature-prefix"),
])
def test_map_command_errors(screen_dir, capsys, argv, message):
    tmp_path, _ = screen_dir
    assert main(["map", "--embeddings", str(tmp_path / "embeddings"), "--out", str(tmp_path / "m.parquet"),
                 *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "m.parquet").exists()


def test_benchmark_command_errors(tmp_path, capsys):
    rng = np.random.default_rng()
    small = pd.DataFrame(rng.normal(size=(10, 4)), index=[f"E{i}" for i in range(10)])
    small.to_parquet(tmp_path / "small.parquet")
    assert main(["benchmark", "--map", str(tmp_path / "small.parquet"), "--out", str(tmp_path / "o")]) == 2
    assert "the map has 10 entities; the benchmark needs at least 20" in capsys.readouterr().err
    assert main(["benchmark", "--map", str(tmp_path / "small.parquet"), "--out", str(tmp_path / "o"),
                 "--min-entities", "5", "--source", "CORUMX"]) == 2
    assert "unknown relationship source 'CORUMX'" in capsys.readouterr().err
    assert main(["benchmark", "--map", str(tmp_path / "small.parquet"), "--out", str(tmp_path / "o"),
                 "--min-entities", "5", "--threshold", "0.05-0.95"]) == 2
    assert "expected two fractions" in capsys.readouterr().err
    small.reset_index(drop=True).to_parquet(tmp_path / "noindex.parquet")
    assert main(["benchmark", "--map", str(tmp_path / "noindex.parquet"), "--out", str(tmp_path / "o")]) == 2
    assert "--perturbation-col" in capsys.readouterr().err


def test_plots_are_written(tmp_path):
    rng = np.random.default_rng()
    sources = ["CORUM", "HuMAP", "Reactome"]
    tables = {label: pd.DataFrame({"source": sources, "recall_0.05_0.95": rng.uniform(0, 1, 3),
                                   "recall_0.1_0.9": rng.uniform(0, 1, 3)}) for label in ("a", "b", "c")}
    plot_recall_bars(tables, tmp_path / "bars.png")
    plot_recall_sweep(tables, tmp_path / "sweep.png")
    scaling = pd.DataFrame([{"checkpoint": f"step{k}", "flops": 10.0 ** (17 + k), "source": s,
                             "recall_0.05_0.95": rng.uniform()} for k in range(4) for s in sources])
    plot_recall_vs_flops(scaling, tmp_path / "flops.png")
    features = pd.DataFrame(rng.normal(size=(400, 8)), index=[f"E{i}" for i in range(400)])
    pd.DataFrame({"entity1": [f"E{i}" for i in range(100)], "entity2": [f"E{i + 1}" for i in range(100)]}).to_csv(
        tmp_path / "pairs.csv", index=False)
    plot_similarity_distributions(score_map(features, [tmp_path / "pairs.csv"]), tmp_path / "similarity.png")
    for name in ("bars", "sweep", "flops", "similarity"):
        assert_png(tmp_path / f"{name}.png")
    with pytest.raises(ValueError, match="lacks column"):
        plot_recall_vs_flops(scaling.drop(columns="flops"), tmp_path / "never.png")
    assert not (tmp_path / "never.png").exists()


def test_bars_with_intervals_and_pair_counts(tmp_path):
    rng = np.random.default_rng()
    sources = ["CORUM", "HuMAP"]
    tables = {label: pd.DataFrame({"source": sources, "n_pairs": [133, n],
                                   "recall_0.05_0.95": rng.uniform(0.2, 0.8, 2)})
              for label, n in (("a", 7), ("b", 9))}
    intervals = {label: table.assign(recall_low=table["recall_0.05_0.95"] - 0.1,
                                     recall_high=table["recall_0.05_0.95"] + 0.1) for label, table in tables.items()}
    assert _source_label(tables, "CORUM") == "CORUM\nn = 133"
    assert _source_label(tables, "HuMAP") == "HuMAP\nn = 7-9"
    plot_recall_bars(tables, tmp_path / "bars.png", intervals=intervals)
    assert_png(tmp_path / "bars.png")


def test_map_pca_view(tmp_path):
    rng = np.random.default_rng()
    centres = rng.normal(size=(5, 12))
    names = [f"G{g}_{k}" for g in range(5) for k in range(6)]
    features = pd.DataFrame(np.repeat(centres, 6, axis=0) + 0.1 * rng.normal(size=(30, 12)), index=names)
    groups = pd.Series({name: name.split("_")[0] for name in names[:-3]})  # three entities without a group
    plot_map_pca({"structured": features, "noise": features.sample(frac=1, axis=1)}, groups, tmp_path / "pca.png")
    assert_png(tmp_path / "pca.png")
    plot_map_pca({"a": features, "b": features}, {"a": groups, "b": groups.iloc[:5]}, tmp_path / "each.png")
    assert_png(tmp_path / "each.png")
    with pytest.raises(UserInputError, match="PCA view"):
        plot_map_pca({"one feature": features.iloc[:, :1]}, groups, tmp_path / "never.png")
    assert not (tmp_path / "never.png").exists()


def test_batches_from_several_columns_and_metadata_prefixes_either_way(screen_dir, tmp_path, capsys):
    """--batch-col experiment,plate (or repeated) makes each (experiment, plate) a batch; a pycytominer file's
    Metadata_ columns are found under either name, by the map and by the benchmark."""
    _, table = screen_dir
    table = table.assign(experiment=np.where(np.arange(len(table)) % 2, "exp1", "exp2"))
    cytominer = tmp_path / "sites.csv.gz"
    write_table(table, cytominer, "pycytominer-csv")
    assert "Metadata_experiment" in pd.read_csv(cytominer, nrows=1).columns
    for name, columns in (("a", ["--batch-col", "Metadata_experiment,plate"]),
                          ("b", ["--batch-col", "experiment", "--batch-col", "Metadata_plate"])):
        assert main(["map", "--embeddings", str(cytominer), "--out", str(tmp_path / f"{name}.parquet"),
                     "--perturbation-col", "Metadata_perturbation", "--control", "CONTROL", *columns,
                     "--pca-components", "8"]) == 0
    expected = build_map(table, perturbation_col="perturbation", control_label="CONTROL",
                         batch_col=["experiment", "plate"], pca_components=8)
    for name in ("a", "b"):
        pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / f"{name}.parquet"), expected, rtol=1e-6)
    with pytest.warns(UserWarning, match="batches by 'plate' alone merge them"):
        merged = build_map(table, perturbation_col="perturbation", control_label="CONTROL", batch_col="plate",
                           pca_components=8)
    assert not np.allclose(merged.to_numpy(), expected.to_numpy())  # the batches differ
    write_table(expected, tmp_path / "map.csv", "pycytominer-csv")
    assert main(["benchmark", "--map", str(tmp_path / "map.csv"), "--out", str(tmp_path / "bench"),
                 "--perturbation-col", "Metadata_perturbation", "--source", "CORUM"]) == 0


def test_pca_components_are_clipped_to_what_the_data_allows(screen_dir):
    _, table = screen_dir
    controls = int((table["perturbation"] == "CONTROL").sum())
    features = len([c for c in table if c.startswith("feature_")])
    with pytest.warns(UserWarning, match=rf"pca_components=500 is more than this data allows \({len(table)} rows, "
                                         rf"{features} features, {controls - 1} control rows, less one \(TVN\)\); "
                                         rf"using {min(features, controls - 1)}"):
        clipped = build_map(table, perturbation_col="perturbation", control_label="CONTROL", pca_components=500)
    exact = build_map(table, perturbation_col="perturbation", control_label="CONTROL",
                      pca_components=min(features, controls - 1))
    pd.testing.assert_frame_equal(clipped, exact)


def test_plates_that_repeat_across_experiments_are_named(screen_dir):
    _, table = screen_dir
    table = table.assign(batch=np.where(np.arange(len(table)) % 2, "exp1", "exp2"))
    with pytest.warns(UserWarning, match=r"batch column 'plate': plate .* occurs in 2 values of 'batch'"):
        build_map(table, perturbation_col="perturbation", control_label="CONTROL", batch_col="plate", tvn=False,
                  pca_components=None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        build_map(table, perturbation_col="perturbation", control_label="CONTROL", batch_col=["batch", "plate"],
                  tvn=False, pca_components=None)
