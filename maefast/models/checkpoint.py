"""Checkpoints: maefast's safetensors + JSON config, and adapters for the layouts users already have.

Layouts read by `load_pretrained`:
  "maefast"   this package's own state dict (model.safetensors written by save_pretrained)
  "timm"      a timm VisionTransformer state dict (parallel-block, qk-norm variants)
  "reference" the public reference MAE / CA-MAE (`MAEModel` of recursionpharma/maes_microscopy, the OpenPhenom
              release): `encoder.vit_backbone.*`, `decoder.*`, ... (see maefast.models.reference)
A weights file is recognized by its bytes, never by its name: a safetensors header, or a torch.save
pickle (zip archive or legacy pickle), which the reference writes under the name model.safetensors.
A pickle is only opened with `trust_pickle=True`, and then with torch.load(weights_only=True).
A checkpoint may also be a Hugging Face Hub id (owner/name), fetched with huggingface_hub (maefast.models.hub).

Wherever a checkpoint is named (a folder, a training run, a weights file, a Hub id), `resolve_checkpoint` finds
it once, into a ResolvedCheckpoint (folder, config, weights file, digest) that the loaders take as it is.

`from_pretrained` and `save_pretrained` follow Hugging Face's conventions: the model comes back in eval mode,
loaded without autograd, placed by torch_dtype and device; a Hub id takes revision, cache_dir,
local_files_only and token; a saved folder holds a model card (README.md) beside its weights and config, and
`push_to_hub` uploads one (huggingface_hub).
"""
from __future__ import annotations

import functools
import json
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from maefast.choices import WEIGHTS_LAYOUTS
from maefast.errors import MissingDependency, UserInputError
from maefast.io import (
    atomic_path,
    check_finite,
    file_sha256,
    read_json,
    read_safetensors,
    write_json_atomic,
    write_safetensors,
)
from maefast.models import hub, reference
from maefast.models.families import family_of
from maefast.models.registry import create_model, model_config_dict
from maefast.models.vit import VisionTransformer
from maefast.models.vit_weights import options_in_conflict

LAYOUTS = WEIGHTS_LAYOUTS
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
ENCODER_DIR = "encoder"        # a training run's folder holds what embeds here (maefast.train exports it)
# a training run's checkpoints: RUN_CHECKPOINTS/<step folder>, the newest named by RUN_CHECKPOINTS/RUN_MANIFEST
RUN_CHECKPOINTS, RUN_MANIFEST = "checkpoints", "latest.json"
MODEL_CARD = "README.md"
ZIP_MAGIC = b"PK\x03\x04"      # torch.save's default (zip) format
PICKLE_PROTOCOL = b"\x80"       # torch.save's legacy format starts with a pickle protocol opcode


class CheckpointMismatch(UserInputError):
    """A checkpoint whose keys or shapes do not fit the model."""


def weights_format(path: Path) -> str:
    """'safetensors' or 'pickle', from the file's first bytes."""
    with open(path, "rb") as handle:
        head = handle.read(9)
    # safetensors first: its header length may begin with any byte, a pickle's 9th byte is never "{"
    if len(head) == 9 and head[8:9] == b"{" and 8 < int.from_bytes(head[:8], "little") + 8 <= path.stat().st_size:
        return "safetensors"
    if head.startswith(ZIP_MAGIC) or head.startswith(PICKLE_PROTOCOL):
        return "pickle"
    raise UserInputError(f"{path}: neither safetensors (an 8-byte header length, then JSON) nor a torch.save pickle "
                     f"(zip archive or pickle stream); its first bytes are {head!r}")


@dataclass(frozen=True)
class ResolvedCheckpoint:
    """A checkpoint found once: its folder (None for a bare weights file), the folder's config.json (None when
    it has none), the weights file, and the weights' sha256 (computed when first asked for)."""
    folder: Path | None
    config: dict | None
    weights: Path

    @functools.cached_property
    def sha256(self) -> str:
        return file_sha256(self.weights)

    def __str__(self) -> str:
        return str(self.folder or self.weights)


