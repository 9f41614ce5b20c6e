"""`maefast map` (embeddings -> map of perturbations), `maefast benchmark` (maps or embeddings -> recall of known
relationships, clusters, block choice, plots), `maefast probe` (linear probes per block) and `maefast
drug-target` (compound-gene benchmark). The benchmark commands that read embeddings can add baselines (the
random-weights encoder, hand-crafted features) as rows of their tables."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from maefast.choices import BASELINES
from maefast.cli.embed import comma_separated
from maefast.errors import UserInputError
from maefast.io import atomic_path, write_json_atomic
from maefast.tables import (
    BLOCK_COLUMN,
    FEATURE_PREFIX,
    FORMATS,
    LEVELS,
    feature_columns,
    feature_names,
    metadata_column,
    read_table,
    write_table,
)

EMBEDDINGS_HELP = ("metadata + feature columns: an embedding job folder, a folder of parquet shards, or a parquet / "
                   ".h5ad (AnnData) / pycytominer .csv[.gz] file (published tables such as OpenPhenom's too)")


METADATA_HELP = ("a metadata table (CSV or parquet) joined on the columns it shares with the embeddings, for published "
                 "embeddings that carry only an id (OpenPhenom's RxRx3-core embeddings with metadata_rxrx3_core.csv)")


def add_map_options(parser, required: bool = True) -> None:
    """How embeddings become a map: the options of `maefast map` (shared by every command that builds maps)."""
    parser.add_argument("--perturbation-col", required=required, help="metadata column naming the perturbation")
    parser.add_argument("--control", required=required, action="append",
                        help="perturbation label of the control rows (repeat for several labels)")
    parser.add_argument("--batch-col", dest="batch_cols", action="extend", type=comma_separated, metavar="COLUMN",
                        help="metadata column(s) whose combination is the batch: repeat the flag or give a comma "
                             "list, e.g. --batch-col experiment --batch-col plate (RxRx plate numbers repeat in every "
                             "experiment); default: all rows one batch")
    parser.add_argument("--feature-prefix", default=FEATURE_PREFIX, help="feature columns start with this")
    parser.add_argument("--pca-components", type=int, default=128,
                        help="PCA components kept (clipped, with a warning, to what the data allows); 0 skips PCA")
    parser.add_argument("--no-tvn", action="store_true", help="skip typical variation normalization")
    parser.add_argument("--aggregate", choices=("mean", "median"), default="mean",
                        help="how a perturbation's rows become its map vector")


def add_embeddings_options(parser, level: str) -> None:
    parser.add_argument("--embeddings", action="append", required=True, help=EMBEDDINGS_HELP + " (repeatable)")
    parser.add_argument("--label", action="append", dest="labels",
                        help="name of each --embeddings in tables and plots (default: its file or folder name)")
    parser.add_argument("--level", choices=LEVELS, default=level, help=f"of an embedding job: sites or wells "
                                                                       f"(default {level})")
    parser.add_argument("--metadata", help=METADATA_HELP)
    add_map_options(parser)
    baselines = parser.add_argument_group("baselines", "rows beside the model's: the same architecture with random "
                                                       "weights, hand-crafted features of the same sites")
    baselines.add_argument("--baseline", action="append", dest="baselines", choices=list(BASELINES),
                           help="random (needs --checkpoint) or handcrafted; repeatable")
    baselines.add_argument("--data", help="the data set the embeddings came from (for the baselines)")
    baselines.add_argument("--checkpoint", help="the embedded checkpoint, whose architecture the random baseline uses")
    baselines.add_argument("--model", help="architecture of a bare weights --checkpoint")
    baselines.add_argument("--baseline-dir", help="where the baselines are computed and kept (default <out>/baselines)")


def add_commands(subparsers) -> None:
    build = subparsers.add_parser(
        "map", help="center-scale, PCA and TVN on controls, then aggregate embeddings per perturbation")
    build.add_argument("--embeddings", required=True, help=EMBEDDINGS_HELP)
    build.add_argument("--metadata", help=METADATA_HELP)
    build.add_argument("--out", required=True, help="the map, indexed by perturbation (.parquet, .h5ad or .csv[.gz])")
    build.add_argument("--format", default="parquet", choices=FORMATS,
                       help="h5ad: AnnData (obs = perturbations); pycytominer-*: Metadata_<perturbation> + features")
    add_map_options(build)
    build.add_argument("--keep-controls", action="store_true", help="keep the controls as map entities")
    build.add_argument("--block", type=int, help="of block-wise embeddings: the block to map (default: required "
                                                 "when there are several)")
    build.add_argument("--consistency", help="also write replicate consistency per perturbation to this CSV")
    build.add_argument("--magnitude", help="also write EFAAR's perturbation signal magnitude (energy distance from "
                                           "the controls, p-value) per perturbation to this CSV")
    build.add_argument("--null-perturbation", action="append", dest="null_perturbations",
                       help="--magnitude's null from these perturbations (e.g. unexpressed genes), as EFAAR; "
                            "default: a null from the controls")
    build.add_argument("--n-null", type=int, default=1000, help="control sets per replicate count in the null")
    build.add_argument("--seed", type=int, default=0, help="seed of the consistency null's control sets")
    build.set_defaults(func=map_command)

    probe = subparsers.add_parser("probe", help="linear probes of perturbation identity on held-out batches, per "
                                                "block (balanced accuracy and macro F1 with intervals)")
    add_embeddings_options(probe, level="well")
    probe.add_argument("--holdout-col", required=True, help="the experimental batch column: each batch is held out "
                                                            "in turn (e.g. experiment)")
    probe.add_argument("--normalize", action="store_true",
                       help="normalize on the controls first as `maefast map` does (--batch-col, --pca-components, "
                            "--no-tvn); default: the features as they are")
    probe.add_argument("--C", type=float, default=1.0, dest="inverse_regularization",
                       help="inverse L2 regularization strength of the logistic regression")
    probe.add_argument("--bootstrap", type=int, default=1000, help="resamples of the held-out wells for intervals")
    probe.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    probe.add_argument("--out", required=True, help="directory for probe.csv, probe.json and probe_by_block.png")
    probe.set_defaults(func=probe_command)

    drug = subparsers.add_parser("drug-target", help="compound-gene benchmark (RxRx3-core): known compound-target "
                                                     "pairs ranked among all, per concentration")
    add_embeddings_options(drug, level="site")
    drug.add_argument("--pairs", required=True, help="known compound-gene pairs: CSV with columns compound,gene and "
                                                     "optionally activity_nM (or EFAAR's treatment,gene_symbol,"
                                                     "nM_value)")
    drug.add_argument("--repeats", type=int, default=10, help="draws of each compound's negative genes, averaged")
    drug.add_argument("--min-negatives", type=int, default=20,
                      help="negative genes per compound: 2 per active gene, at least this many (EFAAR: 20)")
    drug.add_argument("--concentration-col", default="concentration",
                      help="metadata column of the compound concentration (empty for gene knockouts)")
    drug.add_argument("--direction", choices=("both", "positive"), default="both",
                      help="score pairs by |cosine| (both) or by the signed cosine (positive)")
    drug.add_argument("--block", type=int, help="of block-wise embeddings: the block to use (default: every block)")
    drug.add_argument("--bootstrap", type=int, default=1000, help="compound resamples for the intervals")
    drug.add_argument("--seed", type=int, default=0, help="seed of the negative draws and the bootstrap")
    drug.add_argument("--out", required=True, help="directory for drug_target.csv, drug_target.json and "
                                                   "drug_target.png")
    drug.set_defaults(func=drug_target_command)

    bench = subparsers.add_parser("benchmark", help="recall of known relationships by maps (or by embeddings, per "
                                                    "block), CORUM clusters, block choice, and plots")
    inputs = bench.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--map", action="append", dest="maps",
                        help="map file: parquet, .h5ad or pycytominer .csv[.gz] (repeatable)")
    inputs.add_argument("--embeddings", action="append",
                        help=EMBEDDINGS_HELP + "; maps are built per block with the map options (repeatable)")
    bench.add_argument("--label", action="append", dest="labels",
                       help="name of each map or embeddings in tables and plots (default: file name without suffix)")
    bench.add_argument("--out", required=True, help="directory for recall.csv, recall.json and the plots")
    embeddings = bench.add_argument_group("with --embeddings", "the map options of `maefast map`, the block choice "
                                                               "and the baselines")
    embeddings.add_argument("--level", choices=LEVELS, default="site", help="of an embedding job: sites or wells")
    embeddings.add_argument("--metadata", help=METADATA_HELP)
    add_map_options(embeddings, required=False)
    embeddings.add_argument("--pick-block", choices=("probe", "recall"),
                            help="choose each model's block on some batches of --split-col (by linear probe or by "
                                 "recall) and report every block on the other batches")
    embeddings.add_argument("--split-col", help="experimental batch column split into selection and evaluation "
                                                "batches")
    embeddings.add_argument("--holdout-col", help="--pick-block probe: batches held out within the selection "
                                                  "(default --split-col)")
    embeddings.add_argument("--selection-fraction", type=float, default=0.5, help="share of batches for the choice")
    embeddings.add_argument("--seed", type=int, default=0, help="seed of the split into selection and "
                                                                    "evaluation batches")
    embeddings.add_argument("--baseline", action="append", dest="baselines", choices=list(BASELINES),
                            help="add the random-weights encoder (random, needs --checkpoint) or hand-crafted "
                                 "features (handcrafted) of --data as rows; repeatable")
    embeddings.add_argument("--data", help="the data set the embeddings came from (for the baselines)")
    embeddings.add_argument("--checkpoint", help="the embedded checkpoint (for the random baseline)")
    embeddings.add_argument("--model", help="architecture of a bare weights --checkpoint")
    embeddings.add_argument("--baseline-dir", help="where baselines are computed and kept (default <out>/baselines)")
    bench.add_argument("--clusters", action="append",
                       help="also EFAAR's cluster benchmark: CORUM, GO or a cluster file (name<TAB>genes); "
                            "writes clusters.csv and clusters_<label>.csv")
    bench.add_argument("--min-cluster-genes", type=int, default=10, help="clusters with at least this many genes "
                                                                          "in the map (EFAAR: 10)")
    bench.add_argument("--source", action="append", dest="sources",
                       help="CORUM, HuMAP, Reactome, SIGNOR, StringDB or an entity1,entity2 file (default: all 5)")
    bench.add_argument("--threshold", action="append", dest="thresholds", metavar="LOWER,UPPER",
                       help="percentile threshold pair (default: 0.05,0.95 and 0.1,0.9)")
    bench.add_argument("--min-entities", type=int, default=None, help="smallest map to score (default 20)")
    bench.add_argument("--flops", help="CSV with columns checkpoint,flops; maps labelled by checkpoint -> "
                                       "recall_vs_flops.png")
    bench.set_defaults(func=benchmark_command)


def map_command(args) -> int:
    from maefast.embedding.outputs import read_embeddings
    from maefast.evaluate import aggregate_map, normalize_embeddings, perturbation_magnitude, replicate_consistency
    table = one_block(read_embeddings(args.embeddings, metadata=args.metadata), args.block, args.embeddings)
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
    if args.magnitude:
        magnitude = perturbation_magnitude(normalized, **options, null_perturbations=args.null_perturbations,
                                           n_null=args.n_null, seed=args.seed)
        write_csv(magnitude, args.magnitude)
        print(f"perturbation signal magnitude of {len(magnitude)} perturbations -> {args.magnitude}")
    return 0


def one_block(table: pd.DataFrame, block: int | None, source) -> pd.DataFrame:
    """The rows of one block of block-wise embeddings (without the block column); other tables as they are."""
    if BLOCK_COLUMN not in table.columns:
        if block is not None:
            raise UserInputError(f"{source}: --block {block} given, but the embeddings are not block-wise")
        return table
    blocks = sorted(table[BLOCK_COLUMN].unique())
    if block is None and len(blocks) == 1:
        block = blocks[0]
    if block not in blocks:
        raise UserInputError(f"{source}: block-wise embeddings of blocks {blocks}: choose one with --block")
    return table[table[BLOCK_COLUMN] == block].drop(columns=BLOCK_COLUMN).reset_index(drop=True)


def write_csv(table: pd.DataFrame, path) -> None:
    with atomic_path(path) as temporary:
        table.to_csv(temporary, index=False)


def map_options(args):
    from maefast.evaluate.blocks import MapOptions
    if not args.perturbation_col or not args.control:
        raise UserInputError("building maps needs --perturbation-col and --control")
    return MapOptions(perturbation_col=args.perturbation_col, control_label=args.control, batch_col=args.batch_cols,
                      pca_components=args.pca_components or None, tvn=not args.no_tvn, aggregate=args.aggregate)


def labelled(paths: list[str], labels: list[str] | None) -> list[str]:
    labels = labels or [Path(p.rstrip("/")).stem for p in paths]
    if len(labels) != len(paths) or len(set(labels)) != len(labels):
        raise UserInputError(f"--label: expected {len(paths)} distinct labels, one per input; got {labels}")
    return labels


def embeddings_tables(args, out: Path) -> dict[str, pd.DataFrame]:
    """label -> embeddings (features named by --feature-prefix become feature_*), the baselines added."""
    from maefast.embedding.outputs import read_embeddings
    tables = {}
    for label, path in zip(labelled(args.embeddings, args.labels), args.embeddings):
        tables[label] = standard_features(read_embeddings(path, level=args.level, metadata=args.metadata),
                                          args.feature_prefix, path)
    for kind in args.baselines or []:
        tables[BASELINES[kind]] = baseline_table(args, kind, out, next(iter(tables.values())))
    return tables


def standard_features(table: pd.DataFrame, prefix: str, source) -> pd.DataFrame:
    """`table` with its features (the columns starting with `prefix`) under maefast's names (feature_0000, ...)."""
    features = feature_columns(table, prefix, required=False)
    if not features:
        raise UserInputError(f"{source}: no columns start with --feature-prefix {prefix!r}")
    if prefix == FEATURE_PREFIX:
        return table
    renamed = dict(zip(features, feature_names(len(features))))
    return table.drop(columns=feature_columns(table, required=False)).rename(columns=renamed)


