"""The drug-target (compound-gene) benchmark of RxRx3-core (Kraus et al. 2025, arXiv 2503.20158): does a
compound's profile resemble the knockout of the genes it targets?

The map holds gene knockouts and compounds at several concentrations (`compound_gene_maps` builds both from
one screen's rows, normalized together). Every compound-gene pair is scored by the cosine similarity of the
compound's vector at a concentration and the knockout's vector: by its absolute value (direction "both",
the default: an inhibitor mimics the knockout, an activator may oppose it) or by its signed value
("positive"). The known pairs (a table with columns `compound` and `gene`) are ranked among all pairs of
the compounds that have at least one known target among the map's genes, per concentration and at the
best concentration (each pair's highest score over the concentrations, chosen without the labels):

- AUROC: the probability that a known pair outscores an unannotated one (ties count half; 0.5 is chance),
  as scikit-learn's roc_auc_score;
- average precision over the ranking, as scikit-learn's average_precision_score (chance: the prevalence);
- recall at the top fractions: the share of known pairs that fewer than that fraction of all pairs outscore.

Each comes with a percentile-bootstrap interval that resamples compounds (with all their pairs), since the
pairs of one compound share its profile.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from maefast.errors import UserInputError
from maefast.evaluate.normalize import AGGREGATIONS, control_mask, feature_columns
from maefast.evaluate.similarity import unit_rows
from maefast.io import read_table

PAIR_COLUMNS = ("compound", "gene")
DIRECTIONS = ("both", "positive")
TOP_FRACTIONS = (0.01, 0.05, 0.1)
BEST = "best"
BOOTSTRAP_CHUNK = 16  # resamples scored at once (memory: chunk x pairs floats)


def load_compound_targets(path: str | os.PathLike) -> pd.DataFrame:
    """Known compound-target pairs: a CSV (TSV when it ends in .tsv) with columns `compound` and `gene`, one row
    per pair (more columns are ignored). Returns the distinct pairs as strings."""
    table = read_table(path, sep="\t" if str(path).endswith(".tsv") else ",", dtype=str)
    missing = [c for c in PAIR_COLUMNS if c not in table.columns]
    if missing:
        raise UserInputError(f"{path}: missing column(s) {missing}; expected a header compound,gene")
    return table[list(PAIR_COLUMNS)].dropna().drop_duplicates(ignore_index=True)


def compound_gene_maps(table: pd.DataFrame, *, perturbation_col: str, concentration_col: str,
                       control_label: str | Sequence[str], feature_cols: Sequence[str] | None = None,
                       aggregate: str = "mean") -> tuple[pd.DataFrame, pd.DataFrame]:
    """(gene map indexed by gene, compound map indexed by (compound, concentration)) from replicate rows that
    were normalized together (`normalize_embeddings`: center-scale on the controls per batch, PCA, TVN).

    Rows with a concentration are compound treatments, named by `perturbation_col`; rows without one (and not
    controls) are gene knockouts. Aggregated per gene and per (compound, concentration)."""
    if aggregate not in AGGREGATIONS:
        raise UserInputError(f"unknown aggregation {aggregate!r}; expected one of {AGGREGATIONS}")
    if concentration_col not in table.columns:
        raise UserInputError(f"unknown concentration column {concentration_col!r}; columns are "
                             f"{list(table.columns)[:10]}")
    features = feature_columns(table, feature_cols)
    controls = control_mask(table, perturbation_col, control_label)
    concentration = pd.to_numeric(table[concentration_col], errors="coerce")
    compounds = ~controls & concentration.notna().to_numpy()
    genes = ~controls & ~compounds
    if not compounds.any() or not genes.any():
        raise UserInputError(f"the drug-target benchmark needs compound rows (with a {concentration_col!r}) and gene "
                             f"rows (without one); found {int(compounds.sum())} and {int(genes.sum())}")
    gene_rows = table[genes]
    gene_map = getattr(gene_rows[features].groupby(gene_rows[perturbation_col].astype(str), sort=True), aggregate)()
    compound_rows = table[compounds]
    keys = [compound_rows[perturbation_col].astype(str), concentration[compounds]]
    compound_map = getattr(compound_rows[features].groupby(keys, sort=True), aggregate)()
    compound_map.index.names = ["compound", "concentration"]
    return gene_map, compound_map


def ranking_metrics(scores: np.ndarray, known: np.ndarray, weights: np.ndarray,
                    top_fractions: Sequence[float]) -> dict[str, np.ndarray]:
    """AUROC, average precision and recall at each top fraction of pair `scores` (P,) with labels `known` (P,),
    for each row of pair `weights` (R, P) (1 everywhere: the plain metrics; bootstrap counts: a resample)."""
    order = np.argsort(-scores, kind="stable")
    scores, known, weights = scores[order], known[order], weights[:, order]
    # last position of each run of equal scores: ties share one threshold
    group_end = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    group_of = np.repeat(np.arange(len(group_end)), np.diff(np.r_[-1, group_end]))
    positive, negative = weights * known, weights * ~known
    positive_total, negative_total = positive.sum(1), negative.sum(1)
    total = weights.sum(1)
    cumulative = np.cumsum(weights, axis=1)[:, group_end]               # pairs at or above each threshold
    cumulative_positive = np.cumsum(positive, axis=1)[:, group_end]
    cumulative_negative = np.cumsum(negative, axis=1)[:, group_end]
    above = np.c_[np.zeros(len(weights)), cumulative[:, :-1]][:, group_of]          # strictly higher scores
    negative_above = np.c_[np.zeros(len(weights)), cumulative_negative[:, :-1]][:, group_of]
    negative_tied = (cumulative_negative[:, group_of] - negative_above)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (positive * (negative_total[:, None] - negative_above - 0.5 * negative_tied)).sum(1) / (
            positive_total * negative_total)
        precision = cumulative_positive / cumulative
        gained = np.diff(np.c_[np.zeros(len(weights)), cumulative_positive], axis=1)
        average_precision = (gained * precision).sum(1) / positive_total
        metrics = {"auroc": auroc, "average_precision": average_precision}
        for fraction in top_fractions:
            recalled = above / total[:, None] < fraction
            metrics[f"recall_top_{fraction}"] = (positive * recalled).sum(1) / positive_total
    return metrics


def drug_target_benchmark(gene_map: pd.DataFrame, compound_map: pd.DataFrame, pairs: pd.DataFrame, *,
                          direction: str = "both", top_fractions: Sequence[float] = TOP_FRACTIONS,
                          level: float = 0.95, n_bootstrap: int = 1000, seed: int = 0) -> pd.DataFrame:
    """One row per concentration (ascending) and one for the best concentration: concentration, n_compounds,
    n_genes, n_known_pairs, n_pairs, prevalence, then each metric with its *_low / *_high interval bounds.

    gene_map: indexed by gene; compound_map: indexed by (compound, concentration), the same feature columns;
    pairs: columns compound and gene (e.g. from load_compound_targets)."""
    if direction not in DIRECTIONS:
        raise UserInputError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not 0 < level < 1 or n_bootstrap < 1:
        raise UserInputError(f"level must lie in (0, 1) and n_bootstrap be positive, got {level}, {n_bootstrap}")
    if not all(0 < f < 1 for f in top_fractions):
        raise UserInputError(f"top fractions must lie in (0, 1), got {list(top_fractions)}")
    if compound_map.index.nlevels != 2 or list(gene_map.columns) != list(compound_map.columns):
        raise UserInputError("compound_map must be indexed by (compound, concentration) and share the gene map's "
                             "feature columns (build both with compound_gene_maps)")
    genes = gene_map.index.astype(str)
    compounds_in_map = set(compound_map.index.get_level_values(0).astype(str))
    pairs = pairs[pairs["gene"].isin(genes) & pairs["compound"].isin(compounds_in_map)]
    compounds = sorted(pairs["compound"].unique())
    if not compounds:
        raise UserInputError("no known pair has both its compound and its gene in the map")
    gene_units = unit_rows(gene_map.to_numpy(np.float64))
    known = np.zeros((len(compounds), len(genes)), bool)
    known[[compounds.index(c) for c in pairs["compound"]], genes.get_indexer(pairs["gene"])] = True

    per_concentration = {}
    for concentration, rows in compound_map.groupby(level=1, sort=True):
        rows = rows.droplevel(1)
        rows = rows[rows.index.astype(str).isin(compounds)]
        if len(rows):
            similarity = unit_rows(rows.to_numpy(np.float64)) @ gene_units.T
            score = np.abs(similarity) if direction == "both" else similarity
            per_concentration[concentration] = pd.DataFrame(score, index=rows.index.astype(str))
    best = pd.concat(per_concentration.values()).groupby(level=0).max()
    rng = np.random.default_rng(seed)
    results = []
    for name, scores in [*per_concentration.items(), (BEST, best)]:
        present = [compounds.index(c) for c in scores.index]
        results.append({"concentration": name, **score_pairs(scores.to_numpy(), known[present], top_fractions,
                                                               level, n_bootstrap, rng)})
    return pd.DataFrame(results)


def score_pairs(scores: np.ndarray, known: np.ndarray, top_fractions, level: float, n_bootstrap: int,
                rng: np.random.Generator) -> dict:
    """The metrics of a (compounds, genes) score matrix and their compound-bootstrap intervals."""
    n_compounds, n_genes = scores.shape
    flat_scores, flat_known = scores.ravel(), known.ravel()
    observed = ranking_metrics(flat_scores, flat_known, np.ones((1, flat_scores.size)), top_fractions)
    draws = {name: [] for name in observed}
    for start in range(0, n_bootstrap, BOOTSTRAP_CHUNK):
        count = min(BOOTSTRAP_CHUNK, n_bootstrap - start)
        compound_weights = rng.multinomial(n_compounds, np.full(n_compounds, 1 / n_compounds), size=count)
        metrics = ranking_metrics(flat_scores, flat_known, np.repeat(compound_weights, n_genes, axis=1).astype(float),
                                  top_fractions)
        for name, values in metrics.items():
            draws[name].append(values)
    row = {"n_compounds": n_compounds, "n_genes": n_genes, "n_known_pairs": int(known.sum()),
           "n_pairs": int(known.size), "prevalence": float(known.mean())}
    quantiles = [(1 - level) / 2, (1 + level) / 2]
    for name, value in observed.items():
        low, high = np.nanquantile(np.concatenate(draws[name]), quantiles)
        row.update({name: float(value[0]), f"{name}_low": float(low), f"{name}_high": float(high)})
    return row
