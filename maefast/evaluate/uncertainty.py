"""How far a recall can be trusted: an interval over the annotated pairs and a chance level by permutation.

A recall is a fraction of a source's annotated pairs, so how much it says depends on how many pairs it
rests on: 7 pairs of a small map against 100,000 of a genome-wide one.

- `recall_intervals`: the percentile-bootstrap interval over a source's annotated pairs. Resampling the
  n pairs with replacement, with k of them recalled, gives Binomial(n, k / n) / n recalled; its quantiles
  are taken exactly (no resampling noise). The all-pairs cut-offs stay fixed: they rest on all
  N (N - 1) / 2 pairs of the map, not on the annotations. Pairs that share an entity are not independent
  (the members of one complex are recalled together or not at all), so the interval understates the
  uncertainty, and it has zero width when no pair or every pair is recalled.
- `permutation_null`: recall of the same annotations placed on shuffled entity labels. The map and its
  all-pairs cut-offs are unchanged; only which rows the annotated pairs join is random. This keeps the
  annotation graph's structure (entities in several pairs), so it is the fair test of "better than a map
  unrelated to the annotations": the p-value is the fraction of shuffles whose recall is at least the
  observed one.
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from maefast.errors import UserInputError
from maefast.evaluate.relationships import MapScores
from maefast.evaluate.similarity import unit_rows


def _cut_offs(scores: MapScores, thresholds: tuple[float, float]) -> tuple[float, float]:
    key = (float(thresholds[0]), float(thresholds[1]))
    if key not in scores.threshold_values:
        raise UserInputError(f"thresholds {key} were not scored; scored: {list(scores.threshold_values)}")
    return scores.threshold_values[key]


def recalled(similarities: np.ndarray, cut_offs: tuple[float, float]) -> np.ndarray:
    """Which similarities lie beyond the all-pairs cut-offs (below the lower or above the upper one)."""
    return (similarities < cut_offs[0]) | (similarities > cut_offs[1])


def recall_intervals(scores: MapScores, thresholds: tuple[float, float] = (0.05, 0.95),
                     level: float = 0.95) -> pd.DataFrame:
    """Per source: n_pairs, recall and its bootstrap interval (recall_low, recall_high) at `level`."""
    if not 0 < level < 1:
        raise UserInputError(f"level must lie in (0, 1), got {level}")
    cut_offs = _cut_offs(scores, thresholds)
    rows = []
    for source, values in scores.pair_similarities.items():
        n = len(values)
        if n == 0:
            rows.append(dict(source=source, n_pairs=0, recall=np.nan, recall_low=np.nan, recall_high=np.nan))
            continue
        fraction = float(np.mean(recalled(values, cut_offs)))
        low, high = stats.binom.ppf([(1 - level) / 2, (1 + level) / 2], n, fraction) / n
        rows.append(dict(source=source, n_pairs=n, recall=fraction, recall_low=low, recall_high=high))
    return pd.DataFrame(rows)


def permutation_null(features: pd.DataFrame, scores: MapScores, thresholds: tuple[float, float] = (0.05, 0.95),
                     permutations: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Per source, the recall of its annotated pairs on `permutations` random relabelings of the map's rows.

    `scores` must come from `score_map(features, ...)` (it holds the pairs' row positions and the cut-offs).
    Costs permutations x pairs x features multiply-adds.
    """
    if permutations < 1:
        raise UserInputError(f"permutations must be at least 1, got {permutations}")
    if not scores.pairs:
        raise UserInputError("these scores hold no pair positions; compute them with score_map")
    cut_offs = _cut_offs(scores, thresholds)
    unit = unit_rows(features.to_numpy(np.float64))
    rng = np.random.default_rng(seed)
    null = {source: np.empty(permutations) for source in scores.pairs}
    for k in range(permutations):
        order = rng.permutation(len(unit))
        for source, pairs in scores.pairs.items():
            if len(pairs) == 0:
                null[source][k] = np.nan
                continue
            first, second = unit[order[pairs[:, 0]]], unit[order[pairs[:, 1]]]
            null[source][k] = np.mean(recalled(np.einsum("ij,ij->i", first, second), cut_offs))
    return null


def recall_summary(features: pd.DataFrame, scores: MapScores, thresholds: tuple[float, float] = (0.05, 0.95),
                   level: float = 0.95, permutations: int = 1000, seed: int = 0) -> pd.DataFrame:
    """`recall_intervals` plus, from `permutation_null`, the chance level's upper quantile at `level`
    (null_high) and the p-values of the observed recall, one-sided each way, counting the observed map as one of
    the shuffles: p_value (shuffles at least as high: is it above chance?) and p_below (shuffles at most as high:
    is it below chance, i.e. does the map keep known partners apart?)."""
    table = recall_intervals(scores, thresholds, level)
    null = permutation_null(features, scores, thresholds, permutations, seed)
    null_high, p_values, p_below = [], [], []
    for source, observed in zip(table["source"], table["recall"]):
        values = null[source]
        if np.isnan(observed):
            null_high.append(np.nan)
            p_values.append(np.nan)
            p_below.append(np.nan)
            continue
        null_high.append(float(np.quantile(values, level)))
        p_values.append(float((1 + np.sum(values >= observed - 1e-12)) / (1 + len(values))))
        p_below.append(float((1 + np.sum(values <= observed + 1e-12)) / (1 + len(values))))
    return table.assign(null_high=null_high, p_value=p_values, p_below=p_below)
