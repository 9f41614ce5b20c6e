"""The `maefast` command: one module per command group (models, data, train, embed, evaluate, demo), each
adding its subcommands with `add_commands(subparsers)`; every subcommand sets `func(args) -> int`.

An error the user can act on (maefast.errors.UserInputError, an image that cannot be read, a file the
system refuses) is printed as one line with exit code 2, an interrupt (SIGINT) as one line with exit code
130; `maefast --debug ...` prints its traceback too. Any other exception is a bug and propagates with its
traceback.
"""
from __future__ import annotations

import argparse
import sys
import traceback

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="maefast", description=DESCRIPTION, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"maefast {maefast.__version__}")
    parser.add_argument("--debug", action="store_true", help="print the full traceback of an error")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_commands(subparsers)
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
    except KeyboardInterrupt:  # SIGINT outside a training loop (which checkpoints and stops), or twice
        if args.debug:
            traceback.print_exc()
        print(f"maefast {args.command}: interrupted (SIGINT); what was written completely is kept: run the same "
              f"command again to continue", file=sys.stderr)
        return INTERRUPTED
