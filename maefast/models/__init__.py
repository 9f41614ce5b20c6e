"""Models: ViT encoders, MAE and CA-MAE, MU-Net and the classifier, their families and registry, checkpoints."""
from maefast.models.checkpoint import (
    CheckpointMismatch,
    ResolvedCheckpoint,
    from_pretrained,
    load_pretrained,
    push_to_hub,
    resolve_checkpoint,
    save_pretrained,
)
from maefast.models.common import TrainingOutput
from maefast.models.mae import MAEConfig, MaskedAutoencoder
from maefast.models.pretrained import create_model
from maefast.models.registry import list_models, register
from maefast.models.vit import VisionTransformer, ViTConfig

__all__ = ["CheckpointMismatch", "ResolvedCheckpoint", "from_pretrained", "load_pretrained", "push_to_hub",
           "resolve_checkpoint", "save_pretrained", "TrainingOutput", "MAEConfig", "MaskedAutoencoder", "create_model",
           "list_models", "register", "ViTConfig", "VisionTransformer"]
