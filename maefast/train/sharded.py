"""Sharded training checkpoints through torch.distributed.checkpoint (DCP): every rank writes its own part.

A sharded checkpoint directory holds what a whole one does (maefast.train.state), except the weights and the
optimizer's tensors, which live in sharded/: one safetensors file per rank (DCP's Hugging Face storage:
each file's header records which slice of which tensor it holds), written by every rank in parallel, so no
rank gathers the whole model. Nothing in it is a pickle. Any world size reads it back: DCP reads, for each
rank's new shard of each tensor, the slices of the stored files that cover it (4 ranks -> 2 -> 3).

Writing is asynchronous where torch.distributed runs: the tensors are copied to CPU memory, the step goes
on, and a background thread writes them, coordinated over a process group of its own. The directory is
written under a temporary name and renamed, by rank 0, only once every rank's files are complete (DCP's
finish step is a collective), so a crash during a save leaves the previous checkpoint whole.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from maefast.errors import UserInputError

SHARDED_DIR = "sharded"
SHARD_SUFFIX = ".safetensors"


def is_sharded(path: Path) -> bool:
    return (Path(path) / SHARDED_DIR).is_dir()


def split_optimizer_state(optimizer_state: dict) -> tuple[dict, list]:
    """(the tensors of a (sharded) optimizer state dict, its param_groups: hyperparameters and parameter names)."""
    return optimizer_state["state"], optimizer_state["param_groups"]


def with_configured_hyperparameters(stored_groups: list, configured_groups: list) -> list:
    """The stored param_groups' parameters with the hyperparameters of the optimizer as it is configured now."""
    return [{**{k: v for k, v in configured.items() if k != "params"}, "params": stored["params"]}
            for stored, configured in zip(stored_groups, configured_groups, strict=True)]


class ShardedWriter:
    """Writes the tensors of sharded checkpoints, one save in flight at a time (every rank holds one)."""

    def __init__(self, distributed: bool):
        self.distributed = distributed
        # the background writes' collectives run on a group of their own, never interleaved with training's
        self.group = dist.new_group(backend="gloo") if distributed else None
        self.pending = None  # (future, commit) of the save being written

    def save(self, directory: Path, model, optimizer, commit) -> None:
        """Starts writing the model's and the optimizer's tensors into directory/sharded; `commit()` runs (on
        this rank) once every rank's files are complete: it renames the directory into place."""
        self.wait()
        tensors = {"model": get_model_state_dict(model),
                   "optimizer": split_optimizer_state(get_optimizer_state_dict(model, optimizer))[0]}
        writer = HuggingFaceStorageWriter(str(directory / SHARDED_DIR), save_distributed=True)
        if not self.distributed:
            dcp.save(tensors, storage_writer=writer, no_dist=True)
            commit()
            return
        future = dcp.async_save(snapshot_cpu_tensors(tensors), storage_writer=writer, process_group=self.group)
        self.pending = (future, commit)

    def poll(self) -> None:
        """Commits the save in flight if it has finished (called after every step; never blocks)."""
        if self.pending is not None and self.pending[0].done():
            self.wait()

    def wait(self) -> None:
        """Blocks until the save in flight is written and committed (before the next save, and at exit)."""
        if self.pending is None:
            return
        future, commit = self.pending
        self.pending = None
        future.result()
        commit()


def snapshot_cpu_tensors(state):
    """`state` with its CPU tensors copied: DCP stages device tensors into CPU memory before it returns, but
    takes CPU tensors as they are, which the next optimizer steps would change while the thread writes them."""
    if isinstance(state, dict):
        return {key: snapshot_cpu_tensors(value) for key, value in state.items()}
    if isinstance(state, torch.Tensor) and state.device.type == "cpu":
        return state.detach().clone()
    return state


def optimizer_param_groups(model, optimizer) -> list:
    """The optimizer's param_groups with parameter names (what train_state.json keeps of a sharded optimizer)."""
    return split_optimizer_state(get_optimizer_state_dict(model, optimizer))[1]


def check_shards(path: Path) -> None:
    """UserInputError naming the sharded/ folder of `path` when it has no shard or one whose header is damaged."""
    from safetensors import SafetensorError, safe_open
    files = sorted((path / SHARDED_DIR).glob(f"*{SHARD_SUFFIX}"))
    if not files:
        raise UserInputError(f"{path / SHARDED_DIR}: no {SHARD_SUFFIX} shard files")
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as handle:
                handle.keys()
        except (SafetensorError, OSError) as error:
            raise UserInputError(f"{file}: damaged or truncated shard ({error})") from None


