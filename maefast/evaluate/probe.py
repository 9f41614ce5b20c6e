"""Linear probes: how well a regularised logistic regression tells perturbations apart from their embeddings,
on experimental batches it was not fitted on (the perturbation-separability probe of Kenyon-Dean et al.,
"ViTally Consistent", ICML 2025, used there to choose a ViT's block).

For each batch (the values of `holdout_col`, e.g. the experiment) in turn, a multinomial logistic regression
(L2 penalty, inverse strength C, on features standardized with the training rows' mean and standard
deviation) is fitted on the wells of every other batch and predicts the held-out batch's wells. Wells whose
perturbation never occurs outside their batch cannot be predicted and are left out (counted in
`n_unseen`). The pooled held-out predictions give

- balanced accuracy: the mean over perturbations of the fraction of their wells predicted right (chance:
  1 / number of perturbations scored), as scikit-learn's balanced_accuracy_score;
- macro F1: the mean over the scored perturbations of 2 TP / (2 TP + FP + FN), as f1_score(average="macro",
  labels=the scored perturbations);

each with a percentile-bootstrap interval over the held-out wells (wells of one batch share its batch
effect, so the interval is too narrow when batches differ much). Controls are left out when named.
"""
from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import pandas as pd

from maefast.errors import UserInputError
from maefast.tables import BLOCK_COLUMN, feature_columns

PROBE_COLUMNS = ["n_wells", "n_unseen", "n_classes", "n_batches", "balanced_accuracy", "balanced_accuracy_low",
                 "balanced_accuracy_high", "macro_f1", "macro_f1_low", "macro_f1_high", "chance"]


def class_counts(weights: np.ndarray, truth: np.ndarray, predicted: np.ndarray, classes: int):
    """Per resample (rows of `weights`, (R, N) well counts) and class: true positives, support, predictions."""
    correct = (truth == predicted).astype(np.float64)
    truth_onehot = np.eye(classes)[truth]
    predicted_onehot = np.eye(classes)[predicted]
    return (weights @ (truth_onehot * correct[:, None]), weights @ truth_onehot, weights @ predicted_onehot)


def scores_from_counts(true_positives, support, predictions) -> tuple[np.ndarray, np.ndarray]:
    """Balanced accuracy and macro F1 per resample, over the classes with support in that resample."""
    present = support > 0
    with np.errstate(invalid="ignore", divide="ignore"):
        recall = np.where(present, true_positives / support, 0.0)
        f1 = np.where(present, 2 * true_positives / (support + predictions), 0.0)
    count = present.sum(axis=1)
    return recall.sum(axis=1) / count, f1.sum(axis=1) / count


def probe_scores(truth: np.ndarray, predicted: np.ndarray, level: float = 0.95, n_bootstrap: int = 1000,
                 seed: int = 0) -> dict:
    """Balanced accuracy and macro F1 of integer labels (classes = those in `truth`) with bootstrap intervals."""
    if not 0 < level < 1:
        raise UserInputError(f"level must lie in (0, 1), got {level}")
    classes = int(max(truth.max(), predicted.max())) + 1
    observed = scores_from_counts(*class_counts(np.ones((1, len(truth))), truth, predicted, classes))
    rng = np.random.default_rng(seed)
    weights = rng.multinomial(len(truth), np.full(len(truth), 1 / len(truth)), size=n_bootstrap).astype(np.float64)
    resampled = scores_from_counts(*class_counts(weights, truth, predicted, classes))
    quantiles = [(1 - level) / 2, (1 + level) / 2]
    result = {}
    for name, value, draws in zip(("balanced_accuracy", "macro_f1"), observed, resampled):
        low, high = np.quantile(draws, quantiles)
        result.update({name: float(value[0]), f"{name}_low": float(low), f"{name}_high": float(high)})
    return result


