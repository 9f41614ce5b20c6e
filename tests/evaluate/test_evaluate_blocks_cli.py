"""`maefast probe`, `maefast benchmark --embeddings` (per block, --pick-block, --clusters), `maefast map
--magnitude` and `maefast drug-target` end to end on block-wise embedding tables."""
import json

import numpy as np
import pandas as pd
import pytest

from maefast.cli import main
from maefast.evaluate import linear_probe
from maefast.evaluate.blocks import split_batches
from tests.evaluate.evaluate_helpers import synthetic_screen

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def block_table(rng, experiments=4):
    """Block-wise well embeddings over `experiments` batches: block 2 carries the screen's signal, block 0
    only noise; each row of a well appears once per block (as `maefast embed --blocks` writes them)."""
    table, relationships = synthetic_screen(rng, n_groups=8, genes_per_group=4, replicates=2, batches=experiments,
                                            controls_per_batch=30, dim=12)
    table = table.assign(experiment=table["plate"].str.replace("P", "E"))
    noise = table.assign(**{c: rng.normal(size=len(table)) for c in table.filter(like="feature_").columns})
    return pd.concat([noise.assign(block=0), table.assign(block=2)], ignore_index=True), relationships


def test_probe_command_per_block(tmp_path, capsys):
    rng = np.random.default_rng()
    table, _ = block_table(rng)
    table.to_parquet(tmp_path / "wells.parquet")
    out = tmp_path / "probe"
    assert main(["probe", "--embeddings", str(tmp_path / "wells.parquet"), "--label", "vit",
                 "--perturbation-col", "perturbation", "--control", "CONTROL", "--holdout-col", "experiment",
                 "--bootstrap", "100", "--out", str(out)]) == 0
    result = pd.read_csv(out / "probe.csv")
    assert list(result["block"]) == [0, 2] and list(result["label"]) == ["vit", "vit"]
    direct = linear_probe(table[table["block"] == 2].drop(columns="block"), perturbation_col="perturbation",
                          holdout_col="experiment", control_label="CONTROL", n_bootstrap=100)
    assert result.loc[1, "balanced_accuracy"] == pytest.approx(direct["balanced_accuracy"])
    # block 2 carries the signal (0.27 to 0.40 over 15 draws), block 0 none (chance 1/32)
    assert result.loc[1, "balanced_accuracy"] > result.loc[0, "balanced_accuracy"] + 0.15
    assert result.loc[1, "balanced_accuracy_low"] > result.loc[1, "chance"] + 0.1
    assert (out / "probe_by_block.png").read_bytes()[:8] == PNG_MAGIC
    assert json.loads((out / "probe.json").read_text())[1]["block"] == 2


def test_benchmark_picks_the_block_on_selection_batches(tmp_path):
    rng = np.random.default_rng()
    table, relationships = block_table(rng)
    table.to_parquet(tmp_path / "emb.parquet")
    relationships.to_csv(tmp_path / "groups.csv", index=False)
    out = tmp_path / "bench"
    common = ["--perturbation-col", "perturbation", "--control", "CONTROL", "--batch-col", "plate",
              "--pca-components", "8", "--source", str(tmp_path / "groups.csv"), "--min-entities", "10"]
    for criterion in ("probe", "recall"):
        assert main(["benchmark", "--embeddings", str(tmp_path / "emb.parquet"), "--label", "vit", *common,
                     "--pick-block", criterion, "--split-col", "experiment", "--out", str(out / criterion)]) == 0
        choice = json.loads((out / criterion / "block_selection.json").read_text())["vit"]
        assert choice["block"] == 2 and choice["criterion"] == criterion
        selection, evaluation = split_batches(table["experiment"], 0.5, 0)
        assert choice["selection_batches"] == selection and choice["evaluation_batches"] == evaluation
        recall = pd.read_csv(out / criterion / "recall.csv")
        assert set(recall["map"]) == {"vit block 0", "vit block 2"}
        assert recall.loc[recall["chosen"], "block"].tolist() == [2]
        # reported on the evaluation batches only: the map of block 2 built from them alone
        assert (out / criterion / "recall_by_block.png").read_bytes()[:8] == PNG_MAGIC
    by_block = pd.read_csv(out / "recall" / "recall_by_block.csv").set_index("block")
    assert by_block.loc[2, "mean_recall"] > by_block.loc[0, "mean_recall"]