def baseline_table(args, kind: str, out: Path, model_table: pd.DataFrame) -> pd.DataFrame:
    """A baseline's embeddings of --data, at the level and blocks of the model's table."""
    from maefast.embedding.baselines import baseline_embeddings
    if not args.data or (kind == "random" and not args.checkpoint):
        raise UserInputError(f"--baseline {kind} needs --data" + (" and --checkpoint" if kind == "random" else ""))
    options = {}
    if kind == "random" and BLOCK_COLUMN in model_table.columns:
        options["blocks"] = sorted(int(b) for b in model_table[BLOCK_COLUMN].unique())
    return baseline_embeddings(kind, checkpoint=args.checkpoint, data=args.data, model=args.model,
                               out=Path(args.baseline_dir) if args.baseline_dir else out / "baselines",
                               level=args.level, **options)


def probe_command(args) -> int:
    from maefast.evaluate import plot_scores_by_block
    from maefast.evaluate.probe import linear_probe, per_block

    out = Path(args.out)
    options = map_options(args)
    results = []
    for label, table in embeddings_tables(args, out).items():
        def score(rows):
            rows = options.normalize(rows) if args.normalize else rows
            return linear_probe(rows, perturbation_col=args.perturbation_col, holdout_col=args.holdout_col,
                                control_label=args.control, C=args.inverse_regularization,
                                n_bootstrap=args.bootstrap, seed=args.seed)
        results.append(per_block(table, score).assign(label=label))
    table = pd.concat(results, ignore_index=True)
    table = table[["label", BLOCK_COLUMN] + [c for c in table.columns if c not in ("label", BLOCK_COLUMN)]]
    write_csv(table, out / "probe.csv")
    write_json_atomic(out / "probe.json", json.loads(table.to_json(orient="records")))
    if table[BLOCK_COLUMN].notna().any():
        plot_scores_by_block(table, out / "probe_by_block.png", "balanced_accuracy",
                             chance=float(table["chance"].mean()),
                             title=f"linear probe of {args.perturbation_col}, {args.holdout_col} held out")
    print(table.to_string(index=False))
    print(f"wrote probe.csv, probe.json{' and probe_by_block.png' if table[BLOCK_COLUMN].notna().any() else ''} "
          f"to {out}")
    return 0


