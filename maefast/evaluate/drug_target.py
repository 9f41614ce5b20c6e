"""The drug-target (compound-gene) benchmark of RxRx3-core (Kraus et al. 2025, arXiv 2503.20158, as
EFAAR_benchmarking's `compound_gene_benchmark` computes it): does a compound's profile resemble the knockout
of the genes it acts on?

The map holds gene knockouts and compounds at several concentrations (`compound_gene_maps` builds both from
one screen's rows, normalized together). A compound-gene pair is scored by the absolute cosine similarity of
the compound's vector at a concentration and the knockout's (direction "both", as EFAAR: an inhibitor
mimics the knockout, an activator may oppose it) or by the signed cosine ("positive").

Known pairs come from a table with columns `compound` and `gene`, and optionally `activity_nM` (EFAAR's
`nM_value`; RxRx3-core's compound_gene_interactions.csv with columns treatment, gene_symbol, nM_value is read
as well): a pair is active when its activity is at most `activity_threshold` (1,000 nM; every listed pair
without an activity is active), and a pair between that and `inactivity_threshold` (10,000 nM) is neither
positive nor negative. For each compound with an active gene in the map, its candidates are its active
genes and max(2 x actives, 20) negatives drawn at random from the map's other genes (EFAAR draws them from
the genes of its interaction table); the draw is repeated `repeats` times and the metrics averaged.

Per concentration, and at the best concentration (each candidate pair's highest score over the
concentrations, EFAAR's "max"):
- auroc, average_precision: over the candidate pairs of all compounds pooled (EFAAR's micro average;
  chance: 0.5 and the share of positives, `prevalence`);
- macro_auroc, median_average_precision: the mean AUROC and median average precision of the compounds
  (EFAAR's macro average and ap_quantile_0.5).
Each has a percentile-bootstrap interval that resamples compounds, since the pairs of one compound share
its profile.
"""
from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from maefast.errors import UserInputError
from maefast.evaluate.normalize import AGGREGATIONS, control_mask
from maefast.evaluate.similarity import unit_rows
from maefast.io import read_table
from maefast.tables import feature_columns

PAIR_COLUMNS = ("compound", "gene")
ACTIVITY = "activity_nM"
EFAAR_COLUMNS = {"treatment": "compound", "gene_symbol": "gene", "nM_value": ACTIVITY}
ACTIVITY_THRESHOLD, INACTIVITY_THRESHOLD = 1000.0, 10000.0  # nM, EFAAR's defaults
MIN_NEGATIVES = 20
DIRECTIONS = ("both", "positive")
METRICS = ("auroc", "average_precision", "macro_auroc", "median_average_precision")
BEST = "best"
BOOTSTRAP_CHUNK = 16  # resamples scored at once (memory: chunk x pairs floats)


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
    features = feature_columns(table, names=feature_cols)
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


def ranking_metrics(scores: np.ndarray, known: np.ndarray, weights: np.ndarray) -> dict[str, np.ndarray]:
    """AUROC and average precision (ties handled as scikit-learn does) of pair `scores` (P,) with labels
    `known` (P,), for each row of pair `weights` (R, P) (ones: the plain metrics; bootstrap counts: a resample)."""
    order = np.argsort(-scores, kind="stable")
    scores, known, weights = scores[order], known[order], weights[:, order]
    # last position of each run of equal scores: ties share one threshold
    group_end = np.flatnonzero(np.r_[scores[1:] != scores[:-1], True])
    group_of = np.repeat(np.arange(len(group_end)), np.diff(np.r_[-1, group_end]))
    positive, negative = weights * known, weights * ~known
    positive_total, negative_total = positive.sum(1), negative.sum(1)
    cumulative = np.cumsum(weights, axis=1)[:, group_end]  # pairs at or above each threshold
    cumulative_positive = np.cumsum(positive, axis=1)[:, group_end]
    cumulative_negative = np.cumsum(negative, axis=1)[:, group_end]
    negative_above = np.c_[np.zeros(len(weights)), cumulative_negative[:, :-1]][:, group_of]
    negative_tied = (cumulative_negative[:, group_of] - negative_above)
    with np.errstate(invalid="ignore", divide="ignore"):
        auroc = (positive * (negative_total[:, None] - negative_above - 0.5 * negative_tied)).sum(1) / (
            positive_total * negative_total)
        precision = np.where(cumulative > 0, cumulative_positive / np.maximum(cumulative, 1e-300), 0.0)
        gained = np.diff(np.c_[np.zeros(len(weights)), cumulative_positive], axis=1)
        average_precision = (gained * precision).sum(1) / positive_total
    return {"auroc": auroc, "average_precision": average_precision}


