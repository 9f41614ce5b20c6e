"""Recall of known biological relationships by a map (the EFAAR known-relationship benchmark).

For every source (CORUM, HuMAP, Reactome, SIGNOR, StringDB, or a user file of `entity1,entity2` pairs),
the annotated pairs whose two entities are both in the map are scored by the cosine similarity of their
map vectors. With a threshold pair (lower, upper), a pair counts as recalled when its similarity lies
below the `lower` or above the `upper` percentile of the similarities of all N (N - 1) / 2 pairs of map
entities; recall is the fraction of annotated pairs recalled. The percentile rule is EFAAR's
`compute_recall` exactly: a pair with similarity q is recalled when #{all <= q} / P <= lower or
#{all < q} / P >= upper, P the number of pairs.
"""
from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd

from maefast.errors import UserInputError
from maefast.evaluate.similarity import SimilarityScan, scan_similarities
from maefast.io import read_table

KNOWN_SOURCES = ("CORUM", "HuMAP", "Reactome", "SIGNOR", "StringDB")
DEFAULT_THRESHOLDS = ((0.05, 0.95), (0.1, 0.9))
MIN_ENTITIES = 20  # EFAAR's MIN_REQ_ENT_CNT
SWEEP_THRESHOLDS = tuple((i / 100, round(1 - i / 100, 2)) for i in range(1, 21))  # (0.01, 0.99)..(0.2, 0.8)


@dataclass
class MapScores:
    """Everything one scan of a map yields: the recall table and what the plots draw."""
    recall: pd.DataFrame  # one row per source: source, n_pairs, n_all_pairs, recall_<lower>_<upper>...
    pair_similarities: dict[str, np.ndarray]  # source -> similarities of its annotated pairs in the map
    scan: SimilarityScan  # all-pairs histogram and exact percentile values
    threshold_values: dict[tuple[float, float], tuple[float, float]]  # (lower, upper) -> similarity cut-offs
    pairs: dict[str, np.ndarray] = field(default_factory=dict)  # source -> (M, 2) row positions of its pairs


def recall_column(lower: float, upper: float) -> str:
    return f"recall_{lower}_{upper}"


def annotation_dir() -> Path:
    """The relationship tables shipped with the efaar-benchmarking package (only its data files are read)."""
    try:
        return Path(str(resources.files("efaar_benchmarking").joinpath("benchmark_annotations")))
    except ModuleNotFoundError as error:
        raise FileNotFoundError(
            "the relationship tables come from the efaar-benchmarking package "
            "(python -m pip install --no-deps efaar-benchmarking), or pass a file of entity1,entity2 pairs as a source"
        ) from error


def source_name(source: str | os.PathLike) -> str:
    return source if source in KNOWN_SOURCES else Path(source).stem


def load_relationships(source: str | os.PathLike) -> pd.DataFrame:
    """Unordered, deduplicated pairs (entity1 < entity2, no self-pairs) of a known source or a user file.

    A user file is CSV (or TSV if it ends in .tsv) with header columns `entity1` and `entity2`. Each version of
    a file is read once per process (a benchmark of many maps, blocks or models scores them all against the
    same sources); a file changed since is read again.
    """
    if source in KNOWN_SOURCES:
        path = annotation_dir() / f"{source}.txt"
    elif os.path.exists(source):
        path = Path(source)
    else:
        raise UserInputError(f"unknown relationship source {source!r}: expected one of {', '.join(KNOWN_SOURCES)} "
                             "or the path of a file with columns entity1,entity2")
    version = path.stat()
    return read_relationships(path.resolve(), version.st_mtime_ns, version.st_size).copy()


@functools.lru_cache(maxsize=32)
def read_relationships(path: Path, mtime_ns: int, size: int) -> pd.DataFrame:
    """load_relationships' pairs of the file at `path` as it was at (mtime_ns, size), the cache's key."""
    table = read_table(path, sep="\t" if path.suffix == ".tsv" else ",", dtype=str)
    missing = {"entity1", "entity2"} - set(table.columns)
    if missing:
        raise UserInputError(f"{path}: missing column(s) {sorted(missing)}; expected a header entity1,entity2")
    table = table.dropna(subset=["entity1", "entity2"])
    first, second = table["entity1"].to_numpy(), table["entity2"].to_numpy()
    swap = first > second
    pairs = pd.DataFrame({"entity1": np.where(swap, second, first), "entity2": np.where(swap, first, second)})
    return pairs[pairs["entity1"] != pairs["entity2"]].drop_duplicates(ignore_index=True)


def check_thresholds(thresholds: Sequence[Sequence[float]]) -> list[tuple[float, float]]:
    checked = []
    for pair in thresholds:
        if len(pair) != 2 or not 0 < min(pair) < max(pair) < 1:
            raise UserInputError(f"threshold pair {tuple(pair)} must be two fractions 0 < lower < upper < 1")
        checked.append((float(min(pair)), float(max(pair))))
    return checked


