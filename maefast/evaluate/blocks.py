"""Benchmarks of block-wise embeddings (`maefast embed --blocks`): a map per model and block, and the choice
of a block without looking at the data it is judged on.

Kenyon-Dean et al. ("ViTally Consistent", ICML 2025) found that a ViT's best representation is often an
intermediate block's and chose Phenom-2's block with linear probes. `benchmark_embeddings` does that
honestly: with `pick_block`, the experimental batches (`split_col`) are split at random into a selection
part and an evaluation part; the block is chosen on the selection batches (by the linear probe's balanced
accuracy, or by the mean recall of known relationships of a map built from them) and every block is then
benchmarked on the evaluation batches only, the chosen one marked.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from maefast.errors import UserInputError
from maefast.evaluate import plots
from maefast.evaluate.benchmark import benchmark_maps
from maefast.evaluate.normalize import aggregate_map, normalize_embeddings
from maefast.evaluate.probe import linear_probe
from maefast.evaluate.relationships import (
    DEFAULT_THRESHOLDS,
    KNOWN_SOURCES,
    MIN_ENTITIES,
    check_thresholds,
    recall_column,
    score_map,
)
from maefast.io import atomic_path, write_json_atomic
from maefast.tables import BLOCK_COLUMN, feature_columns

CRITERIA = ("probe", "recall")


@dataclass
class MapOptions:
    """How embeddings become a map (as `maefast map`): normalization on the controls, then aggregation."""
    perturbation_col: str
    control_label: str | list[str]
    batch_col: str | list[str] | None = None  # a column, or several whose combination is the batch
    feature_cols: list[str] | None = None
    pca_components: int | None = 128  # at most the number of features and rows; None or 0: no PCA
    tvn: bool = True
    aggregate: str = "mean"
    keep_controls: bool = False

    def normalize(self, table: pd.DataFrame) -> pd.DataFrame:
        features = feature_columns(table, names=self.feature_cols)
        components = min(self.pca_components, len(features), len(table)) if self.pca_components else None
        return normalize_embeddings(table, perturbation_col=self.perturbation_col, control_label=self.control_label,
                                    batch_col=self.batch_col, feature_cols=features, pca_components=components,
                                    tvn=self.tvn)

    def build(self, table: pd.DataFrame) -> pd.DataFrame:
        labels = [self.control_label] if isinstance(self.control_label, str) else list(self.control_label)
        return aggregate_map(self.normalize(table), perturbation_col=self.perturbation_col, method=self.aggregate,
                             drop_labels=() if self.keep_controls else labels)


def blocks_of(table: pd.DataFrame) -> dict[int | None, pd.DataFrame]:
    """Each block's rows without the block column ({None: table} for a table without blocks)."""
    if BLOCK_COLUMN not in table.columns:
        return {None: table}
    return {int(block): rows.drop(columns=BLOCK_COLUMN).reset_index(drop=True)
            for block, rows in table.groupby(BLOCK_COLUMN, sort=True)}


def map_label(label: str, block: int | None) -> str:
    return label if block is None else f"{label} block {block}"


def split_batches(values: pd.Series, selection_fraction: float = 0.5, seed: int = 0) -> tuple[list, list]:
    """The distinct batches split at random into (selection, evaluation), both non-empty."""
    batches = sorted(pd.unique(values.dropna()), key=str)
    if len(batches) < 2 or not 0 < selection_fraction < 1:
        raise UserInputError(f"choosing a block on some batches and reporting it on others needs at least 2 batches "
                             f"and 0 < selection fraction < 1; got {len(batches)} batch(es), {selection_fraction}")
    order = np.random.default_rng(seed).permutation(len(batches))
    count = min(max(1, round(selection_fraction * len(batches))), len(batches) - 1)
    return [batches[i] for i in sorted(order[:count])], [batches[i] for i in sorted(order[count:])]


def mean_recall(perturbation_map: pd.DataFrame, sources, thresholds, min_entities: int) -> float:
    """Mean over the sources with annotated pairs of the recall at the first threshold pair."""
    recall = score_map(perturbation_map, sources, thresholds[:1], min_entities).recall
    return float(recall[recall_column(*thresholds[0])].mean())  # NaN rows (no pairs) are skipped


@dataclass
class BlockChoice:
    block: int
    scores: pd.DataFrame            # per block: the criterion on the selection batches
    selection: list = field(default_factory=list)
    evaluation: list = field(default_factory=list)


