"""Benchmarking maps of biology: the recall of known relationships by each map, as tables and plots.

    table = benchmark_maps({"vitl8": map_a, "random": map_b}, out="bench/")

writes, under `out`: recall.csv and recall.json (one row per map and source: pairs, recall at each
threshold pair with its 95% bootstrap interval over the annotated pairs (maefast.evaluate.uncertainty) and the
chance level, the recall of a map unrelated to the annotations: lower + 1 - upper), recall_sweep.csv (recall
over the sweep of thresholds), similarity_<map>.png, recall_bars.png, recall_sweep.png and, given each map's
training FLOPs, recall_vs_flops.png.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from maefast.evaluate import plots
from maefast.evaluate.plots import random_recall
from maefast.evaluate.relationships import (
    DEFAULT_THRESHOLDS,
    KNOWN_SOURCES,
    MIN_ENTITIES,
    SWEEP_THRESHOLDS,
    check_thresholds,
    recall_column,
    score_map,
)
from maefast.evaluate.uncertainty import recall_intervals
from maefast.io import atomic_path, write_json_atomic

INTERVAL_LEVEL = 0.95


def with_intervals(scores, table: pd.DataFrame, thresholds) -> pd.DataFrame:
    """The recall table with, after each recall_<lower>_<upper>, its interval (_low, _high) and its chance level."""
    table = table.copy()
    for pair in thresholds:
        column = recall_column(*pair)
        interval = recall_intervals(scores, pair, INTERVAL_LEVEL).set_index("source")
        position = table.columns.get_loc(column) + 1
        table.insert(position, f"{column}_low", table["source"].map(interval["recall_low"]).to_numpy())
        table.insert(position + 1, f"{column}_high", table["source"].map(interval["recall_high"]).to_numpy())
        table.insert(position + 2, f"chance_{pair[0]}_{pair[1]}", random_recall(*pair))
    return table


def benchmark_maps(maps: dict[str, pd.DataFrame], out, sources=KNOWN_SOURCES, thresholds=DEFAULT_THRESHOLDS,
                   min_entities: int = MIN_ENTITIES, flops: dict[str, float] | None = None) -> pd.DataFrame:
    """Scores every map (label -> map indexed by perturbation) against `sources` and writes the tables and
    plots (see the module docstring). Returns the recall table."""
    thresholds = check_thresholds(list(thresholds))
    scored = list(dict.fromkeys(thresholds + check_thresholds(SWEEP_THRESHOLDS)))
    out = Path(out)
    recalls, sweeps = {}, {}
    for label, perturbation_map in maps.items():
        scores = score_map(perturbation_map, sources, scored, min_entities)
        fixed = ["source", "n_pairs", "n_all_pairs"]
        recalls[label] = with_intervals(scores, scores.recall[fixed + [recall_column(*t) for t in thresholds]],
                                        thresholds)
        sweeps[label] = scores.recall[fixed + [recall_column(*t) for t in sorted(SWEEP_THRESHOLDS)]]
        plots.plot_similarity_distributions(scores, out / f"similarity_{label}.png", thresholds=thresholds[0])

    table = pd.concat([t.assign(map=label) for label, t in recalls.items()], ignore_index=True)
    table = table[["map"] + [c for c in table.columns if c != "map"]]
    if flops is not None:
        table["flops"] = table["map"].map(flops)
    with atomic_path(out / "recall.csv") as temporary:
        table.to_csv(temporary, index=False)
    write_json_atomic(out / "recall.json", json.loads(table.to_json(orient="records")))
    sweep_table = pd.concat([t.assign(map=label) for label, t in sweeps.items()], ignore_index=True)
    with atomic_path(out / "recall_sweep.csv") as temporary:
        sweep_table.to_csv(temporary, index=False)

    first = recall_column(*thresholds[0])
    intervals = {label: t.rename(columns={f"{first}_low": "recall_low", f"{first}_high": "recall_high"})
                 for label, t in recalls.items()}
    plots.plot_recall_bars(recalls, out / "recall_bars.png", thresholds=thresholds[0], intervals=intervals)
    plots.plot_recall_sweep(sweeps, out / "recall_sweep.png")
    if flops is not None:
        plots.plot_recall_vs_flops(table.rename(columns={"map": "checkpoint"}), out / "recall_vs_flops.png",
                                   thresholds=thresholds[0])
    return table
