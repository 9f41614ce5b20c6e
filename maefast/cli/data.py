"""`maefast data ...`: synth, check, pack and info for microscopy datasets (see docs/data.md)."""
from __future__ import annotations

import argparse

from maefast.data.decode import ERROR_POLICIES, skipped_summary
from maefast.data.layouts import LAYOUTS


def add_commands(subparsers) -> None:
    data = subparsers.add_parser("data", help="datasets: synthetic screen, validation, packing")
    commands = data.add_subparsers(dest="data_command", required=True)

    synth = commands.add_parser("synth", help="render a synthetic cell-painting screen")
    synth.add_argument("--out", required=True, help="output folder")
    synth.add_argument("--layout", choices=("rxrx", "jump", "rxrx3-core"), default="rxrx",
                       help="rxrx: PNG files; jump: TIFF files and load_data.csv; rxrx3-core: parquet shards of "
                            "encoded channel images and metadata_rxrx3_core.csv, as RxRx3-core is published")
    synth.add_argument("--genes", type=int, default=100, help="number of gene perturbations (from CORUM complexes)")
    synth.add_argument("--replicates", type=int, default=2, help="wells per gene (on different plates)")
    synth.add_argument("--plates", type=int, default=4, help="plates in all (384 wells each)")
    synth.add_argument("--experiments", type=int, default=2, help="experiments (batches); divides --plates")
    synth.add_argument("--controls", type=int, default=16, help="control wells per plate")
    synth.add_argument("--sites", type=int, default=2, help="sites per well")
    synth.add_argument("--size", type=int, default=512, help="site width and height in pixels")
    synth.add_argument("--channels", type=int, default=6,
                       help="channels per site (the first 6 are Cell Painting's; more are mixtures of them)")
    synth.add_argument("--bit-depth", type=int, choices=(8, 16), default=None, help="default: 8 rxrx, 16 jump")
    synth.add_argument("--codec", choices=("tiff", "jpeg2000", "jpeg", "png"), default=None,
                       help="the channel images' format: jump tiff (default), jpeg2000 (lossless) or jpeg (8-bit); "
                            "rxrx3-core jpeg2000 (default, lossless, as published) or png")
    synth.add_argument("--effect-size", type=float, default=1.0,
                       help="scale of each complex's phenotype (0: no perturbation effect)")
    synth.add_argument("--compounds", type=int, default=0,
                       help="compounds that mimic their target genes' knockouts, dose-dependently (writes "
                            "compound_targets.csv, the known pairs of `maefast drug-target`)")
    synth.add_argument("--concentrations", type=concentration_list, default="0.1,1,10",
                       help="compound concentrations in micromolar, comma-separated")
    synth.add_argument("--complexes", default=None, help="complex table (TSV: name, genes); default CORUM clusters")
    synth.add_argument("--seed", type=int, default=0, help="the screen is a pure function of its settings and seed")
    synth.add_argument("--workers", type=int, default=None, help="rendering processes (default: up to 2)")
    synth.set_defaults(func=synth_command)

    check = commands.add_parser("check", help="validate a dataset (files, sizes, dtypes, ids, metadata)")
    _dataset_arguments(check)
    check.add_argument("--workers", type=int, default=2, help="threads decoding files")
    check.add_argument("--json", default=None, help="also write the full report to this JSON file")
    check.set_defaults(func=check_command)

    pack = commands.add_parser("pack", help="pack a dataset into shards for fast region-of-interest reads")
    _dataset_arguments(pack)
    pack.add_argument("--out", required=True, help="folder of the packed data set (resumable)")
    pack.add_argument("--shard-images", type=int, default=64, help="images per shard file")
    pack.add_argument("--on-error", choices=ERROR_POLICIES, default="raise",
                      help="an image that cannot be read: stop, or skip it (listed in the manifest)")
    pack.add_argument("--workers", type=int, default=2, help="threads decoding files")
    pack.set_defaults(func=pack_command)

    info = commands.add_parser("info", help="describe a dataset")
    _dataset_arguments(info)
    info.set_defaults(func=info_command)


def _dataset_arguments(parser) -> None:
    parser.add_argument("path", help="dataset folder or load_data table")
    parser.add_argument("--layout", choices=("auto", *LAYOUTS), default="auto",
                        help="the data set's layout (auto: recognized from its files)")
    parser.add_argument("--channels", default=None, help="comma-separated channel names to select, in order")
    parser.add_argument("--illumination", choices=("raw", "illum"), default="raw",
                        help="illum: divide JUMP images by their illumination functions")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="let file paths in the metadata leave the data root (refused by default)")


def concentration_list(text: str) -> tuple[float, ...]:
    try:
        values = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive numbers separated by commas, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"concentrations must be positive, got {text!r}")
    return values


def _channels(args):
    return None if args.channels is None else [c.strip() for c in args.channels.split(",")]


def synth_command(args) -> int:
    from maefast.data.synthetic import synth_screen
    out = synth_screen(args.out, layout=args.layout, num_genes=args.genes, replicates=args.replicates,
                       num_plates=args.plates, num_experiments=args.experiments, controls_per_plate=args.controls,
                       sites_per_well=args.sites, size=args.size, channels=args.channels, bit_depth=args.bit_depth,
                       effect_size=args.effect_size, complexes=args.complexes, seed=args.seed, workers=args.workers,
                       num_compounds=args.compounds, concentrations=args.concentrations, codec=args.codec)
    print(f"wrote synthetic {args.layout} screen to {out}")
    return 0


def check_command(args) -> int:
    from maefast.data.check import check_dataset
    from maefast.io import write_json_atomic
    report = check_dataset(args.path, args.layout, _channels(args), args.illumination, args.workers,
                           allow_outside_root=args.allow_outside_root)
    print(report.text())
    if args.json:
        write_json_atomic(args.json, dict(path=report.path, layout=report.layout, images=report.images,
                                          files=report.files, counts=report.counts(), problems=report.problems))
    return 0 if report.ok else 1


def pack_command(args) -> int:
    from maefast.data import open_dataset
    from maefast.data.packed import pack_dataset
    from maefast.io import read_json
    dataset = open_dataset(args.path, args.layout, _channels(args), args.illumination, args.allow_outside_root)
    out = pack_dataset(dataset, args.out, args.shard_images, args.on_error, args.workers)
    manifest = read_json(out / "manifest.json")
    skipped = [entry for shard in manifest["shards"].values() for entry in shard["skipped"]]
    print(f"packed {len(dataset) - len(skipped)} images into {out}")
    if skipped:
        print(f"maefast data pack: {skipped_summary(skipped, f'{out}/manifest.json')}")
    return 0


def info_command(args) -> int:
    from maefast.data import open_dataset
    dataset = open_dataset(args.path, args.layout, _channels(args), args.illumination, args.allow_outside_root)
    print(dataset.describe())
    table = dataset.table
    plates = table.groupby("batch")["plate"].nunique()  # plate numbers repeat in every experiment (batch)
    fewest, most = plates.min(), plates.max()
    per_batch = f"{fewest}" if fewest == most else f"{fewest} to {most}"
    print(f"batches {len(plates)}, plates {int(plates.sum())} ({per_batch} per batch), perturbations "
          f"{table['perturbation'].nunique()}, control images {int(table['is_control'].sum())}")
    return 0