def load_compound_targets(path: str | os.PathLike) -> pd.DataFrame:
    """Known compound-gene pairs: a CSV (TSV when it ends in .tsv) with columns `compound` and `gene` and
    optionally `activity_nM` (EFAAR's treatment, gene_symbol, nM_value are read as these). Returns the distinct
    rows of those columns (compound and gene as strings)."""
    table = read_table(path, sep="\t" if str(path).endswith(".tsv") else ",")
    table = table.rename(columns={k: v for k, v in EFAAR_COLUMNS.items() if v not in table.columns})
    missing = [c for c in PAIR_COLUMNS if c not in table.columns]
    if missing:
        raise UserInputError(f"{path}: missing column(s) {missing}; expected a header compound,gene[,activity_nM]")
    columns = list(PAIR_COLUMNS) + ([ACTIVITY] if ACTIVITY in table.columns else [])
    table = table[columns].dropna(subset=list(PAIR_COLUMNS)).astype({c: str for c in PAIR_COLUMNS})
    return table.drop_duplicates(ignore_index=True)


def candidates(pairs: pd.DataFrame, genes: pd.Index, compounds: list[str], rng: np.random.Generator,
               activity_threshold: float, inactivity_threshold: float, negatives_per_active: int,
               min_negatives: int) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """compound -> (gene positions of its candidates, which are active): its active genes in the map and
    max(negatives_per_active x actives, min_negatives) random other genes, none in its grey zone."""
    activity = pairs[ACTIVITY] if ACTIVITY in pairs.columns else pd.Series(0.0, index=pairs.index)
    activity = pd.to_numeric(activity, errors="coerce").fillna(0.0)
    result = {}
    for compound in compounds:
        mine = pairs["compound"] == compound
        active = np.unique(genes.get_indexer(pairs.loc[mine & (activity <= activity_threshold), "gene"]))
        active = active[active >= 0]
        grey = genes.get_indexer(pairs.loc[mine & (activity > activity_threshold)
                                           & (activity <= inactivity_threshold), "gene"])
        eligible = np.setdiff1d(np.arange(len(genes)), np.concatenate([active, grey]))
        count = max(negatives_per_active * len(active), min_negatives)
        if len(active) == 0 or len(eligible) < count:
            continue
        chosen = np.concatenate([active, rng.choice(eligible, count, replace=False)])
        result[compound] = (chosen, np.arange(len(chosen)) < len(active))
    return result


