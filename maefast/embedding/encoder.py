"""Finding the encoder to embed with: a maefast checkpoint, a training run, a reference (OpenPhenom)
folder, a Hugging Face Hub id, or a timm / reference weights file."""
from __future__ import annotations

from maefast.errors import UserInputError
from maefast.models.checkpoint import CONFIG_FILE, from_pretrained, resolve_checkpoint
from maefast.models.families import family_of
from maefast.models.pretrained import create_model


def load_encoder(checkpoint, model_name: str | None = None, layout: str = "auto", trust_pickle: bool = False,
                 model_options: dict | None = None):
    """The encoder (a VisionTransformer or another model with .embed) and its channel names.

    checkpoint: a ResolvedCheckpoint (maefast.models.checkpoint.resolve_checkpoint), or what it resolves: a
    save_pretrained folder (MAE or encoder), a training run folder (its encoder/, or its newest checkpoint), a
    reference MAEModel folder or Hub id (e.g. recursionpharma/OpenPhenom), or a weights file in the timm /
    reference layout, which needs model_name (e.g. vit_large_patch8_256; the ViT options the weights imply, such
    as the block type and pooling, are read from them). model_options: create_model options over the
    checkpoint's (e.g. global_pool="avg").
    """
    checkpoint, options = resolve_checkpoint(checkpoint), dict(model_options or {})
    if checkpoint.folder is not None:
        if checkpoint.config is None:
            raise FileNotFoundError(f"{checkpoint.folder} holds no {CONFIG_FILE}: not a maefast checkpoint or "
                                    f"training run")
        channels = list(checkpoint.config.get("channel_names") or [])
        return embedder_of(from_pretrained(checkpoint, trust_pickle=trust_pickle, **options)), channels
    if model_name is None:
        raise UserInputError(f"{checkpoint.weights} is a bare weights file: name its architecture with --model "
                             f"(e.g. vit_large_patch8_256)")
    model = create_model(model_name, checkpoint_path=checkpoint, trust_pickle=trust_pickle, checkpoint_layout=layout,
                         **options)
    return embedder_of(model), []


def embedder_of(model):
    """What embeds: an MAE's encoder; every other model (encoder, MU-Net, classifier) itself."""
    return family_of(model).embedder(model)
