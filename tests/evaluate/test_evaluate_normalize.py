"""Map building against direct scikit-learn / numpy / scipy formulas (the EFAAR definitions)."""
import numpy as np
import pandas as pd
import pytest
from scipy import linalg
from sklearn.decomposition import PCA
from sklearn.preprocessing import StandardScaler

from maefast.evaluate import (
    aggregate_map,
    build_map,
    centerscale_on_controls,
    fit_pca,
    normalize_embeddings,
    pca_transform,
    tvn_on_controls,
)
from tests.evaluate.evaluate_helpers import synthetic_screen


def align_signs(actual, expected):
    """Flips each column of `actual` to the sign of `expected` (PCA axes are defined up to sign)."""
    signs = np.sign(np.sum(actual * expected, axis=0))
    return actual * signs


def sklearn_centerscale(x, controls, batches):
    out = x.copy()
    for batch in np.unique(batches):
        rows = batches == batch
        out[rows] = StandardScaler().fit(x[rows & controls]).transform(x[rows])
    return out


def sklearn_tvn(x, controls, batches):
    """EFAAR tvn_on_controls written with scikit-learn and scipy, as the framework does."""
    x = StandardScaler().fit(x[controls]).transform(x)
    x = PCA().fit(x[controls]).transform(x)
    x = StandardScaler().fit(x[controls]).transform(x)
    for batch in np.unique(batches):
        rows = batches == batch
        covariance = np.cov(x[rows & controls], rowvar=False, ddof=1) + 0.5 * np.eye(x.shape[1])
        x[rows] = x[rows] @ linalg.fractional_matrix_power(covariance, -0.5)
    return x


def random_rows(rng, n=300, dim=10, batches=3):
    x = rng.normal(size=(n, dim)) * rng.uniform(0.5, 3, dim) + rng.normal(size=dim)
    x[:, 1] += 0.8 * x[:, 0]  # correlated features
    controls = rng.random(n) < 0.4
    return x, controls, rng.integers(0, batches, n)


def test_centerscale_matches_standard_scaler_per_batch():
    x, controls, batches = random_rows(np.random.default_rng())
    np.testing.assert_allclose(centerscale_on_controls(x, controls, batches),
                               sklearn_centerscale(x, controls, batches), rtol=1e-10, atol=1e-10)


def test_pca_matches_sklearn():
    rng = np.random.default_rng()
    x, _, _ = random_rows(rng, n=int(rng.integers(50, 200)), dim=int(rng.integers(6, 20)))
    k = int(rng.integers(1, x.shape[1] + 1))
    expected = PCA(k, svd_solver="full").fit_transform(x)
    actual = pca_transform(x, *fit_pca(x, k))
    np.testing.assert_allclose(align_signs(actual, expected), expected, rtol=1e-8, atol=1e-8)
    _, components = fit_pca(x, k)
    np.testing.assert_allclose(components @ components.T, np.eye(k), atol=1e-10)


def test_tvn_matches_efaar_formula():
    x, controls, batches = random_rows(np.random.default_rng())
    expected = sklearn_tvn(x, controls, batches)
    actual = tvn_on_controls(x, controls, batches)
    np.testing.assert_allclose(align_signs(actual, expected), expected, rtol=1e-7, atol=1e-7)


def test_normalize_embeddings_is_centerscale_pca_tvn():
    rng = np.random.default_rng()
    table, _ = synthetic_screen(rng)
    controls = (table["perturbation"] == "CONTROL").to_numpy()
    batches = pd.factorize(table["plate"])[0]
    features = [c for c in table.columns if c.startswith("feature_")]
    x = sklearn_centerscale(table[features].to_numpy(), controls, batches)
    x = sklearn_tvn(PCA(8, svd_solver="full").fit_transform(x), controls, batches)
    result = normalize_embeddings(table, perturbation_col="perturbation", control_label="CONTROL",
                                  batch_col="plate", pca_components=8)
    assert list(result.columns) == ["perturbation", "plate", "well"] + [f"feature_{i:04d}" for i in range(8)]
    pd.testing.assert_frame_equal(result[["perturbation", "plate", "well"]], table[["perturbation", "plate", "well"]])
    np.testing.assert_allclose(align_signs(result.iloc[:, 3:].to_numpy(), x), x, rtol=1e-7, atol=1e-7)


