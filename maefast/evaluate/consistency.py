"""Replicate consistency: do a perturbation's replicates point the same way, more than controls do?

The statistic is EFAAR's perturbation signal consistency: the mean cosine similarity over the unordered
pairs of a perturbation's replicate rows. With unit rows u_1..u_n and s = sum u_i, the sum over pairs
i < j of u_i . u_j is (|s|^2 - n) / 2, so the mean is (|s|^2 - n) / (n (n - 1)), computed for every
perturbation at once from per-perturbation sums.

The null is built from controls: for each replicate count n present in the screen, `n_null` random sets of
n distinct control rows get the same statistic. The p-value of an observed value x is the fraction of null
values >= x (EFAAR: 1 - searchsorted(sorted_null, x, "left") / len(null)).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from maefast.errors import UserInputError
from maefast.evaluate.normalize import control_mask
from maefast.evaluate.similarity import unit_rows
from maefast.tables import feature_columns, metadata_column


def mean_pair_cosine(sums: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Mean pairwise cosine similarity from the sums of unit rows (K, D) and counts (K,); NaN where n < 2."""
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        values = (np.einsum("kd,kd->k", sums, sums) - counts) / (counts * (counts - 1))
    return np.where(counts >= 2, values, np.nan)


def control_null(control_units: np.ndarray, size: int, n_null: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted statistics of `n_null` random sets of `size` distinct control rows."""
    draws = np.stack([rng.choice(len(control_units), size, replace=False) for _ in range(n_null)])
    sums = control_units[draws].sum(axis=1)
    return np.sort(mean_pair_cosine(sums, np.full(n_null, size)))


def replicate_consistency(
    table: pd.DataFrame,
    *,
    perturbation_col: str,
    control_label: str | Sequence[str],
    feature_cols: Sequence[str] | None = None,
    n_null: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Consistency of each non-control perturbation's replicates (rows of `table`) against a control null.

    Returns one row per perturbation: perturbation_col, n_replicates, mean_cosine, p_value (NaN where a
    perturbation has fewer than 2 replicates).
    """
    if n_null < 1:
        raise UserInputError(f"n_null must be at least 1, got {n_null}")
    controls = control_mask(table, perturbation_col, control_label)
    perturbation_col = metadata_column(table, perturbation_col)
    units = unit_rows(table[feature_columns(table, names=feature_cols)].to_numpy(np.float64))
    codes, names = pd.factorize(table.loc[~controls, perturbation_col], sort=True)
    if len(names) == 0:
        raise UserInputError(f"no perturbation rows besides the controls in {perturbation_col!r}")
    sums = pd.DataFrame(units[~controls]).groupby(codes).sum().to_numpy()
    counts = np.bincount(codes, minlength=len(names))
    observed = mean_pair_cosine(sums, counts)

    control_units = units[controls]
    too_many = counts > len(control_units)
    if np.any(too_many):
        raise UserInputError(f"{names[np.argmax(too_many)]!r} has {counts.max()} replicates but there are only "
                             f"{len(control_units)} control rows to build its null from")
    rng = np.random.default_rng(seed)
    p_values = np.full(len(names), np.nan)
    for size in np.unique(counts[counts >= 2]):
        null = control_null(control_units, int(size), n_null, rng)
        chosen = counts == size
        p_values[chosen] = 1.0 - np.searchsorted(null, observed[chosen], side="left") / n_null
    return pd.DataFrame({perturbation_col: names, "n_replicates": counts, "mean_cosine": observed,
                         "p_value": p_values})
