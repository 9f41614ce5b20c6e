"""The papers' benchmark figures, as PNG files (matplotlib Figure objects, no pyplot state, Agg rendering).

- `plot_recall_bars`: recall per source, one bar per map side by side, with the random-map level, the
  number of annotated pairs per source and, when given, an interval per bar.
- `plot_map_pca`: the first two principal components of maps (cosine geometry), entities coloured by group.
- `plot_recall_sweep`: recall across a sweep of percentile threshold pairs, one panel per source.
- `plot_similarity_distributions`: cosine similarities of annotated pairs against all pairs.
- `plot_recall_vs_flops`: recall of successive checkpoints against cumulative training FLOPs.
- `plot_drug_target`: the drug-target benchmark's AUROC per concentration (and at the best one), per model.
- `plot_scores_by_block`: a score (probe accuracy, recall, ...) against the encoder block it was read from,
  one line per model, with its interval and chance level; models without blocks as horizontal lines.
"""
from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping

import numpy as np
import pandas as pd
from matplotlib import cm
from matplotlib.figure import Figure

from maefast.errors import UserInputError
from maefast.evaluate.relationships import MapScores, recall_column
from maefast.evaluate.similarity import coarse_histogram
from maefast.io import atomic_path

RECALL_COLUMN = re.compile(r"^recall_([0-9.]+)_([0-9.]+)$")


def recall_thresholds(table: pd.DataFrame) -> list[tuple[float, float]]:
    """The (lower, upper) pairs of a recall table's recall_<lower>_<upper> columns, in column order."""
    pairs = [tuple(map(float, m.groups())) for m in map(RECALL_COLUMN.match, map(str, table.columns)) if m]
    if not pairs:
        raise UserInputError(f"no recall_<lower>_<upper> columns in the table; columns are {list(table.columns)}")
    return pairs


def random_recall(lower: float, upper: float) -> float:
    """Expected recall of a map unrelated to the annotations: the fraction of pairs beyond the thresholds."""
    return lower + (1.0 - upper)


def save_figure(figure: Figure, path: str | os.PathLike) -> None:
    figure.tight_layout()
    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png", dpi=120)


def plot_recall_bars(recalls: Mapping[str, pd.DataFrame], path: str | os.PathLike,
                     thresholds: tuple[float, float] = (0.05, 0.95),
                     intervals: Mapping[str, pd.DataFrame] | None = None) -> None:
    """Recall per source at one threshold pair; `recalls` maps a map's label to its recall table.

    The source labels carry the number of annotated pairs (n_pairs) each recall rests on, a range when the
    maps differ. intervals: label -> table with columns source, recall_low, recall_high (e.g. from
    maefast.evaluate.uncertainty.recall_intervals), drawn as error bars.
    """
    column = recall_column(*thresholds)
    sources = _sources(recalls, column)
    width = 0.8 / len(recalls)
    figure = Figure(figsize=(3.5 + 1.3 * len(sources) + 0.3 * len(recalls), 4))
    axes = figure.add_subplot()
    for i, (label, table) in enumerate(recalls.items()):
        values = table.set_index("source")[column].reindex(sources)
        error = None
        if intervals is not None and label in intervals:
            bounds = intervals[label].set_index("source").reindex(sources)
            error = np.vstack([values - bounds["recall_low"], bounds["recall_high"] - values])
        axes.bar(np.arange(len(sources)) + (i - (len(recalls) - 1) / 2) * width, values, width, label=label,
                 yerr=error, error_kw=dict(elinewidth=0.8, capsize=1.5, ecolor="black"))
    axes.axhline(random_recall(*thresholds), color="gray", linestyle="--", label="random")
    axes.set_xticks(np.arange(len(sources)), [_source_label(recalls, source) for source in sources])
    axes.set_ylabel(f"recall at ({thresholds[0]}, {thresholds[1]})")
    axes.set_title("Known relationships recalled" + (" (bars: 95% intervals)" if intervals else ""))
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the bars, never on them
    save_figure(figure, path)


def _source_label(recalls: Mapping[str, pd.DataFrame], source: str) -> str:
    counts = sorted({int(n) for table in recalls.values() if "n_pairs" in table.columns
                     for n in table.loc[table["source"] == source, "n_pairs"]})
    if not counts:
        return source
    return f"{source}\nn = {counts[0]}" if len(counts) == 1 else f"{source}\nn = {counts[0]}-{counts[-1]}"