def linear_probe(table: pd.DataFrame, *, perturbation_col: str, holdout_col: str,
                 feature_cols: Sequence[str] | None = None, control_label: str | Sequence[str] | None = None,
                 C: float = 1.0, level: float = 0.95, n_bootstrap: int = 1000, seed: int = 0,
                 max_iter: int = 2000) -> dict:
    """Leave-one-batch-out logistic-regression probe of `perturbation_col` on the rows (wells) of `table`.

    Returns n_wells (held-out wells scored), n_unseen (held-out wells whose perturbation no other batch has),
    n_classes (perturbations scored), n_batches, balanced_accuracy and macro_f1 with *_low / *_high interval
    bounds at `level`, and chance (1 / n_classes, the balanced accuracy of guessing).
    """
    from sklearn.linear_model import LogisticRegression  # imported here: scikit-learn takes a second to import
    from sklearn.preprocessing import StandardScaler
    if C <= 0:
        raise UserInputError(f"C (inverse regularization strength) must be positive, got {C}")
    for column, role in ((perturbation_col, "perturbation"), (holdout_col, "hold-out batch")):
        if column not in table.columns:
            raise UserInputError(f"unknown {role} column {column!r}; columns are {list(table.columns)[:10]}")
    if control_label is not None:
        labels = [control_label] if isinstance(control_label, str) else list(control_label)
        table = table[~table[perturbation_col].isin(labels)]
    if table[perturbation_col].isna().any() or table[holdout_col].isna().any():
        raise UserInputError(f"{perturbation_col!r} and {holdout_col!r} must have no missing values")
    x = table[feature_columns(table, names=feature_cols)].to_numpy(np.float64)
    if not np.isfinite(x).all():
        raise UserInputError("the features have NaN or infinite values")
    codes, names = pd.factorize(table[perturbation_col], sort=True)
    batches = table[holdout_col].to_numpy()
    unique_batches = pd.unique(batches)
    if len(unique_batches) < 2:
        raise UserInputError(f"the probe holds out whole batches: {holdout_col!r} has {len(unique_batches)} value(s); "
                             "it needs at least 2")
    truth, predicted, unseen = [], [], 0
    for batch in unique_batches:
        test = batches == batch
        train_classes = np.unique(codes[~test])
        seen = test & np.isin(codes, train_classes)
        unseen += int(test.sum() - seen.sum())
        if not seen.any():
            continue
        scaler = StandardScaler().fit(x[~test])
        if len(train_classes) == 1:  # nothing to tell apart: every prediction is the one class
            guess = np.full(int(seen.sum()), train_classes[0])
        else:
            with warnings.catch_warnings():  # many perturbations with few wells each is the usual case here
                warnings.filterwarnings("ignore", message="The number of unique classes is greater than 50%")
                model = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(x[~test]), codes[~test])
            guess = model.predict(scaler.transform(x[seen]))
        truth.append(codes[seen])
        predicted.append(guess)
    if not truth:
        raise UserInputError(f"no held-out well has a perturbation that another {holdout_col!r} batch has: "
                             "replicates of a perturbation must span batches")
    truth, predicted = np.concatenate(truth), np.concatenate(predicted)
    # scored classes: those with held-out wells; renumber them first so predictions of others count as wrong
    scored = np.unique(truth)
    remap = np.full(len(names), len(scored), dtype=np.int64)
    remap[scored] = np.arange(len(scored))
    scores = probe_scores(remap[truth], remap[predicted], level, n_bootstrap, seed)
    return {"n_wells": len(truth), "n_unseen": unseen, "n_classes": len(scored), "n_batches": len(unique_batches),
            **scores, "chance": 1.0 / len(scored)}


def per_block(table: pd.DataFrame, score, block_col: str = BLOCK_COLUMN) -> pd.DataFrame:
    """score(rows) -> dict for the rows of each block of `table` (or all rows when it has no `block_col`),
    as a table with a block column (NaN without blocks)."""
    if block_col not in table.columns:
        return pd.DataFrame([{block_col: np.nan, **score(table)}])
    rows = [{block_col: block, **score(table[table[block_col] == block].drop(columns=block_col))}
            for block in sorted(table[block_col].unique())]
    return pd.DataFrame(rows)


def probe_blocks(table: pd.DataFrame, block_col: str = BLOCK_COLUMN, **options) -> pd.DataFrame:
    """`linear_probe` for every block of a block-wise table: one row per block (block, PROBE_COLUMNS)."""
    return per_block(table, lambda rows: linear_probe(rows, **options), block_col)
