"""The drug-target benchmark: its metrics against scikit-learn, and compounds that mimic their targets."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from maefast.errors import UserInputError
from maefast.evaluate import normalize_embeddings
from maefast.evaluate.drug_target import (
    compound_gene_maps,
    drug_target_benchmark,
    load_compound_targets,
    ranking_metrics,
)


def test_ranking_metrics_match_sklearn_with_ties_and_weights():
    rng = np.random.default_rng()
    scores = np.round(rng.normal(size=400), 1)  # many ties
    known = rng.random(400) < 0.1 + 0.2 * (scores > 0.5)
    metrics = ranking_metrics(scores, known, np.ones((1, 400)))
    assert metrics["auroc"][0] == pytest.approx(roc_auc_score(known, scores), abs=1e-12)
    assert metrics["average_precision"][0] == pytest.approx(average_precision_score(known, scores), abs=1e-12)
    # integer weights are repeated pairs
    weights = rng.integers(0, 3, 400)
    repeated = ranking_metrics(np.repeat(scores, weights), np.repeat(known, weights), np.ones((1, weights.sum())))
    weighted = ranking_metrics(scores, known, weights[None].astype(float))
    for name in repeated:
        assert weighted[name][0] == pytest.approx(repeated[name][0], abs=1e-12)


def screen(rng, genes=40, compounds=10, concentrations=(0.1, 1.0, 10.0), replicates=3, dim=16, strength=None):
    """Replicate rows of gene knockouts, controls and compounds whose profile is a dose-scaled copy of the
    knockout of their target."""
    gene_vectors = {f"G{i}": rng.normal(size=dim) * 2 for i in range(genes)}
    targets = {f"C{i}": f"G{rng.integers(genes)}" for i in range(compounds)}
    strength = strength or {c: c / (c + 1.0) for c in concentrations}
    rows = []
    for batch in range(2):
        offset = rng.normal(size=dim)
        rows += [("CTRL", np.nan, batch, offset + rng.normal(size=dim)) for _ in range(40)]
        for gene, vector in gene_vectors.items():
            rows += [(gene, np.nan, batch, offset + vector + rng.normal(size=dim)) for _ in range(replicates)]
        for compound, target in targets.items():
            for concentration in concentrations:
                vector = strength[concentration] * gene_vectors[target]
                rows += [(compound, concentration, batch, offset + vector + rng.normal(size=dim))
                         for _ in range(replicates)]
    table = pd.DataFrame([r[:3] for r in rows], columns=["treatment", "concentration", "plate"])
    features = pd.DataFrame(np.array([r[3] for r in rows])).add_prefix("feature_")
    pairs = pd.DataFrame({"compound": list(targets), "gene": list(targets.values())})
    return pd.concat([table, features], axis=1), pairs


def test_compounds_that_mimic_their_targets_rank_them_first_at_high_dose():
    rng = np.random.default_rng()
    table, pairs = screen(rng)
    normalized = normalize_embeddings(table, perturbation_col="treatment", control_label="CTRL", batch_col="plate",
                                      pca_components=8, tvn=True)
    gene_map, compound_map = compound_gene_maps(normalized, perturbation_col="treatment",
                                                concentration_col="concentration", control_label="CTRL")
    assert len(gene_map) == 40 and compound_map.index.names == ["compound", "concentration"]
    decoy = pd.DataFrame({"compound": ["C0", "UNKNOWN"], "gene": ["G99", "G1"]})  # not in the map: ignored
    result = drug_target_benchmark(gene_map, compound_map, pd.concat([pairs, decoy]), n_bootstrap=200, repeats=3)
    rows = result.set_index("concentration")
    assert list(result["concentration"]) == [0.1, 1.0, 10.0, "best"]
    assert (rows["n_active_pairs"] == 10).all() and (rows["n_candidate_pairs"] == 10 * 21).all()
    assert rows.loc[10.0, "auroc"] > 0.95 and rows.loc[0.1, "auroc"] < rows.loc[10.0, "auroc"]
    assert rows.loc["best", "auroc_low"] > 0.8 and rows.loc[10.0, "macro_auroc"] > 0.95
    assert rows.loc[10.0, "prevalence"] == pytest.approx(1 / 21)
    for name in ("auroc", "average_precision", "macro_auroc", "median_average_precision"):
        assert (rows[f"{name}_low"] <= rows[name] + 1e-12).all() and (rows[name] <= rows[f"{name}_high"] + 1e-12).all()
    noise = table.assign(**{c: rng.normal(size=len(table)) for c in table.filter(like="feature_").columns})
    chance = drug_target_benchmark(*compound_gene_maps(noise, perturbation_col="treatment",
                                                       concentration_col="concentration", control_label="CTRL"),
                                   pairs, n_bootstrap=200, repeats=3)
    noise_auroc = chance.set_index("concentration").loc[10.0, "auroc"]  # 10 compounds: a spread of about 0.1
    assert abs(noise_auroc - 0.5) < 0.3 and noise_auroc < rows.loc[10.0, "auroc_low"]


def test_signed_direction_and_errors(tmp_path):
    rng = np.random.default_rng()
    opposite = {0.1: -0.2, 1.0: -0.6, 10.0: -0.9}  # compounds oppose their target's knockout
    table, pairs = screen(rng, strength=opposite)
    maps = compound_gene_maps(table, perturbation_col="treatment", concentration_col="concentration",
                              control_label="CTRL")
    both = drug_target_benchmark(*maps, pairs, n_bootstrap=50, repeats=2).set_index("concentration")
    positive = drug_target_benchmark(*maps, pairs, direction="positive", n_bootstrap=50,
                                     repeats=2).set_index("concentration")
    assert both.loc[10.0, "auroc"] > 0.9 and positive.loc[10.0, "auroc"] < 0.1
    path = tmp_path / "targets.csv"
    path.write_text("compound,gene,source\nC1,G2,chembl\nC1,G2,chembl\n")
    assert load_compound_targets(path).to_dict("list") == {"compound": ["C1"], "gene": ["G2"]}
    (tmp_path / "efaar.csv").write_text("treatment,gene_symbol,nM_value\nC1,G2,50\nC1,G3,5000\n")
    assert load_compound_targets(tmp_path / "efaar.csv").to_dict("list") == {
        "compound": ["C1", "C1"], "gene": ["G2", "G3"], "activity_nM": [50, 5000]}
    (tmp_path / "bad.csv").write_text("drug,target\nC1,G2\n")
    with pytest.raises(UserInputError, match="compound,gene"):
        load_compound_targets(tmp_path / "bad.csv")
    with pytest.raises(UserInputError, match="no compound has an active gene"):
        drug_target_benchmark(*maps, pd.DataFrame({"compound": ["X"], "gene": ["Y"]}))
    with pytest.raises(UserInputError, match="compound rows"):
        compound_gene_maps(table[table["concentration"].isna()], perturbation_col="treatment",
                           concentration_col="concentration", control_label="CTRL")


def test_activity_thresholds_and_grey_zone():
    """A pair above the activity threshold is no positive; in the grey zone it is no negative either."""
    from maefast.evaluate.drug_target import candidates
    genes = pd.Index([f"G{i}" for i in range(30)])
    pairs = pd.DataFrame({"compound": ["C", "C", "C"], "gene": ["G0", "G1", "G2"], "activity_nM": [10, 5000, 50000]})
    for seed in range(5):
        chosen, active = candidates(pairs, genes, ["C"], np.random.default_rng(seed), 1000, 10000, 2, 20)["C"]
        assert list(chosen[active]) == [0] and 1 not in chosen and len(chosen) == 21