def check_map(features: pd.DataFrame, min_entities: int = MIN_ENTITIES) -> None:
    if not isinstance(features, pd.DataFrame):
        raise TypeError(f"features must be a pandas DataFrame indexed by perturbation, got {type(features).__name__}")
    needed = max(min_entities, 2)
    if len(features) < needed:
        raise UserInputError(f"the map has {len(features)} entities; the benchmark needs at least {needed}")
    duplicated = features.index[features.index.duplicated()].unique()
    if len(duplicated):
        raise UserInputError(f"the map index must name each perturbation once; repeated: {list(duplicated[:5])}")
    non_numeric = [c for c in features.columns if not pd.api.types.is_numeric_dtype(features[c])]
    if non_numeric:
        raise UserInputError(f"map columns must all be numeric features; not numeric: {non_numeric[:5]}")
    if not np.isfinite(features.to_numpy(dtype=np.float64)).all():
        raise UserInputError("the map has NaN or infinite values")


def _threshold_ranks(lower: float, upper: float, n_pairs: int) -> tuple[int, int]:
    """0-based ranks r_lo, r_hi of the sorted similarities s such that, as EFAAR computes ranks in floating
    point, #{s <= q} / P <= lower  <=>  q < s[r_lo]   and   #{s < q} / P >= upper  <=>  q > s[r_hi]."""
    k = int(np.floor(lower * n_pairs))  # largest k with k / P <= lower, corrected for rounding below
    while (k + 1) / n_pairs <= lower:
        k += 1
    while k > 0 and k / n_pairs > lower:
        k -= 1
    m = int(np.ceil(upper * n_pairs))  # smallest m with m / P >= upper
    while m > 1 and (m - 1) / n_pairs >= upper:
        m -= 1
    while m / n_pairs < upper:
        m += 1
    return k, m - 1


def score_map(
    features: pd.DataFrame,
    sources: Sequence[str | os.PathLike] = KNOWN_SOURCES,
    thresholds: Sequence[Sequence[float]] = DEFAULT_THRESHOLDS,
    min_entities: int = MIN_ENTITIES,
    block_rows: int | None = None,
) -> MapScores:
    """Recall table plus the similarities the plots need, from one chunked scan of all pairs."""
    check_map(features, min_entities)
    thresholds = check_thresholds(thresholds)
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    names = [source_name(source) for source in sources]
    if not names or len(set(names)) != len(names):
        raise UserInputError(f"sources must be one or more distinct names; got {names}")
    position = pd.Series(np.arange(len(features)), index=features.index.astype(str))
    per_source = {}
    for name, source in zip(names, sources):
        pairs = load_relationships(source)
        pairs = pairs[pairs["entity1"].isin(position.index) & pairs["entity2"].isin(position.index)]
        first, second = position[pairs["entity1"]].to_numpy(), position[pairs["entity2"]].to_numpy()
        per_source[name] = np.stack([np.minimum(first, second), np.maximum(first, second)], 1)

    n = len(features)
    n_pairs = n * (n - 1) // 2
    ranks = {pair: _threshold_ranks(*pair, n_pairs) for pair in thresholds}
    all_pairs = np.concatenate([np.zeros((0, 2), np.int64), *per_source.values()])
    scan = scan_similarities(features.to_numpy(np.float64), all_pairs,
                             [r for pair in ranks.values() for r in pair], block_rows)

    rows, similarities, offset = [], {}, 0
    for name, pairs in per_source.items():
        values = scan.pair_similarities[offset:offset + len(pairs)]
        offset += len(pairs)
        similarities[name] = values
        row = {"source": name, "n_pairs": len(pairs), "n_all_pairs": n_pairs}
        for (lower, upper), (rank_lo, rank_hi) in ranks.items():
            below = values < scan.order_statistics[rank_lo]
            above = values > scan.order_statistics[rank_hi]
            row[recall_column(lower, upper)] = float(np.mean(below | above)) if len(values) else float("nan")
        rows.append(row)
    cut_offs = {pair: (scan.order_statistics[lo], scan.order_statistics[hi]) for pair, (lo, hi) in ranks.items()}
    return MapScores(pd.DataFrame(rows), similarities, scan, cut_offs, per_source)


def relationship_recall(
    features: pd.DataFrame,
    sources: Sequence[str | os.PathLike] = KNOWN_SOURCES,
    thresholds: Sequence[Sequence[float]] = DEFAULT_THRESHOLDS,
    min_entities: int = MIN_ENTITIES,
    block_rows: int | None = None,
) -> pd.DataFrame:
    """Recall of known relationships by a map: one row per source.

    features: DataFrame indexed by perturbation name (unique), numeric feature columns.
    sources: names from KNOWN_SOURCES or paths of entity1,entity2 files (named by their file stem).
    thresholds: (lower, upper) percentile fractions, e.g. (0.05, 0.95).
    Returns columns source, n_pairs (annotated pairs with both entities in the map), n_all_pairs
    (N (N - 1) / 2) and recall_<lower>_<upper> per threshold pair (NaN when n_pairs is 0).
    """
    return score_map(features, sources, thresholds, min_entities, block_rows).recall
