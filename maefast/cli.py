"""The `maefast` command. Each area adds its subcommands through a `add_commands(subparsers)` hook."""
from __future__ import annotations

import argparse
import importlib
import sys

# modules that define add_commands(subparsers); each subcommand sets `func(args) -> int`
COMMAND_MODULES = ("maefast.cli_models", "maefast.cli_data", "maefast.cli_train", "maefast.cli_embed",
                   "maefast.cli_evaluate", "maefast.cli_demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maefast", description=__doc__)
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, OSError, KeyError, TypeError, ImportError) as error:  # OSError: files, the Hub
        print(f"maefast {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
