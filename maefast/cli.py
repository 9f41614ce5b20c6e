"""The `maefast` command. Each area adds its subcommands through a `add_commands(subparsers)` hook.

An error the user can act on (maefast.errors.UserInputError, an image that cannot be read, a file the
system refuses) is printed as one line with exit code 2; `maefast --debug ...` prints its traceback too.
Any other exception is a bug and propagates with its traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
import traceback

from maefast.errors import UserInputError

# modules that define add_commands(subparsers); each subcommand sets `func(args) -> int`
COMMAND_MODULES = ("maefast.cli_models", "maefast.cli_data", "maefast.cli_train", "maefast.cli_embed",
                   "maefast.cli_evaluate", "maefast.cli_demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maefast", description=__doc__.split("\n\n")[0])
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).add_commands(subparsers)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types reported as one line (see the module docstring); an unreadable image
    (maefast.data.ImageReadError) is a UserInputError too."""
    return UserInputError, OSError


def one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except user_errors() as error:
        if args.debug:
            traceback.print_exc()
        print(f"maefast {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