def drug_target_command(args) -> int:
    from maefast.evaluate.drug_target import compound_gene_maps, drug_target_benchmark, load_compound_targets
    from maefast.evaluate.plots import plot_drug_target

    out = Path(args.out)
    options = map_options(args)
    pairs = load_compound_targets(args.pairs)
    results = []
    for label, table in embeddings_tables(args, out).items():
        if args.block is not None and BLOCK_COLUMN in table.columns:
            table = table[table[BLOCK_COLUMN] == args.block]
        blocks = sorted(table[BLOCK_COLUMN].unique()) if BLOCK_COLUMN in table.columns else [None]
        for block in blocks:
            rows = table if block is None else table[table[BLOCK_COLUMN] == block].drop(columns=BLOCK_COLUMN)
            gene_map, compound_map = compound_gene_maps(
                options.normalize(rows), perturbation_col=options.perturbation_col,
                concentration_col=args.concentration_col, control_label=options.control_label,
                aggregate=options.aggregate)
            result = drug_target_benchmark(gene_map, compound_map, pairs, direction=args.direction,
                                           min_negatives=args.min_negatives, repeats=args.repeats,
                                           n_bootstrap=args.bootstrap, seed=args.seed)
            results.append(result.assign(label=label, block=block))
    table = pd.concat(results, ignore_index=True)
    table = table[["label", BLOCK_COLUMN] + [c for c in table.columns if c not in ("label", BLOCK_COLUMN)]]
    write_csv(table, out / "drug_target.csv")
    write_json_atomic(out / "drug_target.json", json.loads(table.to_json(orient="records")))
    plot_drug_target(table, out / "drug_target.png")
    print(table[["label", BLOCK_COLUMN, "concentration", "n_active_pairs", "auroc", "auroc_low", "auroc_high",
                 "average_precision", "prevalence"]].to_string(index=False))
    print(f"wrote drug_target.csv, drug_target.json and drug_target.png to {out}")
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
    from maefast.evaluate.blocks import benchmark_embeddings
    from maefast.evaluate.relationships import DEFAULT_THRESHOLDS, KNOWN_SOURCES, MIN_ENTITIES

    thresholds = [parse_threshold(t) for t in args.thresholds] if args.thresholds else DEFAULT_THRESHOLDS
    sources = args.sources or KNOWN_SOURCES
    min_entities = args.min_entities if args.min_entities is not None else MIN_ENTITIES
    out = Path(args.out)
    inputs = args.maps or args.embeddings
    print(f"maefast benchmark: scoring {len(inputs)} input(s) against {', '.join(map(str, sources))}", flush=True)
    if args.maps:
        if args.pick_block or args.baselines:
            raise UserInputError("--pick-block and --baseline need --embeddings (maps hold no blocks or data)")
        labels = labelled(args.maps, args.labels)
        maps = {label: read_map(path, args.perturbation_col) for label, path in zip(labels, args.maps)}
        table = benchmark_maps(maps, out, sources, thresholds, min_entities,
                               read_flops(args.flops, labels) if args.flops else None)
    else:
        if args.flops:
            raise UserInputError("--flops labels maps by checkpoint: use it with --map")
        table, maps = benchmark_embeddings(embeddings_tables(args, out), out, map_options(args), sources=sources,
                                           thresholds=thresholds, min_entities=min_entities,
                                           pick_block=args.pick_block, split_col=args.split_col,
                                           holdout_col=args.holdout_col, selection_fraction=args.selection_fraction,
                                           seed=args.seed)
    if args.clusters:
        cluster_tables(args, out, maps)
    print(recall_text(table, thresholds))
    print(f"wrote recall.csv, recall.json, recall_sweep.csv and plots to {out}")
    return 0


