"""Known clusters of genes in a map: are a cluster's members more alike than they are like the rest?
(EFAAR's `cluster_benchmark`.)

For each cluster (a CORUM complex, a GO term or a user's gene set) with at least `min_genes` of its genes
in the map, the cosine similarities of its members' pairs ("within") are compared with those of its
members to every other gene of the map ("between") by a two-sample Kolmogorov-Smirnov test. A map that
captures the clusters has within-cluster similarities shifted up: `summarize_clusters` counts the
clusters whose KS p-value is below `alpha` and whose within mean exceeds the between mean.
"""
from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import ks_2samp

from maefast.errors import UserInputError
from maefast.evaluate.relationships import check_map
from maefast.evaluate.similarity import unit_rows

CLUSTER_SOURCES = ("CORUM", "GO")
MIN_GENES = 10  # EFAAR's default
CLUSTER_COLUMNS = ["cluster", "within_cossim_mean", "between_cossim_mean", "genes", "cluster_size",
                   "not_cluster_size", "ks_stat", "ks_pval"]


def load_clusters(source: str | os.PathLike = "CORUM") -> dict[str, set[str]]:
    """Cluster name -> gene set. CORUM: efaar-benchmarking's CORUM_clusters.tsv (name, tab, genes separated by
    spaces); GO: its c5.go gene-set file (.gmt: name, description, genes, tab-separated); or a file in either
    format (.gmt by its suffix). A name given twice keeps its last gene set, as EFAAR reads it."""
    if source in CLUSTER_SOURCES:
        folder = resources.files("efaar_benchmarking").joinpath("benchmark_annotations")
        path = Path(str(folder.joinpath("CORUM_clusters.tsv" if source == "CORUM" else "c5.go.v2023.2.Hs.symbols.gmt")))
    else:
        path = Path(source)
        if not path.is_file():
            raise UserInputError(f"unknown cluster source {source!r}: expected CORUM, GO or a cluster file "
                                 "(name<TAB>genes separated by spaces, or a .gmt gene-set file)")
    gmt = source == "GO" or path.suffix == ".gmt"
    clusters = {}
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            fields = line.rstrip("\n").split("\t")
            if len(fields) < (3 if gmt else 2):
                raise UserInputError(f"{path}, line {number}: expected "
                                     + ("name, description and genes" if gmt else "a name, a tab and the genes"))
            clusters[fields[0]] = set(fields[2:]) if gmt else set(fields[1].split())
    return clusters


def cluster_benchmark(features: pd.DataFrame, source: str | os.PathLike = "CORUM",
                      min_genes: int = MIN_GENES) -> pd.DataFrame:
    """One row per cluster with at least `min_genes` genes in the map (a DataFrame indexed by gene), in the
    source's order: cluster, within_cossim_mean, between_cossim_mean, genes (the map's members, in map order),
    cluster_size, not_cluster_size, ks_stat, ks_pval."""
    check_map(features, min_entities=2)
    if min_genes < 2:
        raise UserInputError(f"min_genes must be at least 2 (a cluster needs a pair), got {min_genes}")
    names = features.index.astype(str)
    unit = unit_rows(features.to_numpy(np.float64))
    rows = []
    for name, genes in load_clusters(source).items():
        member = names.isin(list(genes))
        if member.sum() < min_genes:
            continue
        inside, outside = unit[member], unit[~member]
        within = (inside @ inside.T)[np.triu_indices(len(inside), k=1)]
        between = (inside @ outside.T).ravel()
        test = ks_2samp(within, between)
        rows.append([name, within.mean(), between.mean(), list(names[member]), len(inside), len(outside),
                     test.statistic, test.pvalue])
    return pd.DataFrame(rows, columns=CLUSTER_COLUMNS)


def summarize_clusters(clusters: pd.DataFrame, alpha: float = 0.05) -> dict:
    """n_clusters, the fraction whose members are significantly more alike (KS p < alpha, within mean above
    the between mean), and the mean within- minus between-cluster similarity."""
    if len(clusters) == 0:
        return {"n_clusters": 0, "significant_fraction": np.nan, "mean_similarity_gap": np.nan}
    gap = clusters["within_cossim_mean"] - clusters["between_cossim_mean"]
    significant = (clusters["ks_pval"] < alpha) & (gap > 0)
    return {"n_clusters": len(clusters), "significant_fraction": float(significant.mean()),
            "mean_similarity_gap": float(gap.mean())}
