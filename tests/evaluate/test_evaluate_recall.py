"""relationship_recall and the chunked all-pairs scan against brute-force computations."""
import os

import numpy as np
import pandas as pd
import pytest

from maefast.evaluate import KNOWN_SOURCES, load_relationships, relationship_recall, score_map
from maefast.evaluate.relationships import annotation_dir
from maefast.evaluate.similarity import scan_similarities
from tests.evaluate.evaluate_helpers import brute_force_recall

THRESHOLDS = [(0.05, 0.95), (0.1, 0.9), (0.01, 0.99), (0.25, 0.6)]


def random_map(rng, n, dim, prefix="E"):
    return pd.DataFrame(rng.normal(size=(n, dim)), index=[f"{prefix}{i}" for i in range(n)])


def random_pairs_file(rng, tmp_path, names, count, name="user.csv"):
    """Random annotated pairs with reversed duplicates, self pairs and names absent from the map."""
    pool = list(names) + ["NOT_IN_MAP_1", "NOT_IN_MAP_2"]
    first, second = rng.choice(pool, count), rng.choice(pool, count)
    table = pd.DataFrame({"entity1": first, "entity2": second})
    table = pd.concat([table, table.iloc[: count // 4].rename(columns={"entity1": "entity2", "entity2": "entity1"}),
                       pd.DataFrame({"entity1": [pool[0]], "entity2": [pool[0]]})])
    path = tmp_path / name
    table.to_csv(path, index=False)
    return path, table


@pytest.mark.parametrize("n, dim", [(23, 5), (61, 16), (150, 3)])
def test_recall_equals_brute_force(tmp_path, n, dim):
    rng = np.random.default_rng()
    features = random_map(rng, n, dim)
    path, raw = random_pairs_file(rng, tmp_path, features.index, 3 * n)
    result = relationship_recall(features, sources=[path], thresholds=THRESHOLDS, block_rows=int(rng.integers(1, 9)))
    assert list(result["source"]) == ["user"]
    assert result.loc[0, "n_all_pairs"] == n * (n - 1) // 2
    for lower, upper in THRESHOLDS:
        expected, n_pairs = brute_force_recall(features, raw, lower, upper)
        assert result.loc[0, "n_pairs"] == n_pairs
        assert result.loc[0, f"recall_{lower}_{upper}"] == expected


def test_recall_with_ties_equals_brute_force(tmp_path):
    """Signed one-hot rows give similarities of exactly -1, 0 and 1: the percentile rule at ties."""
    rng = np.random.default_rng()
    n, dim = 40, 3
    rows = np.zeros((n, dim))
    rows[np.arange(n), rng.integers(0, dim, n)] = rng.choice([-1.0, 1.0], n)
    features = pd.DataFrame(rows, index=[f"E{i}" for i in range(n)])
    path, raw = random_pairs_file(rng, tmp_path, features.index, 200)
    thresholds = [(0.05, 0.95), (0.1, 0.9), (0.3, 0.7), (0.5, 0.55)]
    result = relationship_recall(features, sources=[path], thresholds=thresholds, block_rows=7)
    for lower, upper in thresholds:
        assert result.loc[0, f"recall_{lower}_{upper}"] == brute_force_recall(features, raw, lower, upper)[0]


def test_chunked_scan_equals_dense():
    rng = np.random.default_rng()
    n = int(rng.integers(30, 90))
    x = rng.normal(size=(n, 12))
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    dense = unit @ unit.T
    upper = np.triu_indices(n, k=1)
    all_sorted = np.sort(dense[upper])
    pick = rng.choice(len(upper[0]), 50, replace=False)
    pairs = np.stack([upper[0][pick], upper[1][pick]], axis=1)
    ranks = rng.choice(len(all_sorted), 25, replace=False)
    results = [scan_similarities(x, pairs, ranks, block_rows=b) for b in (1, 4, 13, n)]
    for result in results:
        assert result.n_pairs == len(all_sorted)
        assert result.histogram.sum() == len(all_sorted)
        np.testing.assert_allclose(result.pair_similarities, dense[pairs[:, 0], pairs[:, 1]], rtol=0, atol=1e-12)
        np.testing.assert_allclose([result.order_statistics[r] for r in ranks], all_sorted[ranks], rtol=0, atol=1e-12)
        np.testing.assert_array_equal(result.histogram, results[-1].histogram)


def test_chunked_recall_equals_dense_recall(tmp_path):
    rng = np.random.default_rng()
    features = random_map(rng, 120, 8)
    path, _ = random_pairs_file(rng, tmp_path, features.index, 400)
    tables = [relationship_recall(features, [path], THRESHOLDS, block_rows=b) for b in (3, 17, 120)]
    for table in tables[:-1]:
        pd.testing.assert_frame_equal(table, tables[-1])


def test_known_sources_count_pairs_like_brute_force():
    rng = np.random.default_rng()
    corum = pd.read_csv(annotation_dir() / "CORUM.txt")
    genes = rng.choice(pd.unique(corum[["entity1", "entity2"]].to_numpy().ravel()), 300, replace=False)
    features = pd.DataFrame(rng.normal(size=(300, 6)), index=genes)
    result = relationship_recall(features, sources=["CORUM", "SIGNOR"])
    assert list(result["source"]) == ["CORUM", "SIGNOR"]
    expected, n_pairs = brute_force_recall(features, corum, 0.05, 0.95)
    assert result.loc[0, "n_pairs"] == n_pairs > 0
    assert result.loc[0, "recall_0.05_0.95"] == expected


def test_load_relationships_is_unordered_and_unique():
    for source in KNOWN_SOURCES:
        pairs = load_relationships(source)
        assert len(pairs) > 1000
        assert (pairs["entity1"] < pairs["entity2"]).all()
        assert not pairs.duplicated().any()


def test_a_relationship_file_is_read_once_per_version(tmp_path, monkeypatch):
    """Many maps scored against one source read it once; a file rewritten since is read again, and a caller
    changing its table changes no one else's."""
    import maefast.evaluate.relationships as relationships
    reads = []
    original = relationships.read_table
    monkeypatch.setattr(relationships, "read_table", lambda *a, **k: reads.append(a[0]) or original(*a, **k))
    path = tmp_path / "pairs.csv"
    pd.DataFrame({"entity1": ["B", "C"], "entity2": ["A", "D"]}).to_csv(path, index=False)
    first = load_relationships(path)
    first.loc[0, "entity1"] = "changed by a caller"
    assert load_relationships(str(path)).values.tolist() == [["A", "B"], ["C", "D"]] and len(reads) == 1
    pd.DataFrame({"entity1": ["E", "C"], "entity2": ["F", "D"]}).to_csv(path, index=False)
    version = path.stat()
    os.utime(path, ns=(version.st_atime_ns, version.st_mtime_ns + 10**9))  # a later write, whatever the clock
    assert load_relationships(path).values.tolist() == [["E", "F"], ["C", "D"]] and len(reads) == 2


def test_structured_map_recalls_more_than_random(tmp_path):
    """Entities in groups sharing a direction: their pairs sit in the top percentiles of all pairs."""
    rng = np.random.default_rng()
    groups, dim = rng.normal(size=(30, 16)), 16  # 90 within-group pairs: 2% of all pairs
    names = [f"G{g}_{k}" for g in range(30) for k in range(3)]
    features = pd.DataFrame([groups[g] + 0.3 * rng.normal(size=dim) for g in range(30) for _ in range(3)],
                            index=names)
    pd.DataFrame([(a, b) for a in names for b in names if a < b and a.split("_")[0] == b.split("_")[0]],
                 columns=["entity1", "entity2"]).to_csv(tmp_path / "groups.csv", index=False)
    structured = relationship_recall(features, [tmp_path / "groups.csv"])
    shuffled = relationship_recall(features.set_axis(rng.permutation(names)), [tmp_path / "groups.csv"])
    assert structured.loc[0, "recall_0.05_0.95"] > 0.8
    assert shuffled.loc[0, "recall_0.05_0.95"] < 0.5


def test_scores_hold_what_the_plots_need(tmp_path):
    rng = np.random.default_rng()
    features = random_map(rng, 50, 4)
    path, raw = random_pairs_file(rng, tmp_path, features.index, 100)
    scores = score_map(features, [path], [(0.05, 0.95)])
    low, high = scores.threshold_values[(0.05, 0.95)]
    assert low < high
    assert len(scores.pair_similarities["user"]) == scores.recall.loc[0, "n_pairs"]


@pytest.mark.parametrize("make, message", [
    (lambda f: f.iloc[:19], "at least 20"),
    (lambda f: f.set_axis(["SAME"] * len(f)), "repeated"),
    (lambda f: f.assign(text="a"), "numeric"),
    (lambda f: f.mask(f > 1.5), "NaN"),
    (lambda f: f.to_numpy(), "DataFrame"),
])
def test_bad_maps_are_rejected(make, message):
    features = random_map(np.random.default_rng(), 30, 4)
    with pytest.raises((ValueError, TypeError), match=message):
        relationship_recall(make(features), sources=["CORUM"])


def test_bad_sources_and_thresholds_are_rejected(tmp_path):
    features = random_map(np.random.default_rng(), 30, 4)
    with pytest.raises(ValueError, match="unknown relationship source 'CORUMM'.*CORUM, HuMAP"):
        relationship_recall(features, sources=["CORUMM"])
    with pytest.raises(ValueError, match="distinct"):
        relationship_recall(features, sources=["CORUM", "CORUM"])
    (tmp_path / "bad.csv").write_text("a,b\nX,Y\n")
    with pytest.raises(ValueError, match="missing column"):
        relationship_recall(features, sources=[tmp_path / "bad.csv"])
    for thresholds in ([(0.95, 0.95)], [(0.0, 0.9)], [(0.1,)]):
        with pytest.raises(ValueError, match="threshold pair"):
            relationship_recall(features, sources=["CORUM"], thresholds=thresholds)
    with pytest.raises(ValueError, match="at least 50"):
        relationship_recall(features, sources=["CORUM"], min_entities=50)
