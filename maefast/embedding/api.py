"""`maefast.embed(...)`: the library form of `maefast embed`."""
from __future__ import annotations

from maefast import distributed
from maefast.data import make_tile_loader, open_dataset
from maefast.embedding.encoder import load_encoder, weights_file
from maefast.embedding.job import EmbedSettings, run_embedding
from maefast.embedding.outputs import export_embeddings
from maefast.embedding.runner import resolve_blocks
from maefast.errors import UserInputError
from maefast.io import file_sha256
from maefast.models.registry import input_config
from maefast.tables import check_format, import_anndata


def resolve_channels(dataset, encoder, requested: list[str], checkpoint_channels: list[str]):
    """Which channels, in which order: asked for, else the checkpoint's, else the data set's."""
    config = input_config(encoder)
    agnostic = getattr(config, "channel_agnostic", False)
    if requested:
        dataset = dataset.select_channels(requested)
    elif checkpoint_channels and not agnostic:
        missing = [c for c in checkpoint_channels if c not in dataset.stored_channels]
        if missing:
            raise UserInputError(f"the encoder was trained on channels {checkpoint_channels}; the data set lacks "
                                 f"{missing} (it has {list(dataset.stored_channels)}); choose channels with --channels")
        dataset = dataset.select_channels(checkpoint_channels)
    count = len(dataset.channels)
    if agnostic and count > config.max_in_chans:
        raise UserInputError(f"{count} channels selected; the encoder takes at most {config.max_in_chans}")
    if not agnostic and count != config.in_chans:
        raise UserInputError(f"the encoder expects {config.in_chans} channels, the data set gives {count} "
                             f"{list(dataset.channels)}; choose them with --channels")
    return dataset


def embed(checkpoint, data, out, *, model: str | None = None, weights_layout: str = "auto",
          trust_pickle: bool = False, layout: str = "auto", channels: list[str] | None = None,
          allow_outside_root: bool = False, pool: str = "mean",
          per_channel: bool = False, batch_size: int = 16, shard_size: int = 1024, precision: str = "auto",
          backend: str = "auto", on_error: str = "raise", workers: int | None = None, device: str = "auto",
          show_progress: bool = True, format: str = "parquet", compile: str = "auto",
          attention: str = "auto", tile_batch: int | str = "auto", blocks: str | list[int] | None = None) -> dict:
    """Embeds every site of `data` with the encoder in `checkpoint` into `out`; returns the job summary.

    Under torchrun each rank embeds its own shards. Read the result with maefast.read_embeddings(out).
    format: besides the parquet shards and wells.parquet, a finished job also writes sites and wells as
    h5ad (AnnData), pycytominer-csv or pycytominer-parquet (see maefast.tables); listed in summary["exports"].
    compile: "auto" compiles on CUDA (fixed shapes, CUDA graphs), "on" / "off" force it; attention: "auto"
    (on CUDA the fastest kernel at the job's shapes, timed once) or a backend name for every attention site;
    tile_batch: tiles per encoder forward, "auto" (on CUDA the largest batch that fits and still gets faster,
    timed once; elsewhere one loader batch's tiles) or a number; blocks: "all", "last" or 0-based block
    indices of a ViT encoder, embedded from one forward (one row per site and block, a `block` column, each
    block's tokens normed as timm's forward_intermediates does); None: the final embedding only.
    """
    if check_format(format) == "h5ad":
        import_anndata()  # before hours of embedding, not after
    context = distributed.init_distributed(device)
    try:
        encoder, checkpoint_channels = load_encoder(checkpoint, model, weights_layout, trust_pickle)
        dataset = resolve_channels(open_dataset(data, layout=layout, allow_outside_root=allow_outside_root), encoder,
                                   list(channels or []),
                                   checkpoint_channels)
        tile = input_config(encoder).img_size
        settings = EmbedSettings(checkpoint=str(checkpoint), weights_sha256=file_sha256(weights_file(checkpoint)),
                                 pool=pool, per_channel=per_channel, tile_size=tile,
                                 batch_size=batch_size, shard_size=shard_size, precision=precision,
                                 channels=tuple(dataset.channels), compile=compile, attention=attention,
                                 tile_batch=tile_batch, blocks=resolve_blocks(blocks, encoder))

        def make_tiles(subset):
            return make_tile_loader(subset, batch_size=batch_size, crop_size=tile, device=context.device,
                                    backend=backend, on_error=on_error, num_workers=workers)

        summary = run_embedding(encoder, dataset, out, settings, make_tiles, context.device, context,
                                show_progress=show_progress and context.is_main)
        if summary.get("complete"):  # rank 0 of a finished job
            summary["exports"] = [str(path) for path in export_embeddings(out, format)]
        return summary
    finally:
        distributed.shutdown(context)