def resolve_checkpoint(source, **hub_options) -> ResolvedCheckpoint:
    """The checkpoint `source` names: a Hub id (fetched first; hub_options: maefast.models.hub.download's), a
    checkpoint folder (config.json and model.safetensors), a training run's folder (its encoder/ once finished;
    before that, or when stopped, its newest checkpoint: the whole model), or a weights file. A
    ResolvedCheckpoint is returned as it is."""
    if isinstance(source, ResolvedCheckpoint):
        return source
    path = Path(hub.resolve(str(source), **hub_options))
    if not path.exists():
        raise FileNotFoundError(f"checkpoint not found: {path}: expected a maefast checkpoint folder, a training "
                                f"run folder, a reference folder, a Hub id or a weights file")
    if path.is_file():
        return ResolvedCheckpoint(None, None, path)
    if not (path / CONFIG_FILE).exists():
        path = run_checkpoint(path)
    if not (path / WEIGHTS_FILE).exists():
        present = sorted(p.name for p in path.iterdir())
        raise FileNotFoundError(f"{path} holds no {WEIGHTS_FILE} (it has {present[:20]})")
    config = read_config(path) if (path / CONFIG_FILE).exists() else None
    return ResolvedCheckpoint(path, config, path / WEIGHTS_FILE)


def run_checkpoint(run: Path) -> Path:
    """A training run's folder: its exported encoder, or (an unfinished run) its newest checkpoint; other folders
    as they are."""
    if (run / ENCODER_DIR / CONFIG_FILE).exists():
        return run / ENCODER_DIR
    manifest = run / RUN_CHECKPOINTS / RUN_MANIFEST
    if manifest.exists():
        return run / RUN_CHECKPOINTS / read_json(manifest)["path"]
    return run


def read_state_dict(source, trust_pickle: bool = False) -> dict[str, torch.Tensor]:
    """The tensors of `source`: a state dict, or a checkpoint (anything resolve_checkpoint takes)."""
    if isinstance(source, dict):
        state = source
    else:
        path = resolve_checkpoint(source).weights
        if weights_format(path) == "safetensors":
            state = read_safetensors(path)
        elif not trust_pickle:
            raise UserInputError(f"{path} is a torch.save pickle, whatever its name says; maefast opens pickles only "
                                 f"when told to trust them: pass trust_pickle=True (command line: --trust-pickle); "
                                 f"it is then read with torch.load(weights_only=True), which loads tensors and "
                                 f"refuses code")
        else:  # through a handle: torch.load given a path ending in .safetensors reads it as safetensors
            try:
                with open(path, "rb") as handle:
                    state = torch.load(handle, map_location="cpu", weights_only=True)
            except (RuntimeError, EOFError, pickle.UnpicklingError) as error:  # torch.load's ways to refuse a file
                raise UserInputError(f"{path}: not a readable PyTorch weights file, damaged or holding more than "
                                     f"tensors ({error})") from None
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


def to_model_layout(state: dict, model, layout: str) -> dict:
    if layout not in LAYOUTS:
        raise UserInputError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "auto":
        layout = detect_layout(state)
    if layout == "timm":
        return convert_timm(state, model)
    if layout == "reference":
        return reference.convert_reference(state, model, has_vit_encoder(model))
    if isinstance(model, VisionTransformer) and any(k.startswith("encoder.") for k in state):
        # a maefast MAE (or classifier) checkpoint loaded into a bare encoder
        return {k.removeprefix("encoder."): v for k, v in state.items() if k.startswith("encoder.")}
    return state


