"""The `maefast` command: one module per command group (models, data, train, embed, evaluate, demo), each
adding its subcommands with `add_commands(subparsers)`; every subcommand sets `func(args) -> int`.

An error the user can act on (maefast.errors.UserInputError, an image that cannot be read, a file the
system refuses) is printed as one line with exit code 2, an interrupt (SIGINT) as one line with exit code
130; `--debug`, anywhere on the command line, prints its traceback too. Any other exception is a bug and
propagates with its traceback. A training run stopped by SIGTERM exits with 143 (cli.train.EXIT_PREEMPTED,
the shell's code for a process ended by SIGTERM) after its checkpoint, so that a scheduler records the job as
preempted, not done.

Every option's help shows its default. The command modules import what their commands run (torch, the models)
inside the command functions, so that `maefast --help` and `maefast <command> --help` answer without torch.
"""
from __future__ import annotations

import argparse
import sys
import traceback
import warnings

import maefast
from maefast.cli import data, demo, embed, evaluate, models, train
from maefast.cli.train import INTERRUPTED
from maefast.errors import UserInputError

DESCRIPTION = """\
Masked-autoencoder pretraining and embedding for multi-channel microscopy (MAE, CA-MAE, masked U-Net and a
weakly supervised ViT, as in Kraus et al. 2023 / 2024): validate and pack a screen, pretrain, embed every
site, build maps of biology and benchmark them against known relationships (CORUM, HuMAP, Reactome,
SIGNOR, StringDB). `maefast demo` runs the papers' comparison end to end on a synthetic screen."""

EPILOG = """\
typical session:
  maefast data check /data/rxrx3 && maefast data pack /data/rxrx3 --out /data/rxrx3_packed
  maefast train --recipe mae_vit_large_patch8 --data /data/rxrx3_packed --out runs/vitl8
  maefast embed --checkpoint runs/vitl8 --data /data/rxrx3 --out emb/vitl8
  maefast map --embeddings emb/vitl8 --out maps/vitl8.parquet --perturbation-col perturbation --control EMPTY
  maefast benchmark --map maps/vitl8.parquet --out bench/vitl8
many GPUs: torchrun --nproc-per-node N -m maefast.cli train ...   (and embed)"""

COMMAND_GROUPS = (models, data, train, embed, evaluate, demo)


DEBUG_HELP = "print the full traceback of an error"


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Appends "(default: X)" to an option's help unless the help already states its default or the default says
    nothing (none, false, an empty list, or a default left to the config: argparse.SUPPRESS)."""

    def _get_help_string(self, action) -> str:
        text = action.help or ""
        if "default" in text or action.default in (None, False, [], "", argparse.SUPPRESS) or action.required:
            return text
        return f"{text} (default: %(default)s)"


class RawDefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter, DefaultsHelpFormatter):
    """DefaultsHelpFormatter for a command whose description is laid out by hand."""


def subcommand_parsers(parser: argparse.ArgumentParser):
    """Every parser below `parser` (subcommands of subcommands included)."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in dict.fromkeys(action.choices.values()):
                yield child
                yield from subcommand_parsers(child)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maefast", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=RawDefaultsHelpFormatter)
    parser.add_argument("--version", action="version", version=f"maefast {maefast.__version__}")
    parser.add_argument("--debug", action="store_true", help=DEBUG_HELP)
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(subparsers)
    for child in subcommand_parsers(parser):
        raw = issubclass(child.formatter_class, argparse.RawDescriptionHelpFormatter)
        child.formatter_class = RawDefaultsHelpFormatter if raw else DefaultsHelpFormatter
        if not child._subparsers:  # a command that runs: --debug after it too (SUPPRESS keeps an earlier one)
            child.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help=DEBUG_HELP)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """The exception types reported as one line (see the module docstring); an unreadable image
    (maefast.data.ImageReadError) is a UserInputError too."""
    return UserInputError, OSError


def one_line(error: BaseException) -> str:
    return "; ".join(line.strip() for line in str(error).splitlines() if line.strip()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    shown_warning = warnings.formatwarning
    if not args.debug:  # a warning is one line, as an error is; --debug keeps where it came from
        warnings.formatwarning = lambda message, *_, **__: f"maefast {args.command}: warning: {one_line(message)}\n"
    try:
        return int(args.func(args) or 0)
    except user_errors() as error:
        if args.debug:
            traceback.print_exc()
        print(f"maefast {args.command}: error: {one_line(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # SIGINT outside a training loop (which checkpoints and stops), or twice
        if args.debug:
            traceback.print_exc()
        print(f"maefast {args.command}: interrupted (SIGINT); what was written completely is kept: run the same "
              f"command again to continue", file=sys.stderr)
        return INTERRUPTED
    finally:
        warnings.formatwarning = shown_warning