def load_sharded(path: Path, model, optimizer, param_groups: list) -> None:
    """Loads the model's and the optimizer's tensors of the sharded checkpoint `path` into this rank's shards
    (collective under torch.distributed; any world size). The optimizer keeps the hyperparameters it was built
    with (the current config), as maefast.train.state.restore_checkpoint does."""
    model_state = get_model_state_dict(model)
    optimizer_tensors, current_groups = split_optimizer_state(get_optimizer_state_dict(model, optimizer))
    tensors = {"model": model_state, "optimizer": optimizer_tensors}
    reader = HuggingFaceStorageReader(str(path / SHARDED_DIR))
    try:
        dcp.load(tensors, storage_reader=reader, no_dist=not dist.is_initialized())
    except Exception as error:  # DCP wraps every rank's failure (missing key, shape) in one CheckpointException
        raise UserInputError(f"{path / SHARDED_DIR}: does not load into this model and optimizer ({error})") from None
    set_model_state_dict(model, tensors["model"])
    groups = with_configured_hyperparameters(param_groups, current_groups)
    set_optimizer_state_dict(model, optimizer, {"state": tensors["optimizer"], "param_groups": groups})


def load_sharded_weights(path: Path, model) -> None:
    """The weights of a sharded checkpoint into a whole (unsharded) model in this one process."""
    state = model.state_dict()
    try:
        dcp.load({"model": state}, storage_reader=HuggingFaceStorageReader(str(path / SHARDED_DIR)), no_dist=True)
    except Exception as error:
        raise UserInputError(f"{path / SHARDED_DIR}: does not load into {type(model).__name__} ({error})") from None
    model.load_state_dict(state)


def save_embedder(model, state: dict, directory: Path, model_name: str, channel_names: list[str],
                  extra: dict | None = None) -> Path:
    """What embeds of a trained `model` (whole weights `state`), as save_pretrained writes it: an MAE's encoder
    under the encoder's registry name, or the whole model (MU-Net, classifier), whose .embed gives the embedding."""
    from maefast.models.checkpoint import save_pretrained
    from maefast.models.families import family_of
    family = family_of(model_name)
    embedder = family.embedder(model)
    if embedder is not model:  # the embedder is a submodule (an MAE's encoder): its part of the weights
        prefix = next(name for name, module in model.named_modules() if module is embedder) + "."
        state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
        embedder.model_name = family.embedder_name(model_name)
    return save_pretrained(embedder, directory, channel_names=channel_names, state_dict=state, extra=extra)


def export_checkpoint(source, out, encoder_only: bool = False) -> Path:
    """`maefast export --checkpoint`: a training checkpoint (sharded or whole; or a run directory: its newest)
    as the single-file safetensors + config.json that maefast.from_pretrained reads, in this one process."""
    from maefast.models.checkpoint import CONFIG_FILE, WEIGHTS_FILE, read_config, read_state_dict, save_pretrained
    from maefast.models.registry import create_model
    path = Path(source)
    if (path / "checkpoints").is_dir():
        steps = sorted((path / "checkpoints").glob("step-*"), reverse=True)
        if not steps:
            raise UserInputError(f"{path}: a run directory without a complete checkpoint")
        path = steps[0]
    if not (path / CONFIG_FILE).exists():
        raise UserInputError(f"{path}: not a training checkpoint (no {CONFIG_FILE}); give a checkpoints/step-* "
                             f"directory or a run directory")
    meta = read_config(path)
    model = create_model(meta["model"], **meta["config"])
    if is_sharded(path):
        check_shards(path)
        load_sharded_weights(path, model)
    else:
        model.load_state_dict(read_state_dict(path / WEIGHTS_FILE))
    extra = {k: v for k, v in meta.items() if k not in ("format", "model", "config", "channel_names")}
    channels = list(meta.get("channel_names") or [])
    if encoder_only:
        return save_embedder(model, model.state_dict(), Path(out), meta["model"], channels, extra)
    return save_pretrained(model, out, channel_names=channels, extra=extra)