def load_pretrained(model, checkpoint, layout: str = "auto", strict: bool = True, trust_pickle: bool = False):
    """Loads `checkpoint` (path, directory, Hub id, ResolvedCheckpoint or state dict) into `model`; returns
    the model.

    strict=True refuses missing or unexpected keys, listing them (unexpected ones by their names in the
    checkpoint); shapes must always match, and every value must be finite.
    """
    raw = read_state_dict(checkpoint, trust_pickle)
    check_finite(raw, "the state dict" if isinstance(checkpoint, dict) else checkpoint)  # NaN weights embed NaN
    state = to_model_layout(raw, model, layout)
    origin = {id(value): key for key, value in raw.items()}  # conversions rename keys, never copy values

    def named(key: str) -> str:
        source = origin.get(id(state[key]), key)
        return key if source == key else f"{key} (checkpoint {source})"

    expected = model.state_dict()
    mismatched = [f"{named(k)}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in state.items() if k in expected and tuple(v.shape) != tuple(expected[k].shape)]
    if mismatched:
        raise CheckpointMismatch("checkpoint does not match the model's shapes:\n  " + "\n  ".join(mismatched))
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(origin.get(id(state[k]), k) for k in set(state) - set(expected))
    if strict and (missing or unexpected):
        raise CheckpointMismatch(
            f"checkpoint keys do not match the model{architecture_hint(raw, model)} (or pass strict=False to load "
            f"anyway):\n  missing: {missing}\n  unexpected: {unexpected}")
    with torch.no_grad():
        model.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    return model


def architecture_hint(state: dict, model) -> str:
    """For a ViT whose build options differ from what its checkpoint's weights imply: which, and how to build it."""
    vit = model if isinstance(model, VisionTransformer) else getattr(model, "encoder", None)
    if not isinstance(vit, VisionTransformer):
        return ""
    conflicts = options_in_conflict(state, vit.config)
    if not conflicts:
        return ""
    described = ", ".join(f"{name}={theirs!r} (the model: {ours!r})" for name, (theirs, ours) in conflicts.items())
    name = getattr(model, "model_name", "NAME")
    return (f": the checkpoint's ViT has {described}; build the model with those options, or let maefast read them "
            f"from the weights: maefast.create_model({name!r}, checkpoint_path=...)")


def save_pretrained(model, directory, channel_names: list[str] | None = None, extra: dict | None = None,
                    state_dict: dict | None = None) -> Path:
    """Writes directory/model.safetensors and directory/config.json atomically; returns the directory.

    state_dict: the weights to write when model.state_dict() would not give whole tensors (FSDP).
    """
    directory = Path(directory)
    meta = pretrained_config(model, channel_names, extra)
    state = {k: v.detach().contiguous().cpu() for k, v in (state_dict or model.state_dict()).items()}
    write_safetensors(state, directory / WEIGHTS_FILE, metadata={"format": "pt", "model": meta["model"]})
    write_json_atomic(directory / CONFIG_FILE, meta)
    with atomic_path(directory / MODEL_CARD) as temporary:
        temporary.write_text(model_card(meta, sum(v.numel() for v in state.values())))
    return directory


def model_card(meta: dict, parameters: int) -> str:
    """A Hugging Face model card (README.md with YAML metadata) for a saved model: what it is and how to load it."""
    config, name = meta["config"], meta["model"]
    channels = ", ".join(meta["channel_names"]) or f"{config.get('in_chans', '?')} (unnamed)"
    try:
        family = f"{family_of(name).name} family, "
    except UserInputError:  # registered without a family
        family = ""
    lines = ["---", "library_name: maefast", "tags:", "- maefast", "- microscopy", "- cell-painting",
             "- masked-autoencoder", "pipeline_tag: image-feature-extraction", "---", "", f"# {name}", "",
             f"A maefast model ({family}{parameters / 1e6:.1f} M parameters), saved with "
             f"`maefast.save_pretrained`. Input: raw integer pixels (B, C, H, W) of the channels {channels}, "
             f"{config.get('img_size', '?')} x {config.get('img_size', '?')} crops; each image and channel is "
             "standardized inside the model.", "", "```python", "import maefast", "",
             'model = maefast.from_pretrained("<this folder or Hub id>")   # eval mode',
             "embeddings = model.embed(pixels)                             # (B, D)", "```", "",
             "Embed a whole screen: `maefast embed --checkpoint <this folder or Hub id> --data SCREEN --out EMB`.",
             "", "## Config", "", "```json", json.dumps(config, indent=2, sort_keys=True), "```", ""]
    extra = {k: v for k, v in meta.items() if k not in ("format", "model", "config", "channel_names")}
    if extra:
        lines += ["## Training record", "", "```json", json.dumps(extra, indent=2, sort_keys=True, default=str),
                  "```", ""]
    return "\n".join(lines)


def push_to_hub(model, repo_id: str, channel_names: list[str] | None = None, commit_message: str = "maefast model",
                private: bool | None = None, token: str | bool | None = None, revision: str | None = None) -> str:
    """Saves `model` as save_pretrained does (weights, config, model card) and uploads the folder to the Hugging
    Face Hub repository `repo_id` (created if needed); returns the commit's URL. Needs huggingface_hub
    (python -m pip install "maefast[hub]") and a token (hf auth login, or token=...)."""
    try:
        import huggingface_hub
    except ImportError:
        raise MissingDependency("push_to_hub needs huggingface_hub: python -m pip install \"maefast[hub]\"") from None
    api = huggingface_hub.HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    with tempfile.TemporaryDirectory() as folder:
        save_pretrained(model, folder, channel_names=channel_names)
        commit = api.upload_folder(repo_id=repo_id, folder_path=folder, commit_message=commit_message,
                                   revision=revision)
    return getattr(commit, "commit_url", None) or str(commit)


def pretrained_config(model, channel_names: list[str] | None = None, extra: dict | None = None) -> dict:
    """What config.json holds: the registry name and config that rebuild the model, channel names."""
    name = getattr(model, "model_name", None)
    if name is None:
        raise UserInputError("save_pretrained needs a model built by maefast.create_model (it records the name)")
    config = model_config_dict(model)
    channel_names = list(channel_names or config.get("channel_names") or [])
    return {"format": "maefast", "model": name, "config": config, "channel_names": channel_names, **(extra or {})}


def read_config(directory: Path) -> dict:
    config_path = directory / CONFIG_FILE
    meta = read_json(config_path)
    if not isinstance(meta, dict):
        raise UserInputError(f"{config_path}: not a maefast model config (a JSON object), got a {type(meta).__name__}")
    return meta


def from_pretrained(directory, trust_pickle: bool = False, *, torch_dtype: torch.dtype | str | None = None,
                    device: torch.device | str | None = None, revision: str | None = None, cache_dir=None,
                    local_files_only: bool = False, token: str | bool | None = None, **overrides):
    """Rebuilds the model of a checkpoint folder (a Hub id, a training run's folder or a ResolvedCheckpoint) and
    loads its weights, as Hugging Face's from_pretrained does: in eval mode (call model.train() to train it),
    loaded without autograd, its parameters in `torch_dtype` (a torch.dtype, its name such as "bfloat16", or
    "auto": the dtype the weights are stored in; default float32) on `device`. revision, cache_dir,
    local_files_only and token are huggingface_hub's, for a Hub id.

    The folder is maefast's (save_pretrained) or the public reference's (MAEModel.save_pretrained: its
    config.json and a model.safetensors that is a pickle, so trust_pickle=True is needed; see
    maefast.models.reference). overrides change create_model's options (e.g. drop_path_rate=0.0).
    """
    checkpoint = resolve_checkpoint(directory, revision=revision, cache_dir=cache_dir,
                                    local_files_only=local_files_only, token=token)
    meta = checkpoint.config
    if meta is None:
        raise FileNotFoundError(f"{checkpoint}: no {CONFIG_FILE} to rebuild the model from (for bare weights, build "
                                f"the model with create_model and call load_pretrained)")
    if reference.is_reference_config(meta):
        name, config = reference.model_spec(meta)
        layout = "reference"
    elif isinstance(meta.get("model"), str) and isinstance(meta.get("config"), dict):
        name, config, layout = meta["model"], meta["config"], "maefast"
    else:
        raise UserInputError(f"{checkpoint.folder / CONFIG_FILE}: neither a maefast config (keys model and config) "
                             f"nor the public reference's (model_type: MAE); keys: {sorted(meta)[:12]}")
    model = create_model(name, **{**config, **overrides})
    load_pretrained(model, checkpoint, layout=layout, trust_pickle=trust_pickle)
    return model.to(device=device, dtype=parameter_dtype(torch_dtype, checkpoint, trust_pickle)).eval()


def parameter_dtype(torch_dtype, checkpoint: ResolvedCheckpoint, trust_pickle: bool) -> torch.dtype | None:
    """from_pretrained's torch_dtype as a floating torch.dtype (None: leave float32); "auto": the dtype most of the
    checkpoint's floating tensors are stored in."""
    if torch_dtype is None or isinstance(torch_dtype, torch.dtype) and torch_dtype.is_floating_point:
        return torch_dtype
    if torch_dtype == "auto":
        stored = [v.dtype for v in read_state_dict(checkpoint, trust_pickle).values() if v.is_floating_point()]
        return max(set(stored), key=stored.count) if stored else None
    dtype = getattr(torch, str(torch_dtype), None)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise UserInputError(f"torch_dtype must be a floating torch.dtype, its name (e.g. \"bfloat16\") or \"auto\", "
                             f"got {torch_dtype!r}")
    return dtype
