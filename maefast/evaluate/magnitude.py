"""Perturbation signal magnitude: how far a perturbation's replicates lie from the controls (EFAAR's
`pert_signal_magnitude_benchmark`).

The statistic is the energy distance between the perturbation's replicate rows X and a sample of control
rows Y, 2 E|X - Y| - E|X - X'| - E|Y - Y'| over all pairs of rows (Euclidean distances; the V-statistic,
which is what EFAAR computes as twice geomloss' SamplesLoss("energy")). A perturbation with fewer than
`min_replicates` rows (EFAAR: 5) gets none.

Its null, and so the p-value (the fraction of null values above the observed one, EFAAR's
1 - searchsorted(null, x, "right") / len(null)), comes from either
- `null_perturbations` (EFAAR's way): the same statistic for perturbations known to do nothing, e.g. genes
  not expressed in the cell type; or
- the controls (default): the control rows are split at random into the reference sample and a pool, and
  for each replicate count n, `n_null` random sets of n pool rows get the statistic against the reference.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.spatial.distance import cdist

from maefast.errors import UserInputError
from maefast.evaluate.normalize import control_mask
from maefast.tables import feature_columns

MIN_REPLICATES = 5     # EFAAR: pert_signal_magnitude_metric needs 5 replicates
MAX_CONTROLS = 1000    # EFAAR's max_controls: the control sample every perturbation is compared with


def mean_distance(first: np.ndarray, second: np.ndarray) -> float:
    """Mean Euclidean distance over all pairs of rows (both ways, the diagonal included)."""
    return float(cdist(first, second).mean())


def energy_distance(replicates: np.ndarray, controls: np.ndarray, controls_spread: float | None = None) -> float:
    """2 E|X - Y| - E|X - X'| - E|Y - Y'| of the rows of `replicates` (X) and `controls` (Y);
    controls_spread: E|Y - Y'| when already known (it is the same for every perturbation)."""
    spread = mean_distance(controls, controls) if controls_spread is None else controls_spread
    return 2 * mean_distance(replicates, controls) - mean_distance(replicates, replicates) - spread


def p_values(sorted_null: np.ndarray, observed: np.ndarray) -> np.ndarray:
    """EFAAR's p-value: the fraction of null values above the observed value."""
    return 1.0 - np.searchsorted(sorted_null, observed, side="right") / len(sorted_null)


def perturbation_magnitude(
    table: pd.DataFrame,
    *,
    perturbation_col: str,
    control_label: str | Sequence[str],
    feature_cols: Sequence[str] | None = None,
    null_perturbations: Sequence[str] | None = None,
    max_controls: int = MAX_CONTROLS,
    min_replicates: int = MIN_REPLICATES,
    n_null: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Energy distance of each perturbation's replicates (rows of `table`) from the controls, and its p-value.

    Returns one row per perturbation other than the controls and `null_perturbations`, in the order they
    first appear: perturbation_col, n_replicates, energy_distance, p_value (both NaN below min_replicates).
    """
    if min(max_controls, n_null, min_replicates) < 1:
        raise UserInputError(f"max_controls, n_null and min_replicates must be positive, got {max_controls}, "
                             f"{n_null}, {min_replicates}")
    controls = control_mask(table, perturbation_col, control_label)
    x = table[feature_columns(table, names=feature_cols)].to_numpy(np.float64)
    labels = table[perturbation_col].to_numpy()
    rng = np.random.default_rng(seed)
    control_rows = x[controls][rng.permutation(int(controls.sum()))]
    nulls = set(null_perturbations or ())
    if nulls:
        missing = nulls - set(labels)
        if missing:
            raise UserInputError(f"null perturbation(s) {sorted(missing)[:5]} are not in {perturbation_col!r}")
        reference, pool = control_rows[:max_controls], None
    else:  # half of the controls (at most max_controls) for the reference, the other half for the null
        half = min(max_controls, len(control_rows) // 2)
        reference, pool = control_rows[:half], control_rows[half:]
    if len(reference) < 2:
        raise UserInputError(f"{len(control_rows)} control rows: the magnitude needs at least "
                             f"{2 if nulls else 4} (a reference sample{'' if nulls else ' and a null pool'})")
    spread = mean_distance(reference, reference)

    order = pd.unique(labels[~controls])
    rows_of = pd.Series(np.arange(len(labels))).groupby(labels).indices
    queried = [p for p in order if p not in nulls]
    if not queried:
        raise UserInputError(f"no perturbations to score besides the controls and null perturbations in "
                             f"{perturbation_col!r}")
    counts = np.array([len(rows_of[p]) for p in queried])
    observed = np.array([energy_distance(x[rows_of[p]], reference, spread) if n >= min_replicates else np.nan
                         for p, n in zip(queried, counts)])

    values = np.full(len(queried), np.nan)
    if nulls:  # EFAAR: one null value per null perturbation with enough replicates
        null = np.sort([energy_distance(x[rows_of[p]], reference, spread) for p in sorted(nulls)
                        if len(rows_of[p]) >= min_replicates])
        if len(null) == 0:
            raise UserInputError(f"no null perturbation has {min_replicates} replicates")
        scored = counts >= min_replicates
        values[scored] = p_values(null, observed[scored])
    else:
        for size in np.unique(counts[counts >= min_replicates]):
            if size > len(pool):
                raise UserInputError(f"perturbations with {size} replicates need a null of {size} control rows; "
                                     f"only {len(pool)} are left beside the reference sample (pass "
                                     "null_perturbations or more controls)")
            null = np.sort([energy_distance(pool[rng.choice(len(pool), size, replace=False)], reference, spread)
                            for _ in range(n_null)])
            chosen = counts == size
            values[chosen] = p_values(null, observed[chosen])
    return pd.DataFrame({perturbation_col: queried, "n_replicates": counts, "energy_distance": observed,
                         "p_value": values})
