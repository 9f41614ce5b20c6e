"""Recall intervals and the permutation null against direct computations."""
import numpy as np
import pandas as pd
import pytest

from maefast.errors import UserInputError
from maefast.evaluate import build_map, relationship_recall, score_map
from maefast.evaluate.similarity import unit_rows
from maefast.evaluate.uncertainty import permutation_null, recall_intervals, recall_summary
from tests.evaluate.evaluate_helpers import synthetic_screen

THRESHOLDS = (0.05, 0.95)


def random_map_and_pairs(rng, tmp_path, n=60, dim=8, count=90):
    features = pd.DataFrame(rng.normal(size=(n, dim)), index=[f"E{i}" for i in range(n)])
    first, second = rng.choice(n, count), rng.choice(n, count)
    pairs = pd.DataFrame({"entity1": features.index[first], "entity2": features.index[second]})
    path = tmp_path / "pairs.csv"
    pairs.to_csv(path, index=False)
    return features, path


def test_interval_is_the_bootstrap_over_pairs(tmp_path):
    rng = np.random.default_rng()
    features, path = random_map_and_pairs(rng, tmp_path, count=150)
    scores = score_map(features, sources=[path], thresholds=[THRESHOLDS, (0.2, 0.8)])
    table = recall_intervals(scores, (0.2, 0.8), level=0.9)
    row = table.iloc[0]
    assert row["n_pairs"] == scores.recall.loc[0, "n_pairs"]
    assert row["recall"] == scores.recall.loc[0, "recall_0.2_0.8"]
    assert row["recall_low"] <= row["recall"] <= row["recall_high"]
    # a resampling bootstrap of the recalled flags gives the same percentiles (up to one pair)
    low_cut, high_cut = scores.threshold_values[(0.2, 0.8)]
    values = scores.pair_similarities["pairs"]
    flags = (values < low_cut) | (values > high_cut)
    boot = flags[rng.integers(0, len(flags), (20000, len(flags)))].mean(1)
    expected = np.quantile(boot, [0.05, 0.95])
    np.testing.assert_allclose([row["recall_low"], row["recall_high"]], expected, atol=1.0 / len(flags) + 1e-12)


def test_interval_narrows_with_more_pairs(tmp_path):
    rng = np.random.default_rng()
    widths = []
    for count in (100, 10000):
        features, path = random_map_and_pairs(rng, tmp_path, n=200, count=count)
        row = recall_intervals(score_map(features, sources=[path], thresholds=[THRESHOLDS])).iloc[0]
        # in units of the recall's own spread sqrt(p (1 - p)): the random recall itself varies between
        # draws (about 0.1 here), and at 100 pairs a draw of 0.03 gives a narrow interval for that reason
        widths.append((row["recall_high"] - row["recall_low"]) / np.sqrt(row["recall"] * (1 - row["recall"])))
    assert widths[1] < widths[0] / 4  # 100 times the pairs: about 10 times narrower


def test_permutation_null_equals_relabelled_maps(tmp_path):
    """Each null value is the recall of the map whose row labels were shuffled by that permutation."""
    rng = np.random.default_rng()
    features, path = random_map_and_pairs(rng, tmp_path)
    scores = score_map(features, sources=[path], thresholds=[THRESHOLDS])
    seed = int(rng.integers(1 << 30))
    null = permutation_null(features, scores, THRESHOLDS, permutations=5, seed=seed)["pairs"]
    orders = np.random.default_rng(seed)
    unit, pairs = unit_rows(features.to_numpy()), scores.pairs["pairs"]
    for k in range(5):
        order = orders.permutation(len(features))
        names = np.empty(len(features), dtype=object)
        names[order] = features.index.to_numpy()  # row order[i] now carries the name of entity i
        relabelled = features.set_axis(names, axis=0)
        recall = relationship_recall(relabelled, sources=[path], thresholds=[THRESHOLDS])
        # The cut-offs are similarities of the map's own pairs: an annotated pair can be the cut-off pair, and
        # the two computations' last-bit rounding then puts it on either side. Only such pairs may differ.
        similarities = np.einsum("ij,ij->i", unit[order[pairs[:, 0]]], unit[order[pairs[:, 1]]])
        on_a_cut_off = sum(int(np.sum(np.abs(similarities - cut) < 1e-12))
                           for cut in scores.threshold_values[THRESHOLDS])
        differing_pairs = abs(recall.loc[0, "recall_0.05_0.95"] - null[k]) * len(pairs)
        assert differing_pairs <= on_a_cut_off + 1e-9


def test_summary_tells_signal_from_chance(tmp_path):
    rng = np.random.default_rng()
    table, relationships = synthetic_screen(rng, n_groups=10, genes_per_group=4)
    path = tmp_path / "groups.csv"
    relationships.to_csv(path, index=False)
    structured = build_map(table, perturbation_col="perturbation", control_label="CONTROL", batch_col="plate",
                           pca_components=8)
    def summary(features):
        scores = score_map(features, sources=[path], thresholds=[THRESHOLDS])
        return recall_summary(features, scores, THRESHOLDS, permutations=300, seed=1).iloc[0]

    signal = summary(structured)
    assert signal["p_value"] < 0.01 and signal["p_below"] > 0.99
    assert signal["recall_low"] > signal["null_high"]
    # A map with labels unrelated to its rows is itself a draw from the null: it passes the null's 95% quantile
    # in 5% of draws, so one draw cannot be asserted; of 20 such maps, 7 or more pass it with odds under 1e-4.
    noise = [summary(structured.set_axis(rng.permutation(structured.index.to_numpy()), axis=0)) for _ in range(20)]
    assert sum(row["recall"] > row["null_high"] for row in noise) < 7
    assert np.median([row["p_value"] for row in noise]) > 0.1
    assert np.median([row["p_below"] for row in noise]) > 0.1
    # partners kept apart: each group's genes orthogonal to one another (cosine 0, the middle of the similarities
    # of unrelated genes), so no partner pair reaches either percentile cut-off: a recall below chance
    vectors = np.concatenate([np.linalg.qr(rng.normal(size=(8, 4)))[0].T for _ in range(10)])
    apart = summary(pd.DataFrame(vectors, index=structured.index))
    assert apart["p_below"] < 0.05 < apart["p_value"]


def test_errors_and_empty_sources(tmp_path):
    rng = np.random.default_rng()
    features, _ = random_map_and_pairs(rng, tmp_path)
    empty = tmp_path / "none.csv"
    pd.DataFrame({"entity1": ["X"], "entity2": ["Y"]}).to_csv(empty, index=False)
    scores = score_map(features, sources=[empty], thresholds=[THRESHOLDS])
    summary = recall_summary(features, scores, THRESHOLDS, permutations=3)
    assert summary.loc[0, "n_pairs"] == 0 and summary[["recall", "recall_low", "p_value"]].isna().all(axis=None)
    with pytest.raises(UserInputError, match="not scored"):
        recall_intervals(scores, (0.1, 0.9))
    with pytest.raises(UserInputError, match="level"):
        recall_intervals(scores, THRESHOLDS, level=1.0)
    with pytest.raises(UserInputError, match="permutations"):
        permutation_null(features, scores, THRESHOLDS, permutations=0)
