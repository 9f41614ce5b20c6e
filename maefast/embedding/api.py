"""`maefast.embed(...)`: the library form of `maefast embed`; both run `run_embed(config, out)`."""
from __future__ import annotations

from maefast import distributed
from maefast.data import make_tile_loader, open_dataset
from maefast.embedding.config import EmbedConfig, embed_config
from maefast.embedding.encoder import load_encoder
from maefast.embedding.job import run_embedding
from maefast.embedding.outputs import export_embeddings
from maefast.errors import UserInputError
from maefast.models.checkpoint import resolve_checkpoint
from maefast.models.registry import input_config
from maefast.tables import import_anndata


def resolve_channels(dataset, encoder, requested: list[str], checkpoint_channels: list[str]):
    """Which channels, in which order: asked for, else the checkpoint's, else the data set's."""
    inputs = input_config(encoder)
    if requested:
        dataset = dataset.select_channels(requested)
    elif checkpoint_channels and not inputs.channel_agnostic:
        missing = [c for c in checkpoint_channels if c not in dataset.stored_channels]
        if missing:
            raise UserInputError(f"the encoder was trained on channels {checkpoint_channels}; the data set lacks "
                                 f"{missing} (it has {list(dataset.stored_channels)}); choose channels with --channels")
        dataset = dataset.select_channels(checkpoint_channels)
    inputs.check_channels(len(dataset.channels), f"the data set's selection {list(dataset.channels)}",
                          "; choose channels with --channels")
    return dataset


def embed(checkpoint, data, out, *, overrides: list[str] | None = None, show_progress: bool = True,
          **options) -> dict:
    """Embeds every site of `data` with the encoder in `checkpoint` into `out`; returns the job summary.

    options: any EmbedConfig key (maefast.embedding.config: pool, batch_size, channels, tile_batch, compile,
    attention, format, blocks, ...; None leaves the default), overrides: `--set` style "key=value" strings,
    applied before the options. blocks: "all", "last" or 0-based block indices of a ViT encoder (a list, or
    text such as "8,12,16"), embedded from one forward: one row per site and block, a `block` column. Under
    torchrun each rank embeds its own shards. Read the result with maefast.read_embeddings(out).
    """
    values = {key: value for key, value in options.items() if value is not None}
    config = embed_config({**values, "checkpoint": str(checkpoint), "data": str(data)}, overrides)
    return run_embed(config, out, show_progress)


def run_embed(config: EmbedConfig, out, show_progress: bool = True) -> dict:
    """The embedding job of `config` into `out` (see maefast.embedding.job); returns the job summary, with
    "exports" (the files `config.format` adds) on rank 0 of a finished job."""
    if config.format == "h5ad":
        import_anndata()  # before hours of embedding, not after
    context = distributed.init_distributed(config.device)
    try:
        checkpoint = resolve_checkpoint(config.checkpoint)
        encoder, checkpoint_channels = load_encoder(checkpoint, config.model, config.weights_layout,
                                                    config.trust_pickle, config.model_options)
        dataset = resolve_channels(open_dataset(config.data, layout=config.layout,
                                                allow_outside_root=config.allow_outside_root),
                                   encoder, config.channels, checkpoint_channels)
        tile = input_config(encoder).img_size

        def make_tiles(subset):
            return make_tile_loader(subset, batch_size=config.batch_size, crop_size=tile, device=context.device,
                                    backend=config.backend, on_error=config.on_error, num_workers=config.workers)

        summary = run_embedding(encoder, dataset, out, config, checkpoint, make_tiles, context,
                                show_progress=show_progress)
        if summary.get("complete"):  # rank 0 of a finished job
            summary["exports"] = [str(path) for path in export_embeddings(out, config.format)]
        return summary
    finally:
        distributed.shutdown(context)
