"""Training checkpoints: everything needed to continue exactly, written atomically, read without unpickling.

<out>/checkpoints/step-00000100/  model.safetensors (full model) and config.json (as save_pretrained
writes them, so `maefast embed --checkpoint` takes a checkpoint directly); train_state.safetensors +
train_state.json (optimizer state, RNG states of every rank, loader position, counters: tensors and numpy
arrays in the safetensors file, the rest as JSON, see maefast.io.write_state); meta.json (step, cumulative
FLOPs, the effective config, recipe and data fingerprint the run had, for resume checks). The learning-rate
schedule is a function of the step and the config, so it is rebuilt, not stored.
<out>/checkpoints/flops.csv lists checkpoint,flops for the recall-against-FLOPs figure. The directory is
written under a temporary name and renamed when complete; <out>/checkpoints/latest.json (the manifest)
then names it; digests.json, written last into the directory, holds the SHA-256 of every other file. A
resumed run takes the newest checkpoint that is intact as a whole (maefast.train.integrity: digests, the
training state's structure, every weight of the model with its shape and dtype, finite values), and says
which newer ones it skipped and why.
"""
from __future__ import annotations

import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from maefast.errors import UserInputError
from maefast.io import (
    atomic_path,
    read_json,
    read_safetensors,
    read_state,
    write_json_atomic,
    write_safetensors,
    write_state,
)
from maefast.models.checkpoint import RUN_CHECKPOINTS, RUN_MANIFEST
from maefast.train.integrity import check_optimizer, check_train_state, check_weights, verify_digests, write_digests

MANIFEST = RUN_MANIFEST
MODEL_FILE, STATE_STEM, META_FILE = "model.safetensors", "train_state", "meta.json"
PICKLED_STATE = "train_state.pt"  # the format of maefast before the state moved to safetensors + JSON
FULL = StateDictOptions(full_state_dict=True, cpu_offload=True)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checkpoint_root(out_dir) -> Path:
    return Path(out_dir) / RUN_CHECKPOINTS


def save_checkpoint(out_dir, step: int, model, optimizer, train_state: dict, rng_states: list, meta: dict,
                    model_config: dict, is_main: bool, keep: int) -> Path | None:
    """Collective (every rank calls it, for FSDP's gather); rank 0 writes."""
    model_state = get_model_state_dict(model, options=FULL)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=FULL)
    if not is_main:
        return None
    root = checkpoint_root(out_dir)
    final = root / f"step-{step:08d}"
    partial = root / f".step-{step:08d}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    write_safetensors({k: v.contiguous() for k, v in model_state.items()}, partial / MODEL_FILE)
    write_state(partial / STATE_STEM, {"optimizer": optimizer_state, "rng": rng_states, **train_state})
    write_json_atomic(partial / META_FILE, {"step": step, **meta})
    write_json_atomic(partial / "config.json", model_config)
    write_digests(partial)
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    write_json_atomic(root / MANIFEST, {"step": step, "path": final.name, "total_flops": meta["total_flops"]})
    # a checkpoint newer than this one is a damaged one the resume skipped: it goes with the oldest
    kept = [path for path in checkpoint_dirs(out_dir) if path.name <= final.name][:keep]
    for old in checkpoint_dirs(out_dir):
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)
    write_flops_table(root)
    return final


def write_flops_table(root: Path) -> None:
    rows = ["checkpoint,flops"] + [f"{m['path']},{m['total_flops']}" for m in checkpoint_history(root.parent)]
    with atomic_path(root / "flops.csv") as temporary:
        temporary.write_text("\n".join(rows) + "\n")


def checkpoint_dirs(out_dir) -> list[Path]:
    """The complete checkpoint directories of a run, newest first."""
    return sorted(checkpoint_root(out_dir).glob("step-*"), reverse=True)


@dataclass
class Checkpoint:
    """A checkpoint read whole into memory: nothing of it is applied before every file has read back."""
    path: Path
    meta: dict          # step, total_flops, crops_seen, config, recipe, data (see Trainer.save)
    model_state: dict   # the full model's tensors
    train_state: dict   # optimizer, rng (one per rank), loader, step, total_flops, crops_seen


