"""Finding the encoder to embed with: a maefast checkpoint, a training run, a reference (OpenPhenom)
folder, a Hugging Face Hub id, or a timm / reference weights file."""
from __future__ import annotations

import json
from pathlib import Path

from maefast.models import hub
from maefast.models.checkpoint import CONFIG_FILE, from_pretrained, load_pretrained
from maefast.models.mae import MaskedAutoencoder
from maefast.models.registry import create_model


def load_encoder(checkpoint, model_name: str | None = None, layout: str = "auto", trust_pickle: bool = False):
    """The encoder (a VisionTransformer or another model with .embed) and its channel names.

    checkpoint: a save_pretrained directory (MAE or encoder), a training run directory (its encoder/), a
    reference MAEModel folder or Hub id (e.g. recursionpharma/OpenPhenom), or a weights file in the timm /
    reference layout, which needs model_name (e.g. vit_large_patch8_256).
    """
    path = Path(hub.resolve(str(checkpoint)))
    if path.is_dir() and not (path / CONFIG_FILE).exists() and (path / "encoder" / CONFIG_FILE).exists():
        path = path / "encoder"
    if path.is_dir() and (path / CONFIG_FILE).exists():
        meta = json.loads((path / CONFIG_FILE).read_text())
        return embedder_of(from_pretrained(path, trust_pickle=trust_pickle)), list(meta.get("channel_names") or [])
    if path.is_dir():
        raise FileNotFoundError(f"{path} holds no {CONFIG_FILE}: not a maefast checkpoint or training run")
    if model_name is None:
        raise ValueError(f"{path} is a bare weights file: name its architecture with --model (e.g. vit_large_patch8_256)")
    model = load_pretrained(create_model(model_name), path, layout=layout, trust_pickle=trust_pickle)
    return embedder_of(model), []


def embedder_of(model):
    """An MAE embeds with its encoder; every other model (encoder, MU-Net, classifier) with itself."""
    return model.encoder if isinstance(model, MaskedAutoencoder) else model
