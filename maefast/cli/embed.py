"""`maefast embed`: a trained encoder over a whole data set, tiled, batched, sharded and resumable;
`maefast export`: its output (or a map) in another format."""
from __future__ import annotations

import argparse

from maefast.data.decode import ERROR_POLICIES
from maefast.tables import FEATURE_PREFIX, FORMATS, LEVELS


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("embed", help="embed a data set with a trained encoder",
                                   description="Embed every site of a data set. Many GPUs: torchrun "
                                               "--nproc-per-node N -m maefast.cli embed ...")
    parser.add_argument("--checkpoint", required=True,
                        help="maefast checkpoint directory, training run directory, reference (OpenPhenom) folder, "
                             "Hugging Face Hub id (owner/name), or timm/reference weights file")
    parser.add_argument("--model", help="architecture of a bare weights file, e.g. vit_large_patch8_256")
    parser.add_argument("--weights-layout", default="auto", choices=("auto", "maefast", "timm", "reference"))
    parser.add_argument("--trust-pickle", action="store_true",
                        help="allow weights stored as a torch pickle (as the reference's model.safetensors is), "
                             "loaded with torch.load(weights_only=True)")
    parser.add_argument("--data", required=True, help="data set root (rxrx, jump or packed)")
    parser.add_argument("--layout", default="auto", help="data set layout: auto, rxrx, jump, packed")
    parser.add_argument("--channels", help="comma-separated channel names to use, in order")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="let file paths in the data set's metadata leave its root (refused by default)")
    parser.add_argument("--out", required=True, help="output directory (shards/, wells.parquet, manifest.json)")
    parser.add_argument("--pool", default="mean", choices=("mean", "cls"))
    parser.add_argument("--per-channel", action="store_true", help="CA-MAE: one embedding per channel, concatenated")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (each gives several tiles)")
    parser.add_argument("--shard-size", type=int, default=1024, help="images per output shard")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--compile", default="auto", choices=("auto", "on", "off"),
                        help="torch.compile with fixed shapes and CUDA graphs (auto: on CUDA)")
    parser.add_argument("--attention", default="auto",
                        help="attention kernel of every site: auto (on CUDA the fastest, timed once) or one of "
                             "triton, sdpa, cudnn, flash, efficient, math, flash_attn, fa3, fa4")
    parser.add_argument("--tile-batch", type=tile_batch, default="auto",
                        help="tiles per encoder forward: auto (on CUDA the largest batch that fits and still "
                             "gets faster, timed once; elsewhere one loader batch's tiles) or a number")
    parser.add_argument("--blocks", type=block_list, default=None,
                        help="embed these encoder blocks from one forward, one row per site and block (a block "
                             "column): all, last, or 0-based indices such as 8,12,16 (negative: from the end); "
                             "default: the final embedding only")
    parser.add_argument("--backend", default="auto", choices=("auto", "dali", "torch"), help="loader backend")
    parser.add_argument("--on-error", default="raise", choices=ERROR_POLICIES)
    parser.add_argument("--workers", type=int, default=None, help="loader threads / processes")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--format", default="parquet", choices=FORMATS,
                        help="also write the finished sites and wells as AnnData (sites.h5ad, wells.h5ad) or "
                             "pycytominer-style tables (sites.pycytominer.csv.gz / .parquet); parquet shards always")
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=embed_command)

    export = subparsers.add_parser("export", help="convert embeddings or a map to AnnData / pycytominer / parquet",
                                   description="Convert a finished embedding job, a parquet / h5ad / pycytominer "
                                               "table or a map into another format (written atomically).")
    export.add_argument("--embeddings", required=True,
                        help="embedding job folder, folder of parquet shards, or a parquet / .h5ad / .csv[.gz] file")
    export.add_argument("--out", required=True, help="output file (.parquet, .h5ad, .csv or .csv.gz)")
    export.add_argument("--format", required=True, choices=FORMATS)
    export.add_argument("--level", default="site", choices=LEVELS, help="of an embedding job: sites or wells")
    export.add_argument("--feature-prefix", default=FEATURE_PREFIX, help="feature columns start with this")
    export.set_defaults(func=export_command)


def tile_batch(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a positive number of tiles, got {text!r}")
    return int(text)


def block_list(text: str) -> str | list[int]:
    if text in ("all", "last"):
        return text
    try:
        return [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected all, last or block indices such as 8,12,16, got {text!r}") from None


def embed_command(args) -> int:
    from maefast.embedding.api import embed
    channels = [c.strip() for c in args.channels.split(",")] if args.channels else None
    summary = embed(args.checkpoint, args.data, args.out, model=args.model, weights_layout=args.weights_layout,
                    trust_pickle=args.trust_pickle, layout=args.layout, channels=channels,
                    allow_outside_root=args.allow_outside_root, pool=args.pool,
                    per_channel=args.per_channel, batch_size=args.batch_size, shard_size=args.shard_size,
                    precision=args.precision, backend=args.backend, on_error=args.on_error, workers=args.workers,
                    device=args.device, show_progress=not args.no_progress, format=args.format,
                    compile=args.compile, attention=args.attention, tile_batch=args.tile_batch, blocks=args.blocks)
    if "complete" in summary:  # rank 0
        state = "complete" if summary["complete"] else f"incomplete (missing shards {summary.get('missing_shards')})"
        print(f"maefast embed: {summary['num_shards']} shards, {state}, "
              f"{summary['crops_per_s']:.1f} crops/s ({summary['tile_batch']} tiles per forward); {args.out}")
        for path in summary.get("exports", []):
            print(f"maefast embed: wrote {path}")
    return 0


def export_command(args) -> int:
    from maefast.embedding.outputs import read_embeddings
    from maefast.tables import write_table
    table = read_embeddings(args.embeddings, level=args.level)
    write_table(table, args.out, args.format, feature_prefix=args.feature_prefix)
    print(f"maefast export: {len(table)} rows -> {args.out} ({args.format})")
    return 0