def plot_map_pca(maps: Mapping[str, pd.DataFrame], groups: pd.Series | Mapping[str, pd.Series],
                 path: str | os.PathLike, title: str = "Gene maps, first two principal components") -> None:
    """One panel per map: its rows scaled to unit length (the cosine geometry the recall uses), projected
    on their first two principal components, each entity coloured by its group. groups: entity -> label, for
    every map or per map label (entities without a group in grey). Colours are assigned per panel, among the
    groups it shows."""
    if not maps:
        raise UserInputError("no maps to plot")
    columns = min(len(maps), 4)
    rows = math.ceil(len(maps) / columns)
    figure = Figure(figsize=(3.3 * columns, 3.2 * rows + 0.4))
    for k, (name, features) in enumerate(maps.items()):
        x = features.to_numpy(np.float64)
        if x.shape[0] < 3 or x.shape[1] < 2:
            raise UserInputError(f"map {name!r} has shape {x.shape}; a PCA view needs 3 rows and 2 features")
        x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
        x = x - x.mean(0)
        _, singular, axes_t = np.linalg.svd(x, full_matrices=False)
        projected = x @ axes_t[:2].T
        explained = singular[:2] ** 2 / max(float(np.sum(singular ** 2)), 1e-30)
        axes = figure.add_subplot(rows, columns, k + 1)
        member = (groups if isinstance(groups, pd.Series) else groups[name]).reindex(features.index)
        present = sorted(set(member.dropna()))
        if member.isna().any():
            axes.scatter(projected[member.isna().to_numpy(), 0], projected[member.isna().to_numpy(), 1], s=10,
                         color="lightgray", marker=".")
        for index, group in enumerate(present):
            # tab20's 10 dark hues first, then their light pairs; another marker every 20 groups
            colour, marker = cm.tab20((2 * index + index // 10) % 20), "os^D"[index // 20 % 4]
            rows_of = (member == group).to_numpy()
            axes.scatter(projected[rows_of, 0], projected[rows_of, 1], s=14, color=colour, marker=marker)
        axes.set_title(f"{name} ({len(present)} groups)", fontsize="small")
        axes.set_xlabel(f"PC1 ({explained[0]:.0%})", fontsize="small")
        axes.set_ylabel(f"PC2 ({explained[1]:.0%})", fontsize="small")
        axes.tick_params(labelsize="x-small")
    figure.suptitle(f"{title}; one colour and marker per group", fontsize="medium")
    save_figure(figure, path)


def plot_recall_sweep(recalls: Mapping[str, pd.DataFrame], path: str | os.PathLike) -> None:
    """Recall against percentile threshold pairs (all recall columns of the tables), one panel per source."""
    first = next(iter(recalls.values()))
    pairs = recall_thresholds(first)
    sources = _sources(recalls, recall_column(*pairs[0]))
    columns = min(len(sources), 5)
    rows = math.ceil(len(sources) / columns)
    figure = Figure(figsize=(3.2 * columns, 3.0 * rows))
    x = [lower for lower, _ in pairs]
    for k, source in enumerate(sources):
        axes = figure.add_subplot(rows, columns, k + 1)
        for label, table in recalls.items():
            row = table.set_index("source").loc[source]
            axes.plot(x, [row[recall_column(*pair)] for pair in pairs], marker="o", markersize=3, label=label)
        axes.plot(x, [random_recall(*pair) for pair in pairs], color="gray", linestyle="--", label="random")
        axes.set_title(source)
        axes.set_xlabel("lower percentile (upper = 1 - lower)")
        axes.set_ylabel("recall")
    figure.axes[0].legend(fontsize="small")
    save_figure(figure, path)


def plot_similarity_distributions(scores: MapScores, path: str | os.PathLike, bins: int = 128,
                                  thresholds: tuple[float, float] = (0.05, 0.95)) -> None:
    """Densities of the cosine similarities of each source's annotated pairs against those of all pairs,
    with the all-pairs percentiles at `thresholds` marked."""
    counts, edges = coarse_histogram(scores.scan.histogram, bins)
    figure = Figure(figsize=(7, 4))
    axes = figure.add_subplot()
    axes.stairs(counts / (counts.sum() * np.diff(edges)), edges, fill=True, color="silver",
                label=f"all pairs ({scores.scan.n_pairs:,})")
    for source, values in scores.pair_similarities.items():
        if len(values):
            density, _ = np.histogram(values, bins=edges, density=True)
            axes.stairs(density, edges, linewidth=1.5, label=f"{source} ({len(values):,})")
    if thresholds not in scores.threshold_values:
        raise UserInputError(f"thresholds {thresholds} were not scored; scored: {list(scores.threshold_values)}")
    for k, cut_off in enumerate(scores.threshold_values[thresholds]):
        axes.axvline(cut_off, color="black", linestyle=":", linewidth=1,
                     label=f"all-pairs percentiles {thresholds[0]}, {thresholds[1]}" if k == 0 else None)
    axes.set_xlabel("cosine similarity")
    axes.set_ylabel("density")
    axes.set_title("Annotated pairs against all pairs")
    axes.legend(fontsize="small")
    save_figure(figure, path)


def plot_recall_vs_flops(table: pd.DataFrame, path: str | os.PathLike,
                         thresholds: tuple[float, float] = (0.05, 0.95)) -> None:
    """Recall of checkpoints against cumulative training FLOPs, one line per source.

    table: long format, one row per (checkpoint, source): columns checkpoint, flops, source and
    recall_<lower>_<upper> for `thresholds`.
    """
    column = recall_column(*thresholds)
    missing = {"checkpoint", "flops", "source", column} - set(table.columns)
    if missing:
        raise UserInputError(f"the scaling table lacks column(s) {sorted(missing)}; expected checkpoint, flops, "
                             f"source, {column}")
    if not (pd.to_numeric(table["flops"], errors="coerce") > 0).all():
        raise UserInputError("the scaling table's flops must be positive numbers")
    figure = Figure(figsize=(6, 4))
    axes = figure.add_subplot()
    for source, rows in table.sort_values("flops").groupby("source", sort=False):
        axes.plot(rows["flops"], rows[column], marker="o", label=source)
    axes.set_xscale("log")
    axes.set_xlabel("cumulative training FLOPs")
    axes.set_ylabel(f"recall at ({thresholds[0]}, {thresholds[1]})")
    axes.set_title("Recall of known relationships across training")
    axes.legend(fontsize="small")
    save_figure(figure, path)


def _sources(recalls: Mapping[str, pd.DataFrame], column: str) -> list[str]:
    if not recalls:
        raise UserInputError("no recall tables to plot")
    sources: list[str] = []
    for label, table in recalls.items():
        if "source" not in table.columns or column not in table.columns:
            raise UserInputError(f"recall table {label!r} lacks the columns 'source' and {column!r}")
        sources += [s for s in table["source"] if s not in sources]
    return sources



def plot_scores_by_block(table: pd.DataFrame, path: str | os.PathLike, score: str, label_col: str = "label",
                         block_col: str = "block", chance: float | None = None, title: str | None = None) -> None:
    """`score` against `block_col`, one line per `label_col` value, with a band between `<score>_low` and
    `<score>_high` when the table has them. A label whose block is NaN (a model without blocks: hand-crafted
    features, a map) is drawn as a horizontal dashed line across the blocks; chance as a grey dotted line."""
    missing = {label_col, block_col, score} - set(table.columns)
    if missing:
        raise UserInputError(f"the block table lacks column(s) {sorted(missing)}")
    blocks = table[block_col].dropna()
    if blocks.empty:
        raise UserInputError("no row of the table has a block to plot against")
    figure = Figure(figsize=(6.5, 4))
    axes = figure.add_subplot()
    span = [float(blocks.min()), float(blocks.max())]
    bounds = {f"{score}_low", f"{score}_high"} <= set(table.columns)
    for label, rows in table.groupby(label_col, sort=False):
        rows = rows.sort_values(block_col)
        if rows[block_col].isna().all():
            axes.plot(span, [rows[score].iloc[0]] * 2, linestyle="--", label=f"{label} (no blocks)")
            continue
        line, = axes.plot(rows[block_col], rows[score], marker="o", label=label)
        if bounds:
            axes.fill_between(rows[block_col], rows[f"{score}_low"], rows[f"{score}_high"], alpha=0.2,
                              color=line.get_color())
    if chance is not None:
        axes.axhline(chance, color="gray", linestyle=":", label="chance")
    axes.set_xlabel("encoder block (0-based, as timm's forward_intermediates)")
    axes.set_ylabel(score.replace("_", " "))
    axes.set_xticks(sorted(int(b) for b in blocks.unique()))
    axes.set_title(title or f"{score.replace('_', ' ')} by block")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(figure, path)


def plot_drug_target(table: pd.DataFrame, path: str | os.PathLike, score: str = "auroc") -> None:
    """`score` with its interval per concentration (the last group: the best concentration), one bar per
    label (and block) side by side; chance (0.5 for AUROC) dashed."""
    missing = {"label", "concentration", score} - set(table.columns)
    if missing:
        raise UserInputError(f"the drug-target table lacks column(s) {sorted(missing)}")
    names = [label if pd.isna(block) else f"{label} block {int(block)}"
             for label, block in zip(table["label"], table.get("block", pd.Series([np.nan] * len(table))))]
    table = table.assign(name=names)
    groups = list(dict.fromkeys(str(c) for c in table["concentration"]))
    series = list(dict.fromkeys(names))
    width = 0.8 / len(series)
    figure = Figure(figsize=(3.0 + 0.9 * len(groups) + 0.2 * len(series), 4))
    axes = figure.add_subplot()
    for k, name in enumerate(series):
        rows = table[table["name"] == name].assign(group=lambda t: t["concentration"].astype(str))
        rows = rows.set_index("group").reindex(groups)
        error = None
        if {f"{score}_low", f"{score}_high"} <= set(rows.columns):
            error = np.vstack([rows[score] - rows[f"{score}_low"], rows[f"{score}_high"] - rows[score]])
        axes.bar(np.arange(len(groups)) + (k - (len(series) - 1) / 2) * width, rows[score], width, label=name,
                 yerr=error, error_kw=dict(elinewidth=0.8, capsize=1.5, ecolor="black"))
    if score == "auroc":
        axes.axhline(0.5, color="gray", linestyle="--", label="chance")
    axes.set_xticks(np.arange(len(groups)), groups)
    axes.set_xlabel("compound concentration")
    axes.set_ylabel(score.replace("_", " "))
    axes.set_title("Known compound-target pairs among all pairs (bars: 95% intervals)")
    axes.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0))
    save_figure(figure, path)