def read_checkpoint(path: Path) -> Checkpoint:
    """The checkpoint at `path`, checked whole (maefast.train.integrity); UserInputError or FileNotFoundError
    naming the file and what was wrong otherwise."""
    if not (path / f"{STATE_STEM}.json").exists() and (path / PICKLED_STATE).exists():
        raise UserInputError(f"{path / PICKLED_STATE}: training state in the pickle format of older maefast "
                             f"versions, which maefast no longer opens (unpickling a file can run code); "
                             f"its {MODEL_FILE} still embeds and loads with maefast.from_pretrained")
    meta = read_json(path / META_FILE)
    require_keys(meta, ("step", "config", "data"), path / META_FILE)
    state_file = path / f"{STATE_STEM}.json"
    try:
        train_state = read_state(path / STATE_STEM)
    except (TypeError, KeyError, ValueError, AttributeError, IndexError) as error:
        if isinstance(error, UserInputError):
            raise
        raise UserInputError(f"{state_file}: not a training state that maefast wrote ({type(error).__name__}: "
                             f"{error})") from None
    require_keys(train_state, ("optimizer", "rng", "loader", "step", "total_flops", "crops_seen"), state_file)
    model_state = read_safetensors(path / MODEL_FILE)
    model_config = read_json(path / "config.json")
    verify_digests(path, (MODEL_FILE, f"{STATE_STEM}.json", f"{STATE_STEM}.safetensors", META_FILE, "config.json"))
    check_train_state(train_state, meta, state_file)
    expected = check_weights(model_state, model_config, meta, path, MODEL_FILE)
    check_optimizer(train_state["optimizer"], expected, path / f"{STATE_STEM}.safetensors")
    return Checkpoint(path, meta, model_state, train_state)


def require_keys(record, keys: tuple[str, ...], path: Path) -> None:
    missing = [key for key in keys if not isinstance(record, dict) or key not in record]
    if missing:
        raise UserInputError(f"{path}: lacks {missing}; not a checkpoint file of this maefast version")


def newest_intact_checkpoint(out_dir) -> Checkpoint | None:
    """The newest checkpoint whose files all read back (None when the run has none); warns about each newer
    one it skips, naming the damaged file. UserInputError listing every checkpoint when none reads back."""
    skipped = []
    for path in checkpoint_dirs(out_dir):
        try:
            checkpoint = read_checkpoint(path)
        except (UserInputError, FileNotFoundError) as error:
            skipped.append(f"{path.name}: {error}")
            continue
        for reason in skipped:
            warnings.warn(f"resume: skipped the damaged checkpoint {reason}", stacklevel=2)
        return checkpoint
    if skipped:
        raise UserInputError(f"{checkpoint_root(out_dir)}: no intact checkpoint to resume from; " + "; ".join(skipped))
    return None


def restore_checkpoint(checkpoint: Checkpoint, model, optimizer) -> None:
    """Loads the weights and the optimizer state in place. The optimizer keeps the hyperparameters it was
    built with (the current config: the same unless a resume allowed a change), not the stored ones."""
    try:
        set_model_state_dict(model, checkpoint.model_state, options=FULL)
    except RuntimeError as error:  # the checkpoint fits its own config.json (checked), not this run's model
        raise UserInputError(f"{checkpoint.path / MODEL_FILE}: does not fit the model of this run's config "
                             f"({' '.join(str(error).split())[:500]})") from None
    stored = checkpoint.train_state["optimizer"]
    groups = [{**{k: v for k, v in configured.items() if k != "params"}, "params": group["params"]}
              for group, configured in zip(stored["param_groups"], optimizer.param_groups, strict=True)]
    set_optimizer_state_dict(model, optimizer, {**stored, "param_groups": groups}, options=FULL)


def checkpoint_history(out_dir) -> list[dict]:
    """meta.json of every kept checkpoint, oldest first (step, cumulative FLOPs, ...), with its path; a
    damaged one is left out with a warning (the table is a record, not a reason to stop a run)."""
    history = []
    for path in reversed(checkpoint_dirs(out_dir)):
        try:
            history.append({**read_json(path / META_FILE), "path": path.name})
        except (UserInputError, FileNotFoundError) as error:
            warnings.warn(f"checkpoint history: {path.name} left out: {error}", stacklevel=2)
    return history
