"""Fresh random screens and brute-force references shared by the tests of maefast.evaluate."""
from __future__ import annotations

import numpy as np
import pandas as pd


def synthetic_screen(rng: np.random.Generator, n_groups: int = 8, genes_per_group: int = 5, replicates: int = 3,
                     controls_per_batch: int = 40, batches: int = 3, dim: int = 24,
                     signal: float = 3.0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Well-level embeddings with batch effects, and the within-group gene pairs as relationships.

    Genes of one group share a direction; every batch adds its own offset and scale to all its wells.
    """
    directions = rng.normal(size=(n_groups, dim))
    genes = {f"G{g}_{k}": g for g in range(n_groups) for k in range(genes_per_group)}
    gene_vectors = {gene: signal * directions[g] + 0.5 * rng.normal(size=dim) for gene, g in genes.items()}
    rows, features = [], []
    for batch in range(batches):
        offset, scale = rng.normal(scale=2.0, size=dim), rng.uniform(0.5, 2.0, size=dim)
        labels = ["CONTROL"] * controls_per_batch
        labels += [gene for gene in genes for _ in range(replicates) if rng.random() < 0.9 or batch == 0]
        for well, label in enumerate(labels):
            base = gene_vectors.get(label, np.zeros(dim))
            features.append((base + rng.normal(size=dim)) * scale + offset)
            rows.append({"perturbation": label, "plate": f"P{batch}", "well": f"W{well:03d}"})
    table = pd.DataFrame(rows)
    feature_table = pd.DataFrame(np.array(features), columns=[f"feature_{i}" for i in range(dim)])
    relationships = pd.DataFrame([(a, b) for a in genes for b in genes if a < b and genes[a] == genes[b]],
                                 columns=["entity1", "entity2"])
    return pd.concat([table, feature_table], axis=1), relationships


def brute_force_recall(features: pd.DataFrame, pairs: pd.DataFrame, lower: float, upper: float) -> tuple[float, int]:
    """EFAAR's definition on the dense cosine matrix: ranks of each annotated pair's similarity among all
    upper-triangle similarities by searchsorted left/right, recalled when right rank <= lower or left rank
    >= upper. `pairs` holds raw entity1, entity2 rows (any order, duplicates, self pairs, unknown names)."""
    x = features.to_numpy(np.float64)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    similarity = unit @ unit.T
    null = np.sort(similarity[np.triu_indices(len(x), k=1)])
    names = {name: i for i, name in enumerate(features.index)}
    seen, query = set(), []
    for a, b in zip(pairs["entity1"], pairs["entity2"]):
        key = (min(a, b), max(a, b))
        if a == b or a not in names or b not in names or key in seen:
            continue
        seen.add(key)
        i, j = sorted((names[a], names[b]))
        query.append(similarity[i, j])
    query = np.array(query)
    left = np.searchsorted(null, query, side="left") / len(null)
    right = np.searchsorted(null, query, side="right") / len(null)
    recalled = (right <= lower) | (left >= upper)
    return (float(recalled.mean()) if len(query) else float("nan")), len(query)
