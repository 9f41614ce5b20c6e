"""The magnitude and cluster benchmarks against efaar-benchmarking 1.0's own functions on the same inputs."""
import numpy as np
import pandas as pd
import pytest
from efaar_benchmarking.benchmarking import cluster_benchmark as efaar_cluster_benchmark
from efaar_benchmarking.benchmarking import pert_signal_magnitude_benchmark
from sklearn.utils import Bunch

from maefast.errors import UserInputError
from maefast.evaluate import cluster_benchmark, load_clusters, perturbation_magnitude, summarize_clusters
from maefast.evaluate.magnitude import energy_distance


def replicate_table(rng, perturbations, replicates, controls=60, dim=12):
    """Rows of controls and perturbations (random counts of replicates), each perturbation shifted by its own
    random amount, so magnitudes differ."""
    labels = ["CTRL"] * controls
    features = [rng.normal(size=dim) for _ in range(controls)]
    for name in perturbations:
        shift = rng.normal(size=dim) * rng.uniform(0, 2)
        for _ in range(int(rng.integers(*replicates))):
            labels.append(name)
            features.append(rng.normal(size=dim) + shift)
    table = pd.DataFrame(np.array(features), columns=[f"feature_{i}" for i in range(dim)])
    return table.assign(perturbation=labels).sample(frac=1, random_state=int(rng.integers(1 << 30)),
                                                    ignore_index=True)


def test_energy_distance_is_the_v_statistic():
    rng = np.random.default_rng()
    x, y = rng.normal(size=(7, 4)), rng.normal(size=(11, 4)) + 0.5
    def mean(a, b):
        return np.mean([np.linalg.norm(p - q) for p in a for q in b])
    assert energy_distance(x, y) == pytest.approx(2 * mean(x, y) - mean(x, x) - mean(y, y), rel=1e-12)


def test_magnitude_matches_efaar_with_null_perturbations():
    rng = np.random.default_rng()
    nulls = [f"N{i}" for i in range(8)]
    table = replicate_table(rng, [f"G{i}" for i in range(12)] + nulls, replicates=(3, 9))
    for name in nulls:  # EFAAR counts null perturbations without 5 replicates as NaN in its null
        extra = table[table["perturbation"] == name].iloc[:1]
        table = pd.concat([table] + [extra] * 5, ignore_index=True)
    features = table.filter(like="feature_").to_numpy()
    expected = pert_signal_magnitude_benchmark(features, table[["perturbation"]], "perturbation", nulls, "CTRL",
                                               max_controls=10_000, n_jobs=1)
    expected = expected[expected["pert"] != "CTRL"]  # EFAAR also scores the controls against themselves
    result = perturbation_magnitude(table, perturbation_col="perturbation", control_label="CTRL",
                                    null_perturbations=nulls)
    assert list(result["perturbation"]) == list(expected["pert"])
    # geomloss takes distances as sqrt(max(d^2, 1e-8)): each zero self-distance counts as 1e-4, lowering its
    # energy distance by 1e-4 (1/n + 1/m) for n replicates and m controls; the rest is the same statistic
    floor = 1e-4 * (1 / result["n_replicates"] + 1 / 60) + 1e-9
    difference = (result["energy_distance"] - expected["edist"].to_numpy()).abs()
    assert (difference.dropna() <= floor[difference.notna()]).all()
    assert result["energy_distance"].isna().tolist() == expected["edist"].isna().tolist()
    np.testing.assert_allclose(result["p_value"], expected["pval"], atol=1e-12, equal_nan=True)
    assert result["energy_distance"].isna().tolist() == (result["n_replicates"] < 5).tolist()


