"""Replicate consistency against brute-force pairwise cosines and a control null."""
import itertools

import numpy as np
import pandas as pd
import pytest

from maefast.evaluate import replicate_consistency


def screen(rng, consistent=8, random=40, controls=200, dim=12):
    """Consistent perturbations (replicates around one direction), random ones, controls; 1-5 replicates."""
    rows, labels = [], []
    for k in range(consistent + random):
        direction = rng.normal(size=dim)
        for _ in range(int(rng.integers(1, 6))):
            rows.append(direction + 0.2 * rng.normal(size=dim) if k < consistent else rng.normal(size=dim))
            labels.append(f"{'C' if k < consistent else 'R'}{k:02d}")
    rows += list(rng.normal(size=(controls, dim)))
    labels += ["NTC"] * controls
    table = pd.DataFrame(np.array(rows), columns=[f"feature_{i}" for i in range(dim)])
    return table.assign(gene=labels).sample(frac=1, random_state=int(rng.integers(1 << 30)))


def test_mean_cosine_equals_brute_force():
    rng = np.random.default_rng()
    table = screen(rng)
    result = replicate_consistency(table, perturbation_col="gene", control_label="NTC", n_null=50).set_index("gene")
    features = [c for c in table.columns if c.startswith("feature_")]
    assert "NTC" not in result.index
    for gene, group in table[table["gene"] != "NTC"].groupby("gene"):
        x = group[features].to_numpy()
        assert result.loc[gene, "n_replicates"] == len(x)
        pairs = [a @ b / np.linalg.norm(a) / np.linalg.norm(b) for a, b in itertools.combinations(x, 2)]
        if pairs:
            assert result.loc[gene, "mean_cosine"] == pytest.approx(np.mean(pairs), abs=1e-12)
        else:
            assert np.isnan(result.loc[gene, "mean_cosine"]) and np.isnan(result.loc[gene, "p_value"])


def test_p_values_separate_consistent_from_random():
    rng = np.random.default_rng()
    n_null = 400
    result = replicate_consistency(screen(rng), perturbation_col="gene", control_label="NTC", n_null=n_null,
                                   seed=int(rng.integers(1000)))
    scored = result.dropna()
    assert np.allclose(scored["p_value"] * n_null, np.round(scored["p_value"] * n_null))  # fractions of the null
    consistent = scored[scored["gene"].str.startswith("C")]
    assert (consistent["p_value"] <= 2 / n_null).all()
    random = scored[scored["gene"].str.startswith("R")]
    assert 0.2 < random["p_value"].mean() < 0.8


def test_seed_makes_the_null_reproducible():
    table = screen(np.random.default_rng())
    first, second = (replicate_consistency(table, perturbation_col="gene", control_label="NTC", n_null=30, seed=7)
                     for _ in range(2))
    pd.testing.assert_frame_equal(first, second)


def test_errors_name_the_problem():
    table = screen(np.random.default_rng(), controls=3)
    with pytest.raises(ValueError, match="unknown perturbation column 'sgRNA'"):
        replicate_consistency(table, perturbation_col="sgRNA", control_label="NTC")
    with pytest.raises(ValueError, match="no control rows"):
        replicate_consistency(table, perturbation_col="gene", control_label="EMPTY")
    with pytest.raises(ValueError, match="only 3 control rows"):
        replicate_consistency(table, perturbation_col="gene", control_label="NTC")