def drug_target_benchmark(gene_map: pd.DataFrame, compound_map: pd.DataFrame, pairs: pd.DataFrame, *,
                          direction: str = "both", activity_threshold: float = ACTIVITY_THRESHOLD,
                          inactivity_threshold: float = INACTIVITY_THRESHOLD, negatives_per_active: int = 2,
                          min_negatives: int = MIN_NEGATIVES, repeats: int = 10, level: float = 0.95,
                          n_bootstrap: int = 500, seed: int = 0) -> pd.DataFrame:
    """One row per concentration (ascending) and one for the best: concentration, n_compounds, n_genes,
    n_active_pairs, n_candidate_pairs, prevalence, then auroc, average_precision, macro_auroc and
    median_average_precision, each with its *_low / *_high interval bounds (see the module docstring).

    gene_map: indexed by gene; compound_map: indexed by (compound, concentration), the same feature columns;
    pairs: load_compound_targets' table."""
    if direction not in DIRECTIONS:
        raise UserInputError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if not 0 < level < 1 or min(n_bootstrap, repeats, negatives_per_active) < 1 or min_negatives < 0:
        raise UserInputError("need 0 < level < 1, n_bootstrap, repeats and negatives_per_active >= 1, "
                             f"min_negatives >= 0; got {level}, {n_bootstrap}, {repeats}, {negatives_per_active}, "
                             f"{min_negatives}")
    if compound_map.index.nlevels != 2 or list(gene_map.columns) != list(compound_map.columns):
        raise UserInputError("compound_map must be indexed by (compound, concentration) and share the gene map's "
                             "feature columns (build both with compound_gene_maps)")
    genes = pd.Index(gene_map.index.astype(str))
    in_map = set(compound_map.index.get_level_values(0).astype(str))
    compounds = sorted(set(pairs["compound"]) & in_map)
    gene_units = unit_rows(gene_map.to_numpy(np.float64))
    scores = {}  # concentration -> DataFrame (compounds at it, genes)
    for concentration, rows in compound_map.groupby(level=1, sort=True):
        rows = rows.droplevel(1)
        rows = rows[rows.index.astype(str).isin(compounds)]
        if len(rows):
            similarity = unit_rows(rows.to_numpy(np.float64)) @ gene_units.T
            scores[concentration] = pd.DataFrame(np.abs(similarity) if direction == "both" else similarity,
                                                 index=rows.index.astype(str))
    if scores:
        scores[BEST] = pd.concat(scores.values()).groupby(level=0).max()
    draws = [candidates(pairs, genes, compounds, np.random.default_rng([seed, r]), activity_threshold,
                        inactivity_threshold, negatives_per_active, min_negatives) for r in range(repeats)]
    if not scores or not draws[0]:
        raise UserInputError("no compound has an active gene in the map (and enough other genes for its negatives): "
                             f"{len(compounds)} of the pairs' compounds are in the map")
    rng = np.random.default_rng([seed, repeats])
    rows = []
    for name, table in scores.items():
        present = [c for c in draws[0] if c in table.index]
        rows.append({"concentration": name, **score_candidates(table, present, draws, len(genes), level,
                                                              n_bootstrap, rng)})
    return pd.DataFrame(rows)


def score_candidates(scores: pd.DataFrame, compounds: list[str], draws: list[dict], n_genes: int, level: float,
                     n_bootstrap: int, rng: np.random.Generator) -> dict:
    """The metrics of one concentration, averaged over the candidate draws, with compound-bootstrap intervals."""
    weights = np.vstack([np.ones(len(compounds)), rng.multinomial(len(compounds), np.full(len(compounds),
                                                                                     1 / len(compounds)),
                                                                  size=n_bootstrap)]).astype(float)
    totals = None
    for draw in draws:
        values = {name: np.zeros(len(weights)) for name in METRICS}
        per_compound = [(scores.loc[c].to_numpy()[draw[c][0]], draw[c][1]) for c in compounds]
        flat_scores = np.concatenate([s for s, _ in per_compound])
        flat_known = np.concatenate([k for _, k in per_compound])
        sizes = [len(s) for s, _ in per_compound]
        for start in range(0, len(weights), BOOTSTRAP_CHUNK):
            chunk = weights[start:start + BOOTSTRAP_CHUNK]
            pooled = ranking_metrics(flat_scores, flat_known, np.repeat(chunk, sizes, axis=1))
            values["auroc"][start:start + len(chunk)] = pooled["auroc"]
            values["average_precision"][start:start + len(chunk)] = pooled["average_precision"]
        each = [ranking_metrics(s, k, np.ones((1, len(s)))) for s, k in per_compound]
        auroc = np.array([m["auroc"][0] for m in each])
        precision = np.array([m["average_precision"][0] for m in each])
        values["macro_auroc"] = weights @ auroc / weights.sum(1)
        values["median_average_precision"] = np.array([weighted_median(precision, w) for w in weights])
        totals = values if totals is None else {k: totals[k] + values[k] for k in totals}
    row = {"n_compounds": len(compounds), "n_genes": n_genes,
           "n_active_pairs": int(sum(draws[0][c][1].sum() for c in compounds)),
           "n_candidate_pairs": int(sum(len(draws[0][c][0]) for c in compounds))}
    row["prevalence"] = row["n_active_pairs"] / row["n_candidate_pairs"]
    quantiles = [(1 - level) / 2, (1 + level) / 2]
    for name in METRICS:
        mean = totals[name] / len(draws)
        low, high = np.nanquantile(mean[1:], quantiles)
        row.update({name: float(mean[0]), f"{name}_low": float(low), f"{name}_high": float(high)})
    return row


def weighted_median(values: np.ndarray, weights: np.ndarray) -> float:
    """The median of `values` repeated `weights` (integer) times: numpy's median of the repeated values."""
    return float(np.median(np.repeat(values, weights.astype(np.int64))))