def test_tvn_makes_controls_of_every_batch_alike():
    table, _ = synthetic_screen(np.random.default_rng())
    result = normalize_embeddings(table, perturbation_col="perturbation", control_label="CONTROL",
                                  batch_col="plate", pca_components=None)
    controls = result[result["perturbation"] == "CONTROL"]
    means = controls.groupby("plate")[[c for c in result.columns if c.startswith("feature_")]].mean()
    np.testing.assert_allclose(means.to_numpy(), 0, atol=1e-8)  # centered per batch; TVN is linear on them


@pytest.mark.parametrize("method", ["mean", "median"])
def test_aggregation_matches_numpy(method):
    rng = np.random.default_rng()
    labels = rng.choice(["A", "B", "C", "CTRL"], 60)
    table = pd.DataFrame(rng.normal(size=(60, 4)), columns=[f"feature_{i}" for i in range(4)]).assign(p=labels)
    result = aggregate_map(table, perturbation_col="p", method=method, drop_labels=["CTRL"])
    assert list(result.index) == sorted(set(labels) - {"CTRL"})
    assert result.index.name == "p"
    for label in result.index:
        expected = getattr(np, method)(table.loc[labels == label, result.columns].to_numpy(), axis=0)
        np.testing.assert_allclose(result.loc[label].to_numpy(), expected, rtol=1e-12)


def test_build_map_recalls_the_synthetic_groups(tmp_path):
    from maefast.evaluate import relationship_recall
    rng = np.random.default_rng()
    table, relationships = synthetic_screen(rng, n_groups=30, genes_per_group=3)
    relationships.to_csv(tmp_path / "groups.csv", index=False)
    result = build_map(table, perturbation_col="perturbation", control_label="CONTROL", batch_col="plate",
                       pca_components=16, aggregate="median")
    assert "CONTROL" not in result.index and len(result) == 90
    assert build_map(table, perturbation_col="perturbation", control_label="CONTROL", pca_components=None,
                     keep_controls=True).index.isin(["CONTROL"]).sum() == 1
    recall = relationship_recall(result, sources=[tmp_path / "groups.csv"])
    assert recall.loc[0, "n_pairs"] == 90
    assert recall.loc[0, "recall_0.05_0.95"] > 0.8


def test_bad_input_gets_clear_errors():
    table, _ = synthetic_screen(np.random.default_rng(), n_groups=2, controls_per_batch=30, dim=6)
    options = dict(perturbation_col="perturbation", control_label="CONTROL", pca_components=4)
    with pytest.raises(ValueError, match="unknown perturbation column 'gene'"):
        build_map(table, **{**options, "perturbation_col": "gene"})
    with pytest.raises(ValueError, match="unknown batch column 'plat'"):
        build_map(table, **options, batch_col="plat")
    with pytest.raises(ValueError, match=r"no control rows.*\['EMPTY'\]"):
        build_map(table, **{**options, "control_label": "EMPTY"})
    no_controls_in_p1 = table[~((table["plate"] == "P1") & (table["perturbation"] == "CONTROL"))]
    with pytest.raises(ValueError, match="batch 'P1' has 0 control rows"):
        build_map(no_controls_in_p1, **options, batch_col="plate")
    with pytest.raises(ValueError, match="no feature columns"):
        build_map(table.rename(columns=lambda c: c.replace("feature_", "f")), **options)
    with pytest.warns(UserWarning, match=r"pca_components=7 is more than this data allows \(\d+ rows, 6 features, "
                                         r"\d+ control rows, less one \(TVN\)\); using 6"):
        clipped = build_map(table, **{**options, "pca_components": 7})
    pd.testing.assert_frame_equal(clipped, build_map(table, **{**options, "pca_components": 6}))
    few_controls = pd.concat([table[table["perturbation"] == "CONTROL"].iloc[:4],
                              table[table["perturbation"] != "CONTROL"]])
    with pytest.raises(ValueError, match="TVN needs more control rows"):  # without PCA: the 6 features as they are
        build_map(few_controls, **{**options, "pca_components": None})
    with pytest.raises(ValueError, match="unknown aggregation 'max'"):
        build_map(table, **options, aggregate="max")
    broken = table.copy()
    broken.loc[3, "feature_2"] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        build_map(broken, **options)
