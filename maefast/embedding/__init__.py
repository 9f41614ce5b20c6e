"""Embedding: trained encoders over whole screens (tiling, batched inference, sharded resumable output)."""
from maefast.embedding.api import embed
from maefast.embedding.encoder import load_encoder
from maefast.embedding.job import EmbedSettings, aggregate_wells, run_embedding
from maefast.embedding.outputs import read_embeddings

__all__ = ["embed", "load_encoder", "EmbedSettings", "aggregate_wells", "read_embeddings", "run_embedding"]
