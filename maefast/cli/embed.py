"""`maefast embed`: a trained encoder over a whole data set, tiled, batched, sharded and resumable;
`maefast export`: its output (or a map) in another format.

The flags of `maefast embed` are the fields of maefast.embedding.config.EmbedConfig (--batch-size is
batch_size, ...), with its defaults and choices: each flag's text becomes the field's typed value here, and
`--set key=value` sets any field as YAML, as `maefast train --set` does.
"""
from __future__ import annotations

import argparse
import dataclasses

from maefast.data.decode import skipped_summary
from maefast.embedding.config import BLOCK_NAMES, CHOICES, EmbedConfig, block_selection, embed_config
from maefast.fields import field_types, parse_value, union_members
from maefast.tables import FEATURE_PREFIX, FORMATS, LEVELS


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("embed", help="embed a data set with a trained encoder",
                                   description="Embed every site of a data set. Many GPUs: torchrun "
                                               "--nproc-per-node N -m maefast.cli embed ...")
    for setting in (s for s in dataclasses.fields(EmbedConfig) if s.metadata.get("flag", True)):
        add_setting_flag(parser, setting, field_types(EmbedConfig)[setting.name], CHOICES.get(setting.name))
    parser.add_argument("--out", required=True, help="output directory (shards/, wells.parquet, manifest.json)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="set a config value, e.g. --set tile_batch=256, or an option of the model, e.g. --set "
                             "model.global_pool=avg (repeatable; the flags win)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: a plain line every 10 s instead (as when the output is not a terminal)")
    parser.set_defaults(func=embed_command)
    add_export_command(subparsers)


def add_export_command(subparsers) -> None:
    export = subparsers.add_parser("export", help="convert embeddings or a map to AnnData / pycytominer / parquet",
                                   description="Convert a finished embedding job, a parquet / h5ad / pycytominer "
                                               "table or a map into another format (written atomically).")
    export.add_argument("--embeddings", required=True,
                        help="embedding job folder, folder of parquet shards, or a parquet / .h5ad / .csv[.gz] file")
    export.add_argument("--out", required=True, help="output file (.parquet, .h5ad, .csv or .csv.gz)")
    export.add_argument("--format", required=True, choices=FORMATS,
                        help="h5ad: AnnData; pycytominer-*: Metadata_ columns, then features; parquet: maefast's")
    export.add_argument("--level", default="site", choices=LEVELS, help="of an embedding job: sites or wells")
    export.add_argument("--feature-prefix", default=FEATURE_PREFIX, help="feature columns start with this")
    export.set_defaults(func=export_command)


def add_setting_flag(parser, setting: dataclasses.Field, expected, choices) -> None:
    """--<name> for a config field: its value becomes the field's typed value (the text of a choice, a number,
    a comma-separated list, block names or indices, a flag for a bool that defaults to false); given or not, the
    config's default stands until it is (argparse.SUPPRESS)."""
    flag = "--" + setting.name.replace("_", "-")
    default = setting.default_factory() if setting.default_factory is not dataclasses.MISSING else setting.default
    shown_default = "" if default in (None, "", [], False) else f" (default: {shown(default)})"
    options = dict(dest=setting.name, default=argparse.SUPPRESS, required=setting.metadata.get("required", False),
                   help=setting.metadata["help"] + shown_default)
    members = union_members(expected)
    if expected is bool:
        parser.add_argument(flag, action="store_true", **options)
        return
    if expected == list[str]:
        options["type"], options["metavar"] = comma_separated, "A,B,..."
    elif list[int] in members:  # blocks: a name or block indices
        options["type"], options["metavar"] = block_choice, "{" + ",".join(BLOCK_NAMES) + ",I,J,...}"
    elif set(members) == {str, bool}:
        options["type"], options["metavar"] = typed_choice(choices), "{" + ",".join(map(shown, choices)) + "}"
    elif int in members and str in members:
        options["type"] = auto_or_positive_integer
    elif int in members:
        options["type"] = int
    elif choices is not None:
        options["choices"] = choices
    parser.add_argument(flag, **options)


def comma_separated(text: str) -> list[str]:
    return [item.strip() for item in text.split(",") if item.strip()]


def typed_choice(choices):
    """The YAML value of the text (true / false, also on / off), refused unless it is one of `choices`."""
    def parse(text: str):
        value = parse_value(text)
        if value not in choices or not isinstance(value, (str, bool)):
            raise argparse.ArgumentTypeError(f"expected one of {', '.join(map(shown, choices))}; got {text!r}")
        return value
    return parse


def shown(choice) -> str:
    """A choice as the command line writes it (true / false for a bool)."""
    return str(choice).lower() if isinstance(choice, bool) else str(choice)


def auto_or_positive_integer(text: str) -> int | str:
    if text == "auto":
        return text
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected auto or a positive number of tiles, got {text!r}")
    return int(text)


def block_choice(text: str) -> str | list[int]:
    """--blocks: all, last, or block indices such as 8,12,16, as EmbedConfig.blocks holds them."""
    value = block_selection(text)
    if isinstance(value, str) and value not in BLOCK_NAMES:
        raise argparse.ArgumentTypeError(f"expected {' or '.join(BLOCK_NAMES)} or block indices such as 8,12,16, "
                                         f"got {text!r}")
    return value


def embed_command(args) -> int:
    from maefast.embedding.api import run_embed
    flags = {f.name: getattr(args, f.name) for f in dataclasses.fields(EmbedConfig) if hasattr(args, f.name)}
    summary = run_embed(embed_config(flags, args.assignments), args.out, show_progress=not args.no_progress)
    if "complete" in summary:  # rank 0
        state = "complete" if summary["complete"] else f"incomplete (missing shards {summary.get('missing_shards')})"
        print(f"maefast embed: {summary['num_shards']} shards, {state}, "
              f"{summary['crops_per_s']:.1f} crops/s ({summary['tile_batch']} tiles per forward); {args.out}")
        if summary.get("skipped"):
            print(f"maefast embed: {skipped_summary(summary['skipped'], f'{args.out}/manifest.json')}")
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
