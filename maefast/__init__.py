"""maefast: fast masked-autoencoder pretraining and embedding for multi-channel microscopy.

The thin public API:
    create_model, list_models, load_pretrained, save_pretrained, from_pretrained   (models)
    push_to_hub(model, repo_id)                                                     (Hugging Face Hub)
    configure_attention(model, backend), tune_attention(model, step)               (attention kernels)
    pretrain(recipe, out, overrides)                                                (training)
    embed(checkpoint, data, out, ...)                                               (embedding a screen)
    read_embeddings(path, level), write_embeddings(table, path, format)             (parquet, h5ad, pycytominer)
    build_map(...), relationship_recall(features, sources, thresholds)             (maps and benchmark)

The model functions are imported on first use (maefast.lazy): `import maefast` and the `maefast` command's
`--help` do not import torch.
"""
from maefast._source_tree import register_kernels_package
from maefast.lazy import lazy_attributes

register_kernels_package()

__version__ = "0.1.0"
MODEL_API = {name: "maefast.models" for name in ("create_model", "from_pretrained", "list_models", "load_pretrained",
                                                   "save_pretrained", "push_to_hub")}
MODEL_API.update(configure_attention="maefast.models.attention_setup", tune_attention="maefast.models.attention_setup")
__all__ = [*MODEL_API, "pretrain", "embed", "read_embeddings", "write_embeddings", "build_map",
           "relationship_recall", "__version__"]
__getattr__, __dir__ = lazy_attributes(__name__, MODEL_API)


def pretrain(recipe: str = "debug", out: str = "runs/pretrain", overrides: list[str] | None = None,
             resume: bool = False, show_progress: bool = True, allow_config_change: bool = False) -> dict:
    """Pretrains from a recipe (see `maefast train --list-recipes`); returns the run summary."""
    from maefast.train import pretrain as run
    return run(recipe, out, overrides, resume, show_progress, allow_config_change)


def embed(checkpoint, data, out, **options) -> dict:
    """Embeds a data set with a trained encoder; see maefast.embedding.api.embed for the options."""
    from maefast.embedding.api import embed as run
    return run(checkpoint, data, out, **options)


def read_embeddings(path, level: str = "site", metadata=None):
    """Embeddings or a map as one DataFrame (metadata, then feature columns) from a finished `maefast embed`
    folder (level "site" or "well"), a folder of parquet shards, or a parquet / .h5ad / pycytominer file;
    `metadata`: a table joined on the shared columns (e.g. RxRx3-core's metadata for OpenPhenom's embeddings)."""
    from maefast.embedding.outputs import read_embeddings as run
    return run(path, level, metadata)


def write_embeddings(table, path, format: str = "parquet", feature_prefix: str | None = None):
    """Writes a table of embeddings or a map as parquet, h5ad (AnnData) or pycytominer-csv / -parquet; the
    feature columns are those starting with feature_prefix (default maefast.tables.FEATURE_PREFIX)."""
    from maefast.tables import FEATURE_PREFIX, write_table
    return write_table(table, path, format, feature_prefix or FEATURE_PREFIX)


def build_map(table, **options):
    """Center-scale, PCA, TVN on controls and aggregation per perturbation; see maefast.evaluate."""
    from maefast.evaluate import build_map as run
    return run(table, **options)


def relationship_recall(features, **options):
    """Recall of known relationships (CORUM, HuMAP, Reactome, SIGNOR, StringDB); see maefast.evaluate."""
    from maefast.evaluate import relationship_recall as run
    return run(features, **options)
