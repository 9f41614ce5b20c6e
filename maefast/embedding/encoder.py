"""Finding the encoder to embed with: a maefast checkpoint, a training run, a reference (OpenPhenom)
folder, a Hugging Face Hub id, or a timm / reference weights file."""
from __future__ import annotations

from pathlib import Path

from maefast.errors import UserInputError
from maefast.io import read_json
from maefast.models import hub
from maefast.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, from_pretrained, load_pretrained
from maefast.models.families import family_of
from maefast.models.registry import create_model


def load_encoder(checkpoint, model_name: str | None = None, layout: str = "auto", trust_pickle: bool = False):
    """The encoder (a VisionTransformer or another model with .embed) and its channel names.

    checkpoint: a save_pretrained directory (MAE or encoder), a training run directory (its encoder/), a
    reference MAEModel folder or Hub id (e.g. recursionpharma/OpenPhenom), or a weights file in the timm /
    reference layout, which needs model_name (e.g. vit_large_patch8_256).
    """
    path = checkpoint_path(checkpoint)
    if path.is_dir():
        meta = read_json(path / CONFIG_FILE)
        return embedder_of(from_pretrained(path, trust_pickle=trust_pickle)), list(meta.get("channel_names") or [])
    if model_name is None:
        raise UserInputError(f"{path} is a bare weights file: name its architecture with --model "
                             f"(e.g. vit_large_patch8_256)")
    model = load_pretrained(create_model(model_name), path, layout=layout, trust_pickle=trust_pickle)
    return embedder_of(model), []


def checkpoint_path(checkpoint) -> Path:
    """The checkpoint directory (with config.json) or the bare weights file `checkpoint` names (a Hub id is
    fetched first)."""
    path = Path(hub.resolve(str(checkpoint)))
    if not path.exists():
        raise FileNotFoundError(f"checkpoint {path} does not exist: expected a maefast checkpoint directory, a "
                                f"training run directory, a reference folder, a Hub id or a weights file")
    if path.is_dir() and not (path / CONFIG_FILE).exists() and (path / "encoder" / CONFIG_FILE).exists():
        path = path / "encoder"
    if path.is_dir() and not (path / CONFIG_FILE).exists():
        raise FileNotFoundError(f"{path} holds no {CONFIG_FILE}: not a maefast checkpoint or training run")
    return path


def weights_file(checkpoint) -> Path:
    """The file whose tensors the encoder of `checkpoint` is loaded from."""
    path = checkpoint_path(checkpoint)
    return path / WEIGHTS_FILE if path.is_dir() else path


def embedder_of(model):
    """What embeds: an MAE's encoder; every other model (encoder, MU-Net, classifier) itself."""
    return family_of(model).embedder(model)
