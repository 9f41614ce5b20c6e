"""`maefast map` (embeddings -> map of perturbations) and `maefast benchmark` (map -> recall and plots)."""
from __future__ import annotations

from pathlib import Path

import pandas as pd

from maefast.cli.embed import comma_separated
from maefast.errors import UserInputError
from maefast.io import atomic_path
from maefast.tables import FEATURE_PREFIX, FORMATS, feature_columns, metadata_column, read_table, write_table


def add_commands(subparsers) -> None:
    build = subparsers.add_parser(
        "map", help="center-scale, PCA and TVN on controls, then aggregate embeddings per perturbation")
    build.add_argument("--embeddings", required=True,
                       help="metadata + feature columns: an embedding job folder, a folder of parquet shards, or a "
                            "parquet / .h5ad (AnnData) / pycytominer .csv[.gz] file")
    build.add_argument("--out", required=True, help="the map, indexed by perturbation (.parquet, .h5ad or .csv[.gz])")
    build.add_argument("--format", default="parquet", choices=FORMATS,
                       help="h5ad: AnnData (obs = perturbations); pycytominer-*: Metadata_<perturbation> + features")
    build.add_argument("--perturbation-col", required=True, help="metadata column naming the perturbation")
    build.add_argument("--control", required=True, action="append",
                       help="perturbation label of the control rows (repeat for several labels)")
    build.add_argument("--batch-col", dest="batch_cols", action="extend", type=comma_separated, metavar="COLUMN",
                       help="metadata column(s) whose combination is the batch: repeat the flag or give a comma list, "
                            "e.g. --batch-col experiment --batch-col plate (RxRx plate numbers repeat in every "
                            "experiment); default: all rows one batch")
    build.add_argument("--feature-prefix", default=FEATURE_PREFIX, help="feature columns start with this")
    build.add_argument("--pca-components", type=int, default=128,
                       help="PCA components kept (clipped, with a warning, to what the data allows); 0 skips PCA")
    build.add_argument("--no-tvn", action="store_true", help="skip typical variation normalization")
    build.add_argument("--aggregate", choices=("mean", "median"), default="mean",
                       help="how a perturbation's rows become its map vector")
    build.add_argument("--keep-controls", action="store_true", help="keep the controls as map entities")
    build.add_argument("--consistency", help="also write replicate consistency per perturbation to this CSV")
    build.add_argument("--n-null", type=int, default=1000, help="control sets per replicate count in the null")
    build.add_argument("--seed", type=int, default=0, help="seed of the consistency null's control sets")
    build.set_defaults(func=map_command)

    bench = subparsers.add_parser("benchmark", help="recall of known relationships by one or more maps, and plots")
    bench.add_argument("--map", required=True, action="append", dest="maps",
                       help="map file: parquet, .h5ad or pycytominer .csv[.gz] (repeatable)")
    bench.add_argument("--label", action="append", dest="labels",
                       help="name of each map in tables and plots (default: file name without suffix)")
    bench.add_argument("--out", required=True, help="directory for recall.csv, recall.json and the plots")
    bench.add_argument("--source", action="append", dest="sources",
                       help="CORUM, HuMAP, Reactome, SIGNOR, StringDB or an entity1,entity2 file (default: all 5)")
    bench.add_argument("--threshold", action="append", dest="thresholds", metavar="LOWER,UPPER",
                       help="percentile threshold pair (default: 0.05,0.95 and 0.1,0.9)")
    bench.add_argument("--perturbation-col",
                       help="map column naming the perturbation, when the parquet has no perturbation index")
    bench.add_argument("--min-entities", type=int, default=None, help="smallest map to score (default 20)")
    bench.add_argument("--flops", help="CSV with columns checkpoint,flops; maps labelled by checkpoint -> "
                                       "recall_vs_flops.png")
    bench.set_defaults(func=benchmark_command)


