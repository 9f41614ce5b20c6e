"""`maefast demo`: the papers' comparison end to end on a synthetic screen (see maefast/demo.py)."""
from __future__ import annotations

import argparse

from maefast.choices import DEVICES

DESCRIPTION = """\
Renders a synthetic Cell-Painting-like screen whose genes share a phenotype by CORUM complex, trains an MAE,
a CA-MAE, a masked U-Net and a weakly supervised ViT on it, embeds it with each (and with hand-crafted
features, a random ViT and two reference features), builds maps and writes, under --out: results.md (recall
per method and source with 95% intervals and pair counts, a test against chance and the random ViT, and why
a trained system is at chance when it is), results.csv, recall_bars.png and gene_map_pca.png. Resumable.

default: 80 genes, tiny ViTs on 64 x 64 crops, 600 steps each; about 7 minutes on two idle CPU cores.
--fast:  40 genes, 60 steps; about a minute. At these sizes the MAE and CA-MAE are expected to be at
         chance (the report says why; docs/demo.md); --steps trains longer.
"""

# What `maefast demo --gpu` (maefast.demo.PROFILES["gpu"]) runs and is expected to cost on one GPU.
# EXPECTATIONS, not measurements: no GPU run of this profile has been recorded. Training FLOPs from
# maefast.flops; docs/demo.md has the arithmetic.
GPU_EXPECTATIONS = """\
--gpu (expected, not measured): 300 genes x 4 replicates on 4 plates, 48 control wells per plate (2,784 sites
of 512 x 512 px, 6 channels, and a 5-channel JUMP copy); ViT-S/16 MAE and CA-MAE, a small masked U-Net and a
weakly supervised ViT-S/16, each 3,000 steps of 128 images x 4 crops of 256 x 256 (1.5 M crops), a random
ViT-S/16, hand-crafted features. About 1.35 EFLOP of training (CA-MAE and MU-Net 90% of it): 1.3 to 2.5 hours
on one H100 at 150 to 300 TFLOP/s achieved, plus roughly 15 to 30 minutes of rendering, hand-crafted features
and embedding; about 11 GB of disk."""


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("demo", help="synthetic screen -> MAE, CA-MAE, MU-Net, WSL, hand-crafted, "
                                                "random ViT -> maps -> recall of known relationships",
                                   description=DESCRIPTION + "\n" + GPU_EXPECTATIONS,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/demo", help="output directory (resumable)")
    speed = parser.add_mutually_exclusive_group()
    speed.add_argument("--fast", action="store_true", help="the small CPU setting: 40 genes, 60 steps per system")
    speed.add_argument("--gpu", action="store_true",
                       help="the one-GPU setting: ViT-S/16 systems at 256 x 256 crops, 3,000 steps each "
                            "(expected 1.5 to 3 hours on one H100; not measured, see above)")
    parser.add_argument("--steps", type=int, default=None,
                        help="training steps per system instead of the setting's (600 default, 60 --fast, "
                             "3,000 --gpu); a new --out for another value")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the screen and the training runs (a new --out for another value)")
    parser.add_argument("--device", default="auto", choices=DEVICES, help="auto: CUDA when there is one")
    parser.set_defaults(func=demo_command)


def demo_command(args) -> int:
    from maefast.demo import run_demo
    profile = "fast" if args.fast else "gpu" if args.gpu else "default"
    run_demo(args.out, profile, seed=args.seed, device=args.device, steps=args.steps)
    return 0
