"""Embedding: trained encoders over whole screens (tiling, batched inference, sharded resumable output)."""
from maefast.embedding.api import embed, run_embed
from maefast.embedding.config import EmbedConfig, embed_config
from maefast.embedding.encoder import load_encoder
from maefast.embedding.job import aggregate_wells, run_embedding
from maefast.embedding.outputs import read_embeddings

__all__ = ["embed", "run_embed", "EmbedConfig", "embed_config", "load_encoder", "aggregate_wells",
           "read_embeddings", "run_embedding"]
