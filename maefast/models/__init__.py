"""Model family: ViT encoders, MAE and CA-MAE, the registry and checkpoint adapters."""
from maefast.models.checkpoint import CheckpointMismatch, from_pretrained, load_pretrained, save_pretrained
from maefast.models.mae import MAEConfig, MaskedAutoencoder
from maefast.models.registry import create_model, list_models, register
from maefast.models.vit import VisionTransformer, ViTConfig

__all__ = ["CheckpointMismatch", "from_pretrained", "load_pretrained", "save_pretrained", "MAEConfig",
           "MaskedAutoencoder", "create_model", "list_models", "register", "ViTConfig", "VisionTransformer"]