def choose_block(table: pd.DataFrame, criterion: str, options: MapOptions, *, split_col: str,
                 holdout_col: str | None = None, selection_fraction: float = 0.5, seed: int = 0,
                 sources=KNOWN_SOURCES, thresholds=DEFAULT_THRESHOLDS, min_entities: int = MIN_ENTITIES,
                 probe_options: dict | None = None) -> BlockChoice:
    """The block with the best criterion on the selection batches of `split_col` (see the module docstring).
    probe: balanced accuracy of linear_probe holding out `holdout_col` batches (default split_col) within the
    selection; recall: mean recall of the known relationships by the selection batches' map."""
    if criterion not in CRITERIA:
        raise UserInputError(f"pick-block criterion must be one of {CRITERIA}, got {criterion!r}")
    if BLOCK_COLUMN not in table.columns:
        raise UserInputError("choosing a block needs block-wise embeddings (maefast embed --blocks ...)")
    if split_col not in table.columns:
        raise UserInputError(f"unknown split column {split_col!r}; columns are {list(table.columns)[:10]}")
    selection, evaluation = split_batches(table[split_col], selection_fraction, seed)
    thresholds = check_thresholds(thresholds)
    rows = []
    for block, block_rows in blocks_of(table[table[split_col].isin(selection)]).items():
        if criterion == "probe":
            result = linear_probe(options.normalize(block_rows), perturbation_col=options.perturbation_col,
                                  holdout_col=holdout_col or split_col, control_label=options.control_label,
                                  seed=seed, **(probe_options or {}))
            rows.append({BLOCK_COLUMN: block, "criterion": "probe", "score": result["balanced_accuracy"],
                         "score_low": result["balanced_accuracy_low"],
                         "score_high": result["balanced_accuracy_high"]})
        else:
            score = mean_recall(options.build(block_rows), sources, thresholds, min_entities)
            rows.append({BLOCK_COLUMN: block, "criterion": "recall", "score": score})
    scores = pd.DataFrame(rows)
    if scores["score"].isna().all():
        raise UserInputError(f"no block could be scored by {criterion} on the selection batches {selection}")
    best = int(scores.loc[scores["score"].idxmax(), BLOCK_COLUMN])
    return BlockChoice(best, scores.assign(chosen=scores[BLOCK_COLUMN] == best), selection, evaluation)


def benchmark_embeddings(tables: dict[str, pd.DataFrame], out, options: MapOptions, *,
                         sources: Sequence = KNOWN_SOURCES, thresholds=DEFAULT_THRESHOLDS,
                         min_entities: int = MIN_ENTITIES, pick_block: str | None = None,
                         split_col: str | None = None, holdout_col: str | None = None,
                         selection_fraction: float = 0.5, seed: int = 0) -> tuple[pd.DataFrame, dict]:
    """Recall of known relationships by the map of every (label, block) of `tables` (label -> embeddings,
    block-wise or not): benchmark_maps' files under `out`, plus recall_by_block.csv / .png and, with
    pick_block ("probe" or "recall"), block_selection.csv and block_selection.json (the choice per label,
    made on the selection batches of `split_col`; the maps then use the evaluation batches only).
    Returns the recall table with label, block and chosen columns, and the maps it scored (by map name)."""
    thresholds = check_thresholds(thresholds)
    out = Path(out)
    maps, keys, choices = {}, {}, {}
    for label, table in tables.items():
        if pick_block:
            if split_col is None:
                raise UserInputError("pick_block needs split_col, the experimental batch column")
            if BLOCK_COLUMN in table.columns:
                choices[label] = choose_block(table, pick_block, options, split_col=split_col,
                                              holdout_col=holdout_col, selection_fraction=selection_fraction,
                                              seed=seed, sources=sources, thresholds=thresholds,
                                              min_entities=min_entities)
                evaluation = choices[label].evaluation
            else:  # a baseline without blocks: nothing to choose, judged on the same batches
                evaluation = split_batches(table[split_col], selection_fraction, seed)[1]
            table = table[table[split_col].isin(evaluation)]
        for block, rows in blocks_of(table).items():
            name = map_label(label, block)
            maps[name], keys[name] = options.build(rows), (label, block)
    recall = benchmark_maps(maps, out, sources, thresholds, min_entities)
    recall["label"] = recall["map"].map(lambda name: keys[name][0])
    recall[BLOCK_COLUMN] = recall["map"].map(lambda name: keys[name][1])
    recall["chosen"] = [label in choices and block == choices[label].block
                        for label, block in zip(recall["label"], recall[BLOCK_COLUMN])]
    with atomic_path(out / "recall.csv") as temporary:  # benchmark_maps' tables, with the block columns
        recall.to_csv(temporary, index=False)
    write_json_atomic(out / "recall.json", json.loads(recall.to_json(orient="records")))
    column = recall_column(*thresholds[0])
    by_block = recall.groupby(["label", "map"], sort=False).agg(
        block=(BLOCK_COLUMN, "first"), mean_recall=(column, "mean"), chosen=("chosen", "first")).reset_index()
    with atomic_path(out / "recall_by_block.csv") as temporary:
        by_block.to_csv(temporary, index=False)
    if by_block[BLOCK_COLUMN].notna().any():
        plots.plot_scores_by_block(by_block, out / "recall_by_block.png", "mean_recall",
                                   chance=plots.random_recall(*thresholds[0]),
                                   title=f"mean recall over sources at {thresholds[0]} by block"
                                   + (" (evaluation batches)" if pick_block else ""))
    if choices:
        selection = pd.concat([c.scores.assign(label=label) for label, c in choices.items()], ignore_index=True)
        with atomic_path(out / "block_selection.csv") as temporary:
            selection.to_csv(temporary, index=False)
        write_json_atomic(out / "block_selection.json", {
            label: {"criterion": pick_block, "block": c.block, "selection_batches": [str(b) for b in c.selection],
                    "evaluation_batches": [str(b) for b in c.evaluation]} for label, c in choices.items()})
    return recall, maps

