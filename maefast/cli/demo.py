"""`maefast demo`: the papers' comparison end to end on a synthetic screen (see maefast/demo.py)."""
from __future__ import annotations


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="synthetic screen -> MAE, CA-MAE, MU-Net, WSL, hand-crafted, "
                                                "random ViT -> maps -> recall of known relationships")
    parser.add_argument("--out", default="runs/demo", help="output directory (resumable)")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--fast", action="store_true", help="about 2 minutes on 2 CPU cores")
    speed.add_argument("--gpu", action="store_true", help="the larger GPU setting (ViT-S/16 at 256 px)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.set_defaults(func=demo_command)


def demo_command(args) -> int:
    from maefast.demo import run_demo
    profile = "fast" if args.fast else "gpu" if args.gpu else "default"
    run_demo(args.out, profile, seed=args.seed, device=args.device)
    return 0