def test_magnitude_control_null_finds_the_shifted_perturbations():
    rng = np.random.default_rng()
    table = replicate_table(rng, [], replicates=(6, 7), controls=120)
    strong = table.filter(like="feature_").iloc[:6].to_numpy() + 3.0
    table = pd.concat([table, pd.DataFrame(strong, columns=table.columns[:-1]).assign(perturbation="STRONG"),
                       pd.DataFrame(rng.normal(size=(6, 12)), columns=table.columns[:-1]).assign(perturbation="NONE")],
                      ignore_index=True)
    result = perturbation_magnitude(table, perturbation_col="perturbation", control_label="CTRL",
                                    n_null=200, seed=1).set_index("perturbation")
    assert result.loc["STRONG", "p_value"] == 0.0 and result.loc["NONE", "p_value"] > 0.01
    assert result.loc["STRONG", "energy_distance"] > 10 * abs(result.loc["NONE", "energy_distance"])
    with pytest.raises(UserInputError, match="only .* are left"):
        perturbation_magnitude(table.iloc[110:], perturbation_col="perturbation", control_label="CTRL")
    with pytest.raises(UserInputError, match="not in"):
        perturbation_magnitude(table, perturbation_col="perturbation", control_label="CTRL",
                               null_perturbations=["NOPE"])


def corum_map(rng, min_size=4, clusters=12, background=60, dim=16):
    """A gene map of real CORUM genes: the members of some clusters share a direction; other genes random."""
    chosen = [(name, sorted(genes)) for name, genes in load_clusters("CORUM").items() if len(genes) >= min_size]
    chosen = [chosen[i] for i in rng.choice(len(chosen), clusters, replace=False)]
    vectors = {}
    for k, (_, genes) in enumerate(chosen):
        direction = rng.normal(size=dim) * (2.0 if k % 2 else 0.0)  # half of them carry signal
        for gene in genes:
            vectors.setdefault(gene, direction + rng.normal(size=dim))
    for k in range(background):
        vectors[f"RANDOM{k}"] = rng.normal(size=dim)
    names = list(vectors)
    rng.shuffle(names)
    return pd.DataFrame(np.array([vectors[n] for n in names]), index=pd.Index(names, name="gene"))


def test_clusters_match_efaar():
    rng = np.random.default_rng()
    features = corum_map(rng)
    data = Bunch(features=features.reset_index(drop=True), metadata=pd.DataFrame({"gene": features.index}))
    expected = efaar_cluster_benchmark(data, "gene", min_genes=4)
    result = cluster_benchmark(features, "CORUM", min_genes=4)
    assert len(result) >= 12 and list(result["cluster"]) == list(expected["cluster"])
    for column in ["within_cossim_mean", "between_cossim_mean", "ks_stat", "ks_pval"]:
        np.testing.assert_allclose(result[column], expected[column], rtol=1e-9, atol=1e-12)
    assert (result["cluster_size"] == expected["cluster_size"]).all()
    assert (result["not_cluster_size"] == expected["not_cluster_size"]).all()
    assert [sorted(g) for g in result["genes"]] == [sorted(g) for g in expected["genes"]]
    summary = summarize_clusters(result)
    assert summary["n_clusters"] == len(result) and 0 < summary["significant_fraction"] <= 1


def test_cluster_file_formats_and_errors(tmp_path):
    (tmp_path / "sets.tsv").write_text("A\tG1 G2 G3\nB\tG4 G5\n")
    (tmp_path / "sets.gmt").write_text("A\turl\tG1\tG2\tG3\n")
    assert load_clusters(tmp_path / "sets.tsv") == {"A": {"G1", "G2", "G3"}, "B": {"G4", "G5"}}
    assert load_clusters(tmp_path / "sets.gmt") == {"A": {"G1", "G2", "G3"}}
    features = pd.DataFrame(np.random.default_rng().normal(size=(6, 3)), index=[f"G{i}" for i in range(1, 7)])
    assert list(cluster_benchmark(features, tmp_path / "sets.tsv", min_genes=2)["cluster"]) == ["A", "B"]
    with pytest.raises(UserInputError, match="unknown cluster source"):
        load_clusters("nothing.tsv")
    (tmp_path / "bad.tsv").write_text("only-a-name\n")
    with pytest.raises(UserInputError, match="line 1"):
        load_clusters(tmp_path / "bad.tsv")
