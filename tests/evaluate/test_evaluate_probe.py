"""The linear probe: its scores against scikit-learn's metrics, its hold-out of whole batches, and blocks."""
import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import balanced_accuracy_score, f1_score

from maefast.errors import UserInputError
from maefast.evaluate.probe import linear_probe, probe_blocks, probe_scores


def wells(rng, classes=6, batches=3, replicates=2, dim=10, signal=3.0, batch_shift=2.0):
    """Wells of `classes` perturbations in every batch; each batch shifts all its wells by its own offset. The
    perturbations' centers are orthogonal (length signal x sqrt(dim), as a normal draw's on average): drawn at
    random, two of them now and then fell close together and the probe's lower bound under 0.5 (1 in 40 seeds)."""
    centers = np.linalg.qr(rng.normal(size=(dim, dim)))[0][:classes] * signal * np.sqrt(dim)
    rows, features = [], []
    for batch in range(batches):
        offset = rng.normal(size=dim) * batch_shift
        for k in range(classes):
            for _ in range(replicates):
                features.append(centers[k] + offset + rng.normal(size=dim))
                rows.append({"perturbation": f"P{k}", "experiment": f"E{batch}"})
        for _ in range(4):
            features.append(offset + rng.normal(size=dim))
            rows.append({"perturbation": "CONTROL", "experiment": f"E{batch}"})
    return pd.concat([pd.DataFrame(rows), pd.DataFrame(np.array(features)).add_prefix("feature_")], axis=1)


@pytest.mark.filterwarnings("ignore:y_pred contains classes not in y_true")
def test_scores_match_sklearn_and_intervals_cover():
    rng = np.random.default_rng()
    truth = rng.integers(0, 7, 200)
    predicted = np.where(rng.random(200) < 0.6, truth, rng.integers(0, 8, 200))
    scores = probe_scores(truth, predicted, n_bootstrap=400)
    assert scores["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, predicted), abs=1e-12)
    expected_f1 = f1_score(truth, predicted, average="macro", labels=np.unique(truth), zero_division=0)
    assert scores["macro_f1"] == pytest.approx(expected_f1, abs=1e-12)
    for name in ("balanced_accuracy", "macro_f1"):
        assert scores[f"{name}_low"] < scores[name] < scores[f"{name}_high"]
        assert scores[f"{name}_high"] - scores[f"{name}_low"] < 0.3


def test_probe_separates_perturbations_on_held_out_batches():
    rng = np.random.default_rng()
    table = wells(rng)
    result = linear_probe(table, perturbation_col="perturbation", holdout_col="experiment",
                          control_label="CONTROL", n_bootstrap=200)
    assert result["n_classes"] == 6 and result["n_batches"] == 3 and result["n_wells"] == 36
    assert result["chance"] == pytest.approx(1 / 6) and result["balanced_accuracy_low"] > 0.5
    noise = table.assign(**{c: rng.normal(size=len(table)) for c in table.filter(like="feature_").columns})
    chance = linear_probe(noise, perturbation_col="perturbation", holdout_col="experiment",
                          control_label="CONTROL", n_bootstrap=200)
    assert chance["balanced_accuracy_low"] < 1 / 6 + 0.1 < result["balanced_accuracy_low"]


def test_wells_of_unseen_perturbations_are_counted_not_scored():
    table = wells(np.random.default_rng())
    table.loc[(table["perturbation"] == "P0") & (table["experiment"] != "E0"), "perturbation"] = "CONTROL"
    result = linear_probe(table, perturbation_col="perturbation", holdout_col="experiment", control_label="CONTROL",
                          n_bootstrap=50)
    assert result["n_unseen"] == 2 and result["n_classes"] == 5


def test_probe_per_block_and_errors():
    rng = np.random.default_rng()
    strong, weak = wells(rng), wells(rng, signal=0.0)
    table = pd.concat([strong.assign(block=3), weak.assign(block=1)], ignore_index=True)
    result = probe_blocks(table, perturbation_col="perturbation", holdout_col="experiment", control_label="CONTROL",
                          n_bootstrap=100)
    assert list(result["block"]) == [1, 3]
    assert result.loc[1, "balanced_accuracy"] > result.loc[0, "balanced_accuracy"] + 0.3
    with pytest.raises(UserInputError, match="at least 2"):
        linear_probe(strong[strong["experiment"] == "E0"], perturbation_col="perturbation", holdout_col="experiment")
    with pytest.raises(UserInputError, match="unknown hold-out batch column"):
        linear_probe(strong, perturbation_col="perturbation", holdout_col="plate")
