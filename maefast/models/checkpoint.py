"""Checkpoints: maefast's safetensors + JSON config, and adapters for the layouts users already have.

Layouts read by `load_pretrained`:
  "maefast"   this package's own state dict (model.safetensors written by save_pretrained)
  "timm"      a timm VisionTransformer state dict (parallel-block, qk-norm variants)
  "reference" the public reference MAE / CA-MAE modules: `encoder.vit_backbone.*`, `decoder.*`, ...
Pickle files (.pt, .pth, .bin, .ckpt) are only opened with `trust_pickle=True`, and then with
torch.load(weights_only=True).
"""
from __future__ import annotations

import pickle
from pathlib import Path

import torch
from safetensors.torch import save_file

from maefast.errors import UserInputError
from maefast.io import atomic_path, read_json, read_safetensors, write_json_atomic
from maefast.models.registry import create_model, model_config_dict
from maefast.models.vit import VisionTransformer

LAYOUTS = ("auto", "maefast", "timm", "reference")
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl")
# Reference-layout entries that are recomputed here rather than loaded.
REFERENCE_FIXED_KEYS = ("decoder.pos_embeddings", "decoder.placeholder")


class CheckpointMismatch(UserInputError):
    """A checkpoint whose keys or shapes do not fit the model."""


def read_state_dict(source, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    if isinstance(source, dict):
        state = source
    else:
        path = Path(source)
        if path.is_dir():
            path = path / WEIGHTS_FILE
        if not path.exists():
            raise FileNotFoundError(f"checkpoint not found: {path}")
        if path.suffix == ".safetensors":
            state = read_safetensors(path)
        elif path.suffix in PICKLE_SUFFIXES:
            if not trust_pickle:
                raise UserInputError(f"{path} is a pickle file; maefast only opens pickles it is told to trust: "
                                     f"pass trust_pickle=True (loaded with weights_only=True) or convert it to "
                                     f"safetensors")
            try:
                state = torch.load(path, map_location="cpu", weights_only=True)
            except (RuntimeError, EOFError, pickle.UnpicklingError) as error:  # torch.load's ways to refuse a file
                raise UserInputError(f"{path}: not a readable PyTorch weights file, damaged or holding more than "
                                     f"tensors ({error})") from None
        else:
            raise UserInputError(f"{path}: unknown checkpoint format {path.suffix!r}; expected .safetensors or "
                                 f"one of {PICKLE_SUFFIXES}")
    if not isinstance(state, dict):
        raise UserInputError(f"{source}: expected a dict of tensors, got a {type(state).__name__}")
    for wrapper in ("state_dict", "model"):  # training checkpoints nest the weights
        if isinstance(state.get(wrapper), dict):
            state = state[wrapper]
    return state


def detect_layout(state: dict) -> str:
    keys = list(state)
    if any(k.startswith("encoder.vit_backbone.") for k in keys):
        return "reference"
    if any(k.startswith("blocks.") for k in keys) and "cls_token" in state:
        return "timm"
    return "maefast"


def has_vit_encoder(model) -> bool:
    """Models whose ViT sits under `encoder.` (MAE, CA-MAE, the weakly supervised classifier)."""
    return isinstance(getattr(model, "encoder", None), VisionTransformer)


def convert_timm(state: dict, model) -> dict:
    prefix = "encoder." if has_vit_encoder(model) else ""
    return {prefix + k: v for k, v in state.items()}


def convert_reference(state: dict, model) -> dict:
    converted = {}
    for key, value in state.items():
        if key in REFERENCE_FIXED_KEYS:
            continue
        if key.startswith("encoder.vit_backbone."):
            key = key.replace("encoder.vit_backbone.", "encoder.", 1)
        elif not has_vit_encoder(model):
            continue  # an encoder takes only the backbone of an MAE checkpoint
        converted[key if has_vit_encoder(model) else key.removeprefix("encoder.")] = value
    return converted


def to_model_layout(state: dict, model, layout: str) -> dict:
    if layout not in LAYOUTS:
        raise UserInputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        layout = detect_layout(state)
    if layout == "timm":
        return convert_timm(state, model)
    if layout == "reference":
        return convert_reference(state, model)
    if isinstance(model, VisionTransformer) and any(k.startswith("encoder.") for k in state):
        # a maefast MAE (or classifier) checkpoint loaded into a bare encoder
        return {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return state


def load_pretrained(model, checkpoint, layout: str = "auto", strict: bool = True, trust_pickle: bool = False):
    """Loads `checkpoint` (path, directory or state dict) into `model`; returns the model.

    strict=True refuses missing or unexpected keys, listing them; shapes must always match.
    """
    state = to_model_layout(read_state_dict(checkpoint, trust_pickle), model, layout)
    expected = model.state_dict()
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if mismatched:
        raise CheckpointMismatch("checkpoint does not match the model's shapes:\n  " + "\n  ".join(mismatched))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if strict and (missing or unexpected):
        raise CheckpointMismatch(
            f"checkpoint keys do not match the model (pass strict=False to load anyway):\n"
            f"  missing: {missing}\n  unexpected: {unexpected}")
    model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return model


def save_pretrained(model, directory, channel_names: list[str] | None = None, extra: dict | None = None,
                    state_dict: dict | None = None) -> Path:
    """Writes directory/model.safetensors and directory/config.json atomically; returns the directory.

    state_dict: the weights to write when model.state_dict() would not give whole tensors (FSDP).
    """
    directory = Path(directory)
    meta = pretrained_config(model, channel_names, extra)
    state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    with atomic_path(directory / WEIGHTS_FILE) as temporary:
        save_file(state, str(temporary), metadata={"format": "pt", "model": meta["model"]})
    write_json_atomic(directory / CONFIG_FILE, meta)
    return directory


def pretrained_config(model, channel_names: list[str] | None = None, extra: dict | None = None) -> dict:
    """What config.json holds: the registry name and config that rebuild the model, channel names."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise UserInputError("save_pretrained needs a model built by maefast.create_model (it records the name)")
    config = model_config_dict(model)
    channel_names = list(channel_names or config.get("channel_names") or [])
    return {"format": "maefast", "model": name, "config": config, "channel_names": channel_names, **(extra or {})}


def from_pretrained(directory, **overrides):
    """Rebuilds a model saved by save_pretrained and loads its weights."""
    directory = Path(directory)
    config_path = directory / CONFIG_FILE
    if not config_path.exists():
        raise FileNotFoundError(f"{config_path} not found: not a maefast checkpoint directory")
    meta = read_json(config_path)
    if not (isinstance(meta, dict) and isinstance(meta.get("model"), str) and isinstance(meta.get("config"), dict)):
        raise UserInputError(f"{config_path}: not a maefast model config (expected the keys model and config)")
    model = create_model(meta["model"], **{**meta["config"], **overrides})
    return load_pretrained(model, directory / WEIGHTS_FILE, layout="maefast")
