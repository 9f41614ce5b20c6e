"""`maefast train`: pretrain an MAE / CA-MAE from a recipe, on one CPU or many GPUs (torchrun)."""
from __future__ import annotations

import argparse

from maefast.errors import UserInputError

# stopped by a signal after writing a checkpoint: resumable, not finished (the shell's codes, 128 + the signal)
INTERRUPTED = 128 + 2      # SIGINT (Ctrl-C)
EXIT_PREEMPTED = 128 + 15  # SIGTERM (a scheduler's preemption), or a stop on another rank

DESCRIPTION = """\
Pretrain a model (MAE, CA-MAE, MU-Net, weakly supervised ViT) from a recipe. Many GPUs: torchrun
--nproc-per-node N -m maefast.cli train ...

SIGTERM (a scheduler's preemption) writes a checkpoint and exits with code 143, SIGINT (Ctrl-C) with 130;
--resume continues the run. --resume --max-steps N extends a run: a finished run's learning rate starts a new
cycle over the added steps (warm-up, then cosine decay), an unfinished one's decay stretches to the new end;
the command prints which."""


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("train",
                                   help="pretrain a model from a recipe (MAE, CA-MAE, MU-Net, weakly supervised)",
                                   description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="debug",
                        help="built-in recipe name (see --list-recipes) or a YAML file")
    parser.add_argument("--out", required=False, help="run directory: checkpoints, metrics, images, encoder")
    parser.add_argument("--data", help="dataset path (same as --set data.path=...; stored absolute)")
    parser.add_argument("--synthetic-data", action="store_true",
                        help="no data set: train on a synthetic screen rendered into --out/data "
                             "(same as --set data.synthetic=true)")
    parser.add_argument("--max-steps", type=int,
                        help="same as --set run.max_steps=N (default: the recipe's). With --resume, a new value "
                             "extends or shortens the run: the learning-rate schedule continues without a jump, "
                             "and the command prints how")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest intact checkpoint, with the same config "
                             "(a new --max-steps extends or shortens it)")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue with config values (--set) other than the checkpoint's; "
                             "recorded in config_history.json")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=3e-5, or an option of the model, e.g. "
                             "--set model.global_pool=avg (repeatable)")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bar: a plain line every 10 s instead (as when the output is not a "
                             "terminal); every logged step is in metrics.csv")
    parser.add_argument("--list-recipes", action="store_true", help="print the built-in recipes and exit")
    parser.set_defaults(func=train_command)


def train_command(args) -> int:
    from maefast.train.config import load_config, recipe_names
    if args.list_recipes:
        print("\n".join(recipe_names()))
        return 0
    if not args.out:
        raise UserInputError("--out is required: the directory for checkpoints, metrics and images")
    flags = {"data.path": args.data, "data.synthetic": args.synthetic_data or None,  # typed, applied after --set
             "run.max_steps": args.max_steps}
    config = load_config(args.recipe, args.assignments,
                         {key: value for key, value in flags.items() if value is not None})
    from maefast.train.loop import train
    summary = train(config, args.out, resume=args.resume, show_progress=not args.no_progress, recipe=args.recipe,
                    allow_config_change=args.allow_config_change)
    if summary.get("final_loss") is not None:
        print(f"maefast train: {summary['step']} steps, final loss {summary['final_loss']:.4f}, "
              f"{summary['total_flops'] / 1e12:.2f} TFLOP; outputs in {summary['out']}")
    if summary.get("skipped"):
        from maefast.data.decode import skipped_summary
        listed_in = f"{summary['out']}/summary.json"
        print(f"maefast train: {skipped_summary(summary['skipped'], listed_in)}")
    if summary.get("interrupted"):
        return INTERRUPTED if summary["interrupted"] == "SIGINT" else EXIT_PREEMPTED
    return 0