def recall_text(table: pd.DataFrame, thresholds) -> str:
    """The benchmark table as printed: per map and source the pairs, and at each threshold pair the recall with
    its 95% interval over the annotated pairs and the chance level."""
    shown = table[[column for column in ("map", BLOCK_COLUMN, "source", "n_pairs") if column in table.columns]].copy()
    for lower, upper in thresholds:
        column = f"recall_{lower}_{upper}"
        low, high = table[f"{column}_low"], table[f"{column}_high"]
        shown[f"recall ({lower}, {upper}) [95% interval]"] = [
            "-" if pd.isna(value) else f"{value:.3f} [{a:.2f}, {b:.2f}]"
            for value, a, b in zip(table[column], low, high)]
        shown[f"chance ({lower}, {upper})"] = table[f"chance_{lower}_{upper}"].map("{:.2f}".format)
    return shown.to_string(index=False)


def cluster_tables(args, out: Path, maps: dict) -> None:
    """EFAAR's cluster benchmark of every map: clusters_<map>_<source>.csv per map, the summary in clusters.csv."""
    from maefast.evaluate.clusters import cluster_benchmark, summarize_clusters
    summary = []
    for label, perturbation_map in maps.items():
        for source in args.clusters:
            clusters = cluster_benchmark(perturbation_map, source, args.min_cluster_genes)
            name = Path(source).stem if Path(source).suffix else source
            write_csv(clusters, out / f"clusters_{label}_{name}.csv".replace(" ", "_"))
            summary.append({"map": label, "source": name, **summarize_clusters(clusters)})
    write_csv(pd.DataFrame(summary), out / "clusters.csv")
    print(pd.DataFrame(summary).to_string(index=False))


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
