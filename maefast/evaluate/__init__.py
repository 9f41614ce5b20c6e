"""Evaluation: maps of biology from embeddings and the known-relationship benchmark (EFAAR definitions).

    map = build_map(embeddings, perturbation_col="gene", control_label="EMPTY_control", batch_col="plate")
    recall = relationship_recall(map)   # one row per source: n_pairs, recall_0.05_0.95, recall_0.1_0.9
"""
from maefast.evaluate.benchmark import benchmark_maps
from maefast.evaluate.clusters import cluster_benchmark, load_clusters, summarize_clusters
from maefast.evaluate.consistency import replicate_consistency
from maefast.evaluate.drug_target import compound_gene_maps, drug_target_benchmark, load_compound_targets
from maefast.evaluate.magnitude import energy_distance, perturbation_magnitude
from maefast.evaluate.normalize import (
    aggregate_map,
    build_map,
    centerscale_on_controls,
    fit_pca,
    normalize_embeddings,
    pca_transform,
    tvn_on_controls,
)
from maefast.evaluate.plots import (
    plot_map_pca,
    plot_recall_bars,
    plot_recall_sweep,
    plot_recall_vs_flops,
    plot_scores_by_block,
    plot_similarity_distributions,
)
from maefast.evaluate.probe import linear_probe, probe_blocks
from maefast.evaluate.relationships import (
    DEFAULT_THRESHOLDS,
    KNOWN_SOURCES,
    MIN_ENTITIES,
    SWEEP_THRESHOLDS,
    MapScores,
    load_relationships,
    relationship_recall,
    score_map,
)
from maefast.evaluate.uncertainty import recall_intervals, recall_summary

__all__ = [
    "DEFAULT_THRESHOLDS", "KNOWN_SOURCES", "MIN_ENTITIES", "MapScores", "SWEEP_THRESHOLDS", "aggregate_map",
    "benchmark_maps", "build_map", "centerscale_on_controls", "cluster_benchmark", "compound_gene_maps",
    "drug_target_benchmark", "energy_distance", "fit_pca", "linear_probe", "load_clusters",
    "load_compound_targets", "load_relationships", "normalize_embeddings", "pca_transform",
    "perturbation_magnitude", "plot_map_pca", "plot_recall_bars", "plot_recall_sweep", "plot_recall_vs_flops",
    "plot_scores_by_block", "plot_similarity_distributions", "probe_blocks", "recall_intervals", "recall_summary",
    "relationship_recall", "replicate_consistency", "score_map", "summarize_clusters", "tvn_on_controls",
]
