"""How a run is made fast before its first step: the attention kernel of each site, and torch.compile.

Both are decided once, at setup, outside any traced region, and the same way on every rank:
  - attention: `model.attention` (config) names a backend for every site, or "auto": on a GPU every
    candidate is timed, forward and backward, at the run's own shapes with a sub-batch of at most
    attention_setup.TUNING_CROPS crops (recorded from one forward of random pixels) and the fastest per role
    wins; rank 0's choice is broadcast, written to <out>/attention.json and into every checkpoint, and a
    resumed run reuses what its checkpoint recorded instead of timing again.
  - compile: `run.compile` "auto" compiles on CUDA (fullgraph: the models have no graph break) and not on the
    CPU, where the compile time would outweigh short runs; true / false force it.
"""
from __future__ import annotations

import torch

from maefast.io import write_json_atomic
from maefast.models.attention_setup import (
    configure_attention,
    current_attention,
    random_pixels,
    tune_attention,
    tuning_batch,
)
from maefast.models.families import family_of

ATTENTION_FILE = "attention.json"


def compile_enabled(setting, device: torch.device) -> bool:
    if setting == "auto":
        return device.type == "cuda"
    return bool(setting)


def random_batch(model, batch: int, channels: int, size: int, device: torch.device) -> tuple:
    """Inputs of one training step at the run's shapes: uint16 pixels (and labels for a classifier)."""
    inputs = (random_pixels((batch, channels, size, size), device),)
    if family_of(model).needs_labels:
        inputs += (torch.randint(0, model.config.num_classes, (batch,), device=device),)
    return inputs


def choose_attention(model, requested: str, batch_shape: tuple[int, int, int], device: torch.device, autocast,
                     recorded: dict | None, broadcast) -> dict:
    """Sets the attention backend of every site of `model` and returns {"requested", "choice", "timings"}.

    batch_shape: (batch, channels, crop size) of a training step; recorded: the record a resumed checkpoint
    holds (reused as it is); broadcast(obj) -> rank 0's obj (every rank calls it)."""
    if recorded is not None:
        return {"requested": requested, "choice": configure_attention(model, recorded["choice"]),
                "timings": recorded.get("timings", {}), "reused_from_checkpoint": True}
    if requested != "auto" or device.type != "cuda":
        return {"requested": requested, "choice": configure_attention(model, requested), "timings": {}}

    batch, channels, size = batch_shape

    def step():  # a forward at a sub-batch of the run's shapes; tune_attention restores the RNG afterwards
        with torch.no_grad(), autocast():
            model(*random_batch(model, tuning_batch(batch), channels, size, device))

    tuning = tune_attention(model, step, needs_grad=True)
    choice, timings = broadcast((tuning.choice, tuning.timings))
    configure_attention(model, choice)
    return {"requested": requested, "choice": current_attention(model), "timings": timings}


def record_attention(out_dir, attention: dict) -> None:
    write_json_atomic(out_dir / ATTENTION_FILE, attention)
