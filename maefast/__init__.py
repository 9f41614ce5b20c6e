"""maefast: fast masked-autoencoder pretraining and embedding for multi-channel microscopy."""
from maefast._source_tree import register_kernels_package

register_kernels_package()

from maefast.models import (  # noqa: E402
    create_model, from_pretrained, list_models, load_pretrained, save_pretrained,
)

__version__ = "0.1.0"
__all__ = ["create_model", "from_pretrained", "list_models", "load_pretrained", "save_pretrained", "__version__"]
