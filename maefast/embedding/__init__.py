"""Embedding: trained encoders over whole screens (tiling, batched inference, sharded resumable output). The
exports are imported on first use (maefast.lazy), so that the job's config (`maefast embed --help`) reads
without torch."""
from maefast.lazy import lazy_attributes

EXPORTS = {"embed": "maefast.embedding.api", "run_embed": "maefast.embedding.api",
           "EmbedConfig": "maefast.embedding.config", "embed_config": "maefast.embedding.config",
           "load_encoder": "maefast.embedding.encoder", "aggregate_wells": "maefast.embedding.job",
           "run_embedding": "maefast.embedding.job", "read_embeddings": "maefast.embedding.outputs"}
__all__ = list(EXPORTS)
__getattr__, __dir__ = lazy_attributes(__name__, EXPORTS)