def test_clusters_magnitude_and_drug_target_commands(tmp_path):
    rng = np.random.default_rng()
    genes = ["RBBP4", "RBBP7", "HDAC1", "HDAC2", "CHD4", "MTA1", "MTA2", "GATAD2A", "GATAD2B", "MBD3"]  # NuRD
    others = [f"OTHER{i}" for i in range(30)]
    direction = rng.normal(size=10) * 3
    shifts = {gene: direction if gene in genes else rng.normal(size=10) * 3 for gene in genes + others}
    rows = []
    for batch in range(2):
        rows += [dict(perturbation="CTRL", plate=batch, **vector(rng.normal(size=10))) for _ in range(30)]
        for gene in genes + others:
            rows += [dict(perturbation=gene, plate=batch, **vector(shifts[gene] + rng.normal(size=10)))
                     for _ in range(3)]
        for concentration in (0.1, 1.0):  # DRUG mimics the knockout of OTHER5
            rows += [dict(perturbation="DRUG", plate=batch, concentration=concentration,
                          **vector(concentration * shifts["OTHER5"] + rng.normal(size=10))) for _ in range(3)]
    table = pd.DataFrame(rows)
    table.to_parquet(tmp_path / "emb.parquet")
    common = ["--embeddings", str(tmp_path / "emb.parquet"), "--perturbation-col", "perturbation", "--control",
              "CTRL", "--batch-col", "plate", "--pca-components", "0", "--no-tvn"]
    (tmp_path / "nurd.tsv").write_text("NuRD\t" + " ".join(genes) + "\nrandom\t" + " ".join(others[:12]) + "\n")
    genes_only = table[table["concentration"].isna()].drop(columns="concentration")
    genes_only.to_parquet(tmp_path / "genes.parquet")
    assert main(["benchmark", "--embeddings", str(tmp_path / "genes.parquet"), *common[2:], "--label", "m",
                 "--clusters", str(tmp_path / "nurd.tsv"), "--min-entities", "10", "--out", str(tmp_path / "b")]) == 0
    clusters = pd.read_csv(tmp_path / "b" / "clusters_m_nurd.csv").set_index("cluster")
    assert clusters.loc["NuRD", "ks_pval"] < 1e-6 and clusters.loc["random", "ks_pval"] > 1e-4
    # NuRD counts; the random set counts only when its own test says so (p < 0.05 and more alike: by chance, a
    # few percent of draws, as within-set pairs share genes)
    random_counts = clusters.loc["random", "ks_pval"] < 0.05 and (
        clusters.loc["random", "within_cossim_mean"] > clusters.loc["random", "between_cossim_mean"])
    summary = pd.read_csv(tmp_path / "b" / "clusters.csv").iloc[0]
    assert summary["n_clusters"] == 2 and summary["significant_fraction"] == (1 + random_counts) / 2
    assert main(["map", "--embeddings", str(tmp_path / "genes.parquet"), *common[2:], "--out",
                 str(tmp_path / "map.parquet"), "--magnitude", str(tmp_path / "magnitude.csv"),
                 "--n-null", "200"]) == 0
    magnitude = pd.read_csv(tmp_path / "magnitude.csv").set_index("perturbation")
    assert magnitude.loc["HDAC1", "p_value"] < 0.01 and magnitude.loc["HDAC1", "energy_distance"] > 0
    pd.DataFrame({"compound": ["DRUG"], "gene": ["OTHER5"]}).to_csv(tmp_path / "pairs.csv", index=False)
    assert main(["drug-target", *common, "--pairs", str(tmp_path / "pairs.csv"), "--label", "m", "--bootstrap", "50",
                 "--out", str(tmp_path / "dt")]) == 0
    result = pd.read_csv(tmp_path / "dt" / "drug_target.csv")
    assert list(result["concentration"]) == ["0.1", "1.0", "best"]
    assert result.set_index("concentration").loc["1.0", "auroc"] > 0.95
    assert (tmp_path / "dt" / "drug_target.png").read_bytes()[:8] == PNG_MAGIC


def vector(values):
    return {f"feature_{i}": v for i, v in enumerate(values)}


def test_baselines_need_their_inputs(tmp_path, capsys):
    table, _ = block_table(np.random.default_rng(), experiments=2)
    table.to_parquet(tmp_path / "emb.parquet")
    code = main(["probe", "--embeddings", str(tmp_path / "emb.parquet"), "--perturbation-col", "perturbation",
                 "--control", "CONTROL", "--holdout-col", "experiment", "--baseline", "random",
                 "--out", str(tmp_path / "p")])
    assert code == 2 and "--baseline random needs --data and --checkpoint" in capsys.readouterr().err