def map_command(args) -> int:
    from maefast.embedding.outputs import read_embeddings
    from maefast.evaluate import aggregate_map, normalize_embeddings, replicate_consistency

    table = read_embeddings(args.embeddings)
    features = feature_columns(table, args.feature_prefix, required=False)
    if not features:
        raise UserInputError(f"{args.embeddings}: no columns start with --feature-prefix {args.feature_prefix!r}")
    options = dict(perturbation_col=args.perturbation_col, control_label=args.control)
    # build_map = normalize_embeddings + aggregate_map; the CLI keeps the normalized rows for consistency
    normalized = normalize_embeddings(table, **options, batch_col=args.batch_cols, feature_cols=features,
                                      pca_components=args.pca_components or None, tvn=not args.no_tvn)
    perturbation_map = aggregate_map(normalized, perturbation_col=args.perturbation_col, method=args.aggregate,
                                     drop_labels=() if args.keep_controls else args.control)
    write_table(perturbation_map, args.out, args.format)  # the map's features have maefast's names
    print(f"map: {len(perturbation_map)} perturbations x {perturbation_map.shape[1]} features -> {args.out}")
    if args.consistency:
        consistency = replicate_consistency(normalized, **options, n_null=args.n_null, seed=args.seed)
        with atomic_path(args.consistency) as temporary:
            consistency.to_csv(temporary, index=False)
        print(f"replicate consistency of {len(consistency)} perturbations -> {args.consistency}")
    return 0


def read_map(path: str | Path, perturbation_col: str | None) -> pd.DataFrame:
    table = read_table(path)
    if perturbation_col is not None:
        try:
            return table.set_index(metadata_column(table, perturbation_col))
        except UserInputError as error:
            raise UserInputError(f"{path}: perturbation column: {error}") from None
    if isinstance(table.index, pd.RangeIndex):
        labels = [c for c in table.columns if not pd.api.types.is_numeric_dtype(table[c])]
        if len(labels) != 1:  # a pycytominer map's one metadata column is its perturbation
            raise UserInputError(f"{path}: the map has no perturbation index; pass --perturbation-col")
        return table.set_index(labels[0])
    return table


def parse_threshold(text: str) -> tuple[float, float]:
    try:
        lower, upper = (float(part) for part in text.split(","))
    except ValueError:
        raise UserInputError(f"--threshold {text!r}: expected two fractions LOWER,UPPER such as 0.05,0.95") from None
    return lower, upper


def benchmark_command(args) -> int:
    from maefast.evaluate.benchmark import benchmark_maps
    from maefast.evaluate.relationships import DEFAULT_THRESHOLDS, KNOWN_SOURCES, MIN_ENTITIES

    labels = args.labels or [Path(p).stem for p in args.maps]
    if len(labels) != len(args.maps) or len(set(labels)) != len(labels):
        raise UserInputError(f"--label: expected {len(args.maps)} distinct labels, one per --map; got {labels}")
    thresholds = [parse_threshold(t) for t in args.thresholds] if args.thresholds else DEFAULT_THRESHOLDS
    sources = args.sources or KNOWN_SOURCES
    print(f"maefast benchmark: scoring {len(labels)} map(s) against {', '.join(map(str, sources))}", flush=True)
    table = benchmark_maps({label: read_map(path, args.perturbation_col) for label, path in zip(labels, args.maps)},
                           args.out, sources, thresholds,
                           args.min_entities if args.min_entities is not None else MIN_ENTITIES,
                           read_flops(args.flops, labels) if args.flops else None)
    print(recall_text(table, thresholds))
    print(f"wrote recall.csv, recall.json, recall_sweep.csv and plots to {args.out}")
    return 0


def recall_text(table: pd.DataFrame, thresholds) -> str:
    """The benchmark table as printed: per map and source the pairs, and at each threshold pair the recall with
    its 95% interval over the annotated pairs and the chance level."""
    shown = table[["map", "source", "n_pairs"]].copy()
    for lower, upper in thresholds:
        column = f"recall_{lower}_{upper}"
        low, high = table[f"{column}_low"], table[f"{column}_high"]
        shown[f"recall ({lower}, {upper}) [95% interval]"] = [
            "-" if pd.isna(value) else f"{value:.3f} [{a:.2f}, {b:.2f}]"
            for value, a, b in zip(table[column], low, high)]
        shown[f"chance ({lower}, {upper})"] = table[f"chance_{lower}_{upper}"].map("{:.2f}".format)
    return shown.to_string(index=False)


def read_flops(path: str | Path, labels: list[str]) -> dict[str, float]:
    """checkpoint -> cumulative training FLOPs, for every map label."""
    table = read_table(path)
    missing = {"checkpoint", "flops"} - set(table.columns)
    if missing:
        raise UserInputError(f"{path}: missing column(s) {sorted(missing)}; expected checkpoint,flops")
    flops = dict(zip(table["checkpoint"].astype(str), table["flops"]))
    unknown = [label for label in labels if label not in flops]
    if unknown:
        raise UserInputError(f"{path}: no flops for map label(s) {unknown}; label maps by checkpoint with --label")
    return {label: float(flops[label]) for label in labels}
