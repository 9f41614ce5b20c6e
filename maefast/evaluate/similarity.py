"""Chunked scan of all pairwise cosine similarities of a map, without holding the N x N matrix.

One scan yields, for the N (N - 1) / 2 unordered pairs of rows:

- a fine histogram of every similarity (`ALL_PAIRS_BINS` equal bins over [-1, 1]);
- the similarities of a given list of pairs (the annotated pairs of the benchmark sources);
- exact order statistics (the value at given 0-based ranks of the sorted similarities).

Order statistics are exact by two-pass selection: the first pass histograms every value and locates the
bin holding each wanted rank; the second pass recomputes the same blocks with the same arithmetic, keeps
only the values that fall in those few bins, and sorts them. The second pass checks that it collected
exactly as many values per bin as the first pass counted, so a non-deterministic matrix product would
raise instead of giving a wrong answer. Memory is one block of `block_rows` x N similarities.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from maefast.errors import UserInputError

ALL_PAIRS_BINS = 1 << 20  # bin width 2 / 2**20 ~ 1.9e-6: the second pass keeps a few thousand values
DEFAULT_BLOCK_ELEMENTS = 1 << 23  # similarities held at once (64 MiB in float64)


@dataclass
class SimilarityScan:
    """What one scan of all pairs returns."""
    n_pairs: int  # N (N - 1) / 2
    histogram: np.ndarray  # (ALL_PAIRS_BINS,) int64 counts of all pairs over [-1, 1]
    pair_similarities: np.ndarray  # (M,) float64, in the order of the requested pairs
    order_statistics: dict[int, float]  # 0-based rank in the ascending sort of all pairs -> value


def unit_rows(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm in float64 (cosine similarity is then a dot product)."""
    matrix = np.asarray(features, dtype=np.float64)
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    if np.any(norms == 0):
        raise UserInputError(f"{int(np.sum(norms == 0))} map rows are all zeros: cosine similarity is undefined")
    return matrix / norms


def _blocks(n: int, block_rows: int) -> Iterator[tuple[int, int]]:
    for start in range(0, n - 1, block_rows):
        yield start, min(start + block_rows, n)


def _upper_values(unit: np.ndarray, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
    """Similarities of rows [start, stop) with rows j > i, as a flat array, plus the (rows, n - start) block.

    The block covers columns start..n-1; its leading square is triangular, the rest is entirely above the
    diagonal, so the flat array concatenates the strict upper triangle of the square and the rectangle.
    """
    block = unit[start:stop] @ unit[start:].T
    rows = stop - start
    square = block[:, :rows][np.triu_indices(rows, k=1)]
    return np.concatenate([square, block[:, rows:].ravel()]), block


def _bin_index(values: np.ndarray) -> np.ndarray:
    index = ((values + 1.0) * (ALL_PAIRS_BINS / 2)).astype(np.int64)
    return np.clip(index, 0, ALL_PAIRS_BINS - 1, out=index)


def block_rows_for(n: int, block_elements: int = DEFAULT_BLOCK_ELEMENTS) -> int:
    return max(1, min(n, block_elements // max(n, 1)))


def scan_similarities(
    features: np.ndarray,
    pairs: np.ndarray,
    ranks: np.ndarray | list[int] = (),
    block_rows: int | None = None,
) -> SimilarityScan:
    """Scans all pairwise cosine similarities of the rows of `features` (N, D).

    pairs: (M, 2) integer row indices with pairs[:, 0] < pairs[:, 1].
    ranks: 0-based ranks into the ascending sort of the N (N - 1) / 2 similarities to return exactly.
    block_rows: rows per block (default: about `DEFAULT_BLOCK_ELEMENTS` similarities per block);
        block_rows >= N is the dense computation in one block.
    """
    unit = unit_rows(features)
    n = unit.shape[0]
    n_pairs = n * (n - 1) // 2
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    if len(pairs) and (np.any(pairs[:, 0] >= pairs[:, 1]) or pairs.min() < 0 or pairs.max() >= n):
        raise ValueError(f"pairs must satisfy 0 <= first < second < {n}")
    ranks = np.unique(np.asarray(ranks, dtype=np.int64))
    if len(ranks) and (ranks[0] < 0 or ranks[-1] >= n_pairs):
        raise ValueError(f"ranks must lie in [0, {n_pairs}), got {ranks[0]}..{ranks[-1]}")
    block_rows = block_rows or block_rows_for(n)

    order = np.argsort(pairs[:, 0], kind="stable")
    first_sorted = pairs[order, 0]
    pair_similarities = np.empty(len(pairs), dtype=np.float64)
    histogram = np.zeros(ALL_PAIRS_BINS, dtype=np.int64)
    for start, stop in _blocks(n, block_rows):
        values, block = _upper_values(unit, start, stop)
        histogram += np.bincount(_bin_index(values), minlength=ALL_PAIRS_BINS)
        lo, hi = np.searchsorted(first_sorted, [start, stop])
        chosen = order[lo:hi]
        pair_similarities[chosen] = block[pairs[chosen, 0] - start, pairs[chosen, 1] - start]

    return SimilarityScan(n_pairs, histogram, pair_similarities, _select(unit, block_rows, histogram, ranks))


def _select(unit: np.ndarray, block_rows: int, histogram: np.ndarray, ranks: np.ndarray) -> dict[int, float]:
    """Second pass: exact values at `ranks`, from the histogram bins that hold them."""
    if len(ranks) == 0:
        return {}
    cumulative = np.cumsum(histogram)
    rank_bins = np.searchsorted(cumulative, ranks, side="right")  # first bin whose cumulative count > rank
    wanted_bins = np.unique(rank_bins)
    wanted = np.zeros(ALL_PAIRS_BINS, dtype=bool)
    wanted[wanted_bins] = True
    kept_values, kept_bins = [], []
    for start, stop in _blocks(unit.shape[0], block_rows):
        values, _ = _upper_values(unit, start, stop)
        index = _bin_index(values)
        keep = wanted[index]
        kept_values.append(values[keep])
        kept_bins.append(index[keep])
    kept_values, kept_bins = np.concatenate(kept_values), np.concatenate(kept_bins)
    by_bin = np.lexsort((kept_values, kept_bins))  # sorted by bin, then by value
    kept_values, kept_bins = kept_values[by_bin], kept_bins[by_bin]
    if not np.array_equal(np.bincount(kept_bins, minlength=ALL_PAIRS_BINS)[wanted_bins], histogram[wanted_bins]):
        raise RuntimeError("similarities differed between the two passes (non-deterministic matrix product)")
    bin_start_in_kept = np.searchsorted(kept_bins, rank_bins, side="left")
    bin_start_rank = cumulative[rank_bins] - histogram[rank_bins]
    positions = bin_start_in_kept + (ranks - bin_start_rank)
    return {int(rank): float(kept_values[pos]) for rank, pos in zip(ranks, positions)}


def coarse_histogram(histogram: np.ndarray, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """Merges the fine all-pairs histogram into `bins` equal bins (bins must divide ALL_PAIRS_BINS).

    Returns (counts, edges) like numpy.histogram over [-1, 1].
    """
    if ALL_PAIRS_BINS % bins:
        raise UserInputError(f"bins must divide {ALL_PAIRS_BINS}, got {bins}")
    counts = histogram.reshape(bins, -1).sum(axis=1)
    return counts, np.linspace(-1.0, 1.0, bins + 1)
