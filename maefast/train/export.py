"""What a training run leaves for embedding: the part of a trained model that embeds, and `maefast export
--checkpoint`, which turns any training checkpoint (whole or sharded) into the single safetensors file and
config.json that maefast.from_pretrained and `maefast embed` read."""
from __future__ import annotations

from pathlib import Path

from maefast.errors import UserInputError
from maefast.io import read_json
from maefast.models.checkpoint import save_pretrained
from maefast.models.families import family_of
from maefast.models.registry import create_model
from maefast.train.sharded import load_sharded_weights
from maefast.train.state import checkpoint_root, newest_intact_checkpoint, read_checkpoint


def save_embedder(model, state: dict, directory: Path, model_name: str, channel_names: list[str],
                  extra: dict | None = None) -> Path:
    """What embeds of a trained `model` (whole weights `state`), as save_pretrained writes it: an MAE's encoder
    under the encoder's registry name, or the whole model (MU-Net, classifier), whose .embed gives the embedding."""
    family = family_of(model_name)
    embedder = family.embedder(model)
    if embedder is not model:  # the embedder is a submodule (an MAE's encoder): its part of the weights
        prefix = next(name for name, module in model.named_modules() if module is embedder) + "."
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        embedder.model_name = family.embedder_name(model_name)
    return save_pretrained(embedder, directory, channel_names=channel_names, state_dict=state, extra=extra)


def export_checkpoint(source, out, encoder_only: bool = False) -> Path:
    """`maefast export --checkpoint`: a training checkpoint (sharded or whole; or a run directory: its newest
    intact one), checked whole, as the single-file safetensors + config.json that maefast.from_pretrained
    reads, in this one process."""
    path = Path(source)
    if checkpoint_root(path).is_dir():
        checkpoint = newest_intact_checkpoint(path)
        if checkpoint is None:
            raise UserInputError(f"{path}: a run directory without a complete checkpoint")
    elif (path / "meta.json").is_file():
        checkpoint = read_checkpoint(path)
    else:
        raise UserInputError(f"{path}: not a training checkpoint (no meta.json) nor a run directory (no "
                             f"checkpoints/); give a checkpoints/step-* directory or a run directory")
    meta = read_json(checkpoint.path / "config.json")
    model = create_model(meta["model"], **meta["config"])
    if checkpoint.model_state is None:
        load_sharded_weights(checkpoint.path, model)
    else:
        model.load_state_dict(checkpoint.model_state)
    extra = {k: v for k, v in meta.items() if k not in ("format", "model", "config", "channel_names")}
    channels = list(meta.get("channel_names") or [])
    if encoder_only:
        return save_embedder(model, model.state_dict(), Path(out), meta["model"], channels, extra)
    return save_pretrained(model, out, channel_names=channels, extra=extra)
