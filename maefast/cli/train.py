"""`maefast train`: pretrain an MAE / CA-MAE from a recipe, on one CPU or many GPUs (torchrun)."""
from __future__ import annotations

from maefast.errors import UserInputError

INTERRUPTED = 130  # the shell's code for a job ended by SIGINT (128 + 2)


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("train",
                                   help="pretrain a model from a recipe (MAE, CA-MAE, MU-Net, weakly supervised)",
                                   description="Pretrain a model (MAE, CA-MAE, MU-Net, weakly supervised ViT) from a "
                                               "recipe. Many GPUs: torchrun --nproc-per-node N "
                                               "-m maefast.cli train ...")
    parser.add_argument("--recipe", default="debug",
                        help="built-in recipe name (see --list-recipes) or a YAML file")
    parser.add_argument("--out", required=False, help="run directory: checkpoints, metrics, images, encoder")
    parser.add_argument("--data", help="dataset path (same as --set data.path=...)")
    parser.add_argument("--max-steps", type=int, help="same as --set run.max_steps=N")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in --out from its newest intact checkpoint, with the same config")
    parser.add_argument("--allow-config-change", action="store_true",
                        help="with --resume: continue with config values (--set) other than the checkpoint's; "
                             "recorded in config_history.json")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=3e-5 (repeatable)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar (logs still go to metrics.csv)")
    parser.add_argument("--list-recipes", action="store_true", help="print the built-in recipes and exit")
    parser.set_defaults(func=train_command)


def train_command(args) -> int:
    from maefast.train.config import load_config, recipe_names
    if args.list_recipes:
        print("\n".join(recipe_names()))
        return 0
    if not args.out:
        raise UserInputError("--out is required: the directory for checkpoints, metrics and images")
    flags = {"data.path": args.data, "run.max_steps": args.max_steps}  # typed values, applied after --set
    config = load_config(args.recipe, args.assignments,
                         {key: value for key, value in flags.items() if value is not None})
    from maefast.train.loop import train
    summary = train(config, args.out, resume=args.resume, show_progress=not args.no_progress, recipe=args.recipe,
                    allow_config_change=args.allow_config_change)
    if summary.get("final_loss") is not None:
        print(f"maefast train: {summary['step']} steps, final loss {summary['final_loss']:.4f}, "
              f"{summary['total_flops'] / 1e12:.2f} TFLOP; outputs in {summary['out']}")
    return INTERRUPTED if summary.get("interrupted") == "SIGINT" else 0
