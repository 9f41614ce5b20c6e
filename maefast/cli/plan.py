"""`maefast plan`: per-GPU memory, the largest batch and the step time of training settings (maefast.train.plan).
Without arguments it prints ViT-L/8 and ViT-G/8 MAEs on 8, 64 and 256 GPUs of 80 and 141 GiB."""
from __future__ import annotations

GIB = 1 << 30
DEFAULT_MODELS = ["mae_vit_large_patch8_256", "mae_vit_gigantic_patch8_256"]


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "plan", help="per-GPU memory, largest batch and step time of training settings",
        description="The per-GPU memory of training an MAE or CA-MAE (fp32 weights, gradients and optimizer "
                    "state, whole under DDP or sharded under FSDP2; activations without, with selective and "
                    "with full recomputation), the largest batch per GPU that fits in 90%% of the GPU's memory, "
                    "and the step time the FLOP count gives at a matmul rate.")
    parser.add_argument("--model", action="append", help=f"registry name (repeatable; default {DEFAULT_MODELS})")
    parser.add_argument("--batch", type=int, default=32, help="images per GPU")
    parser.add_argument("--gpus", type=int, nargs="+", default=[8, 64, 256], help="world sizes (numbers of GPUs)")
    parser.add_argument("--gpu-memory", type=float, nargs="+", default=[80, 141],
                        help="memory of one GPU in GiB")
    parser.add_argument("--precision", choices=["bf16", "fp32"], default="bf16",
                        help="the autocast dtype of the activations (run.precision)")
    parser.add_argument("--parallel", choices=["ddp", "fsdp", "both"], default="both",
                        help="weights whole on every GPU (ddp), sharded (fsdp: FSDP2), or both (run.parallel)")
    parser.add_argument("--recompute", choices=["none", "selective", "full", "all"], default="all",
                        help="recomputation (run.activation_checkpointing false, selective, full; all: each)")
    parser.add_argument("--optimizer", choices=["adamw", "lion"], default="adamw",
                        help="its state per parameter: AdamW two fp32 moments, Lion one (optim.name)")
    parser.add_argument("--channels", type=int, help="channels of the images (default: the model's in_chans)")
    parser.add_argument("--matmul-tflops", type=float, default=989.0,
                        help="matmul rate per GPU in TFLOP/s for the step time (989: an H100 / H200's "
                             "dense bf16 peak, so the time is a lower bound; `maefast train` logs the rate it "
                             "measures)")
    parser.set_defaults(func=plan_command)


def plan_command(args) -> int:
    from maefast.limits import format_bytes
    from maefast.train.plan import PARALLEL, RECOMPUTE, meta_model, plan_training
    parallels = PARALLEL if args.parallel == "both" else (args.parallel,)
    recomputes = RECOMPUTE if args.recompute == "all" else (args.recompute,)
    for name in args.model or DEFAULT_MODELS:
        model = meta_model(name)
        first = plan_training(model, args.batch, 1, GIB, args.precision, channels=args.channels)
        print(f"{name}: {first.parameters / 1e6:,.1f} M parameters, {first.step_flops / args.batch / 1e12:.2f} "
              f"TFLOP per image and step, {args.precision}, {args.optimizer}, {args.batch} images per GPU")
        print(f"  {'GPUs':>5} {'GiB':>5} {'parallel':8} {'recompute':9} {'weights+grads+optim':>19} "
              f"{'gathered':>9} {'activations':>11} {'total':>10} {'fits':4} {'max batch':>9} {'step s':>7}")
        for world_size in args.gpus:
            for memory in args.gpu_memory:
                for parallel in parallels:
                    for recompute in recomputes:
                        plan = plan_training(model, args.batch, world_size, int(memory * GIB), args.precision,
                                             parallel, recompute, args.optimizer, args.channels,
                                             args.matmul_tflops * 1e12)
                        state = plan.weights + plan.gradients + plan.optimizer_state
                        print(f"  {world_size:5d} {memory:5g} {parallel:8} {recompute:9} {format_bytes(state):>19} "
                              f"{format_bytes(plan.gathered):>9} {format_bytes(plan.peak_activations):>11} "
                              f"{format_bytes(plan.total):>10} {'yes' if plan.fits else 'no':4} "
                              f"{plan.largest_batch:9d} {plan.step_seconds:7.2f}")
    return 0
