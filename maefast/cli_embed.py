"""`maefast embed`: a trained encoder over a whole data set, tiled, batched, sharded and resumable."""
from __future__ import annotations


def add_commands(subparsers) -> None:
    parser = subparsers.add_parser("embed", help="embed a data set with a trained encoder",
                                   description="Embed every site of a data set. Many GPUs: torchrun "
                                               "--nproc-per-node N -m maefast.cli embed ...")
    parser.add_argument("--checkpoint", required=True,
                        help="maefast checkpoint directory, training run directory, or timm/reference weights file")
    parser.add_argument("--model", help="architecture of a bare weights file, e.g. vit_large_patch8_256")
    parser.add_argument("--weights-layout", default="auto", choices=("auto", "maefast", "timm", "reference"))
    parser.add_argument("--trust-pickle", action="store_true", help="allow .pt/.pth weights (loaded weights-only)")
    parser.add_argument("--data", required=True, help="data set root (rxrx, jump or packed)")
    parser.add_argument("--layout", default="auto", help="data set layout: auto, rxrx, jump, packed")
    parser.add_argument("--channels", help="comma-separated channel names to use, in order")
    parser.add_argument("--out", required=True, help="output directory (shards/, wells.parquet, manifest.json)")
    parser.add_argument("--pool", default="mean", choices=("mean", "cls"))
    parser.add_argument("--per-channel", action="store_true", help="CA-MAE: one embedding per channel, concatenated")
    parser.add_argument("--batch-size", type=int, default=16, help="images per batch (each gives several tiles)")
    parser.add_argument("--shard-size", type=int, default=1024, help="images per output shard")
    parser.add_argument("--precision", default="auto", choices=("auto", "bf16", "fp32"))
    parser.add_argument("--backend", default="auto", choices=("auto", "dali", "torch"), help="loader backend")
    parser.add_argument("--on-error", default="raise", choices=("raise", "skip"))
    parser.add_argument("--workers", type=int, default=None, help="loader threads / processes")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--no-progress", action="store_true")
    parser.set_defaults(func=embed_command)


def resolve_channels(dataset, encoder, requested: list[str], checkpoint_channels: list[str]):
    """Which channels, in which order: asked for, else the checkpoint's, else the data set's."""
    config = encoder.config
    if requested:
        dataset = dataset.select_channels(requested)
    elif checkpoint_channels and not config.channel_agnostic:
        missing = [c for c in checkpoint_channels if c not in dataset.stored_channels]
        if missing:
            raise ValueError(f"the encoder was trained on channels {checkpoint_channels}; the data set lacks "
                             f"{missing} (it has {list(dataset.stored_channels)}); choose channels with --channels")
        dataset = dataset.select_channels(checkpoint_channels)
    count = len(dataset.channels)
    if config.channel_agnostic and count > config.max_in_chans:
        raise ValueError(f"{count} channels selected; the encoder takes at most {config.max_in_chans}")
    if not config.channel_agnostic and count != config.in_chans:
        raise ValueError(f"the encoder expects {config.in_chans} channels, the data set gives {count} "
                         f"{list(dataset.channels)}; choose them with --channels")
    return dataset


def embed_command(args) -> int:
    from maefast.data import make_tile_loader, open_dataset
    from maefast.embed.encoder import load_encoder
    from maefast.embed.job import EmbedSettings, run_embedding
    from maefast.train import distributed

    context = distributed.init_distributed(args.device)
    encoder, checkpoint_channels = load_encoder(args.checkpoint, args.model, args.weights_layout, args.trust_pickle)
    requested = [c.strip() for c in args.channels.split(",")] if args.channels else []
    dataset = resolve_channels(open_dataset(args.data, layout=args.layout), encoder, requested, checkpoint_channels)
    tile = encoder.config.img_size
    settings = EmbedSettings(checkpoint=str(args.checkpoint), pool=args.pool, per_channel=args.per_channel,
                             tile_size=tile, batch_size=args.batch_size, shard_size=args.shard_size,
                             precision=args.precision, channels=tuple(dataset.channels))

    def make_tiles(subset):
        return make_tile_loader(subset, batch_size=args.batch_size, crop_size=tile, device=context.device,
                                backend=args.backend, on_error=args.on_error, num_workers=args.workers)

    try:
        summary = run_embedding(encoder, dataset, args.out, settings, make_tiles, context.device, context.rank,
                                context.world_size, show_progress=not args.no_progress and context.is_main,
                                barrier=lambda: distributed.barrier(context))
    finally:
        distributed.shutdown(context)
    if context.is_main:
        state = "complete" if summary.get("complete") else f"incomplete (missing {summary.get('missing_shards')})"
        print(f"maefast embed: {summary['num_shards']} shards, {state}, {summary['crops_per_s']:.1f} crops/s; {args.out}")
    return 0
