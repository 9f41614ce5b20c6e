"""Training checkpoints: everything needed to continue exactly, written atomically.

<out>/checkpoints/step-00000100/  model.safetensors (full model) and config.json (as save_pretrained
writes them, so `maefast embed --checkpoint` takes a checkpoint directly), train_state.pt (optimizer,
scheduler, RNG states of every rank, loader position, counters), meta.json (step, cumulative FLOPs).
<out>/checkpoints/flops.csv lists checkpoint,flops for the recall-against-FLOPs figure. The directory is written under a
temporary name and renamed when complete; <out>/checkpoints/latest.json (the manifest) then names it,
so a resumed run never reads a partial checkpoint.
"""
from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_model_state_dict,
    set_optimizer_state_dict,
)

from maefast.io import atomic_path, write_json_atomic

MANIFEST = "latest.json"
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
    return Path(out_dir) / "checkpoints"


def save_checkpoint(out_dir, step: int, model, optimizer, scheduler, train_state: dict, rng_states: list,
                    meta: dict, model_config: dict, is_main: bool, keep: int) -> Path | None:
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
    save_file({k: v.contiguous() for k, v in model_state.items()}, str(partial / "model.safetensors"))
    torch.save({"optimizer": optimizer_state, "scheduler": scheduler.state_dict(), "rng": rng_states,
                **train_state}, partial / "train_state.pt")
    (partial / "meta.json").write_text(json.dumps({"step": step, **meta}, indent=2))
    (partial / "config.json").write_text(json.dumps(model_config, indent=2))
    shutil.rmtree(final, ignore_errors=True)
    partial.rename(final)
    write_json_atomic(root / MANIFEST, {"step": step, "path": final.name, **meta})
    for old in sorted(root.glob("step-*"))[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    write_flops_table(root)
    return final


def write_flops_table(root: Path) -> None:
    rows = ["checkpoint,flops"] + [f"{m['path']},{m['total_flops']}" for m in checkpoint_history(root.parent)]
    with atomic_path(root / "flops.csv") as temporary:
        temporary.write_text("\n".join(rows) + "\n")


def latest_checkpoint(out_dir) -> Path | None:
    manifest = checkpoint_root(out_dir) / MANIFEST
    if not manifest.exists():
        return None
    path = checkpoint_root(out_dir) / json.loads(manifest.read_text())["path"]
    if not (path / "train_state.pt").exists():
        raise FileNotFoundError(f"{manifest} names {path}, which is incomplete or missing")
    return path


def load_checkpoint(path: Path, model, optimizer, scheduler) -> dict:
    """Restores model, optimizer and scheduler in place; returns the rest of the training state."""
    set_model_state_dict(model, load_file(str(path / "model.safetensors")), options=FULL)
    # written by this package (see save_checkpoint); RNG states and numpy arrays need full unpickling
    state = torch.load(path / "train_state.pt", map_location="cpu", weights_only=False)
    set_optimizer_state_dict(model, optimizer, state.pop("optimizer"), options=FULL)
    scheduler.load_state_dict(state.pop("scheduler"))
    return state


def checkpoint_history(out_dir) -> list[dict]:
    """meta.json of every kept checkpoint, oldest first (step, cumulative FLOPs, ...), with its path."""
    return [{**json.loads((p / "meta.json").read_text()), "path": p.name}
            for p in sorted(checkpoint_root(out_dir).glob("step-*")) if (p / "meta.json").exists()]
