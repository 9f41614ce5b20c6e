"""Training checkpoints: everything needed to continue exactly, written atomically, read without unpickling.

<out>/checkpoints/step-00000100/  model.safetensors (full model) and config.json (as save_pretrained
writes them, so `maefast embed --checkpoint` takes a checkpoint directly); train_state.safetensors +
train_state.json (optimizer state, RNG states of every rank, loader position, counters: tensors and numpy
arrays in the safetensors file, the rest as JSON, see maefast.io.write_state); meta.json (step, cumulative
FLOPs, the effective config, recipe and data fingerprint the run had, for resume checks). The learning-rate
schedule is a function of the step and the config, so it is rebuilt, not stored. A sharded checkpoint
(maefast.train.sharded) holds the same, except that the weights and the optimizer's tensors are in sharded/,
each rank's part in a file of its own, and train_state keeps only the optimizer's parameter groups.
<out>/checkpoints/flops.csv lists checkpoint,flops for the recall-against-FLOPs figure. The directory is
written under a temporary name and renamed when complete; <out>/checkpoints/latest.json (the manifest)
then names it; digests.json, written last into the directory, holds the SHA-256 of every other file (a
sharded checkpoint's shard files too, each hashed by the rank that wrote it). A resumed run takes the newest
checkpoint that is intact as a whole (maefast.train.integrity: digests, the training state's structure, every
weight of the model with its shape and dtype, finite values; the ranks of a distributed run share the
reading of a sharded checkpoint's files and agree on the result), and says which newer ones it skipped and why.
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

from maefast import distributed as dist_utils
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
from maefast.train.integrity import (
    check_optimizer,
    check_train_state,
    check_weights,
    expected_weights,
    verify_digests,
    write_digests,
)
from maefast.train.sharded import (
    SHARDED_DIR,
    ShardedWriter,
    check_sharded_tensors,
    is_sharded,
    load_sharded,
    optimizer_param_groups,
    with_configured_hyperparameters,
)

MANIFEST = RUN_MANIFEST
MODEL_FILE, STATE_STEM, META_FILE = "model.safetensors", "train_state", "meta.json"
RECORD_FILES = (f"{STATE_STEM}.json", f"{STATE_STEM}.safetensors", META_FILE, "config.json")
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
    """A whole checkpoint. Collective (every rank calls it, for FSDP's gather); rank 0 writes."""
    model_state = get_model_state_dict(model, options=FULL)
    optimizer_state = get_optimizer_state_dict(model, optimizer, options=FULL)
    if not is_main:
        return None
    partial = start_checkpoint(out_dir, step)
    write_safetensors({k: v.contiguous() for k, v in model_state.items()}, partial / MODEL_FILE)
    write_records(partial, step, {"optimizer": optimizer_state, "rng": rng_states, **train_state}, meta, model_config)
    write_digests(partial)
    return commit_checkpoint(out_dir, step, meta["total_flops"], keep)


def save_sharded_checkpoint(out_dir, step: int, model, optimizer, train_state: dict, rng_states: list, meta: dict,
                            model_config: dict, context: dist_utils.DistributedContext, keep: int,
                            writer: ShardedWriter) -> None:
    """A sharded checkpoint (maefast.train.sharded): rank 0 writes the records, every rank its shard, in the
    background where `writer` is asynchronous; once every rank's files are written (and hashed), rank 0 writes
    digests.json and commits the directory. Collective: every rank calls it."""
    writer.wait()  # the previous save is committed before this one starts
    param_groups = optimizer_param_groups(model, optimizer)
    partial = partial_dir(out_dir, step)
    if context.is_main:
        start_checkpoint(out_dir, step)
        write_records(partial, step, {"optimizer": {"param_groups": param_groups}, "rng": rng_states, **train_state},
                      {**meta, "format": "sharded"}, model_config)
    dist_utils.barrier(context)  # the partial directory exists before any rank writes into it

    def commit(shard_digests: dict) -> None:  # rank 0, once every rank's files are written
        write_digests(partial, shard_digests)
        commit_checkpoint(out_dir, step, meta["total_flops"], keep)

    writer.save(partial, model, optimizer, commit)


def partial_dir(out_dir, step: int) -> Path:
    """Where a checkpoint is written until it is complete (never read as a checkpoint)."""
    return checkpoint_root(out_dir) / f".step-{step:08d}.partial"


def start_checkpoint(out_dir, step: int) -> Path:
    """An empty partial directory for the checkpoint of `step` (what a crashed save left there is removed)."""
    partial = partial_dir(out_dir, step)
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    return partial


def write_records(partial: Path, step: int, state: dict, meta: dict, model_config: dict) -> None:
    """The checkpoint's training state, meta.json and config.json (everything but the weights)."""
    write_state(partial / STATE_STEM, state)
    write_json_atomic(partial / META_FILE, {"step": step, **meta})
    write_json_atomic(partial / "config.json", model_config)


def commit_checkpoint(out_dir, step: int, total_flops: float, keep: int) -> Path:
    """Renames the complete partial directory of `step` into place, names it in the manifest and removes the
    checkpoints beyond the newest `keep` (rank 0, once every file of the checkpoint is written)."""
    root = checkpoint_root(out_dir)
    final = root / f"step-{step:08d}"
    shutil.rmtree(final, ignore_errors=True)
    partial_dir(out_dir, step).rename(final)
    write_json_atomic(root / MANIFEST, {"step": step, "path": final.name, "total_flops": total_flops})
    # a checkpoint newer than this one is a damaged one the resume skipped: it goes with the oldest
    kept = [path for path in checkpoint_dirs(out_dir) if path.name <= final.name][:keep]
    for old in checkpoint_dirs(out_dir):
        if old not in kept:
            shutil.rmtree(old, ignore_errors=True)
    for stale in root.glob(".step-*.partial"):  # saves that a crash interrupted, older than this one
        if stale.name < f".step-{step:08d}":
            shutil.rmtree(stale, ignore_errors=True)
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
    model_state: dict | None  # the full model's tensors (None: a sharded checkpoint, read when restored)
    train_state: dict   # optimizer, rng (one per rank), loader, step, total_flops, crops_seen


def read_checkpoint(path: Path, share: tuple[int, int] = (0, 1)) -> Checkpoint:
    """The checkpoint at `path`, checked whole (maefast.train.integrity); UserInputError or FileNotFoundError
    naming the file and what was wrong otherwise. share (rank, ranks): of a sharded checkpoint's shard files,
    this process verifies every ranks-th from the rank-th on (their digests and finite values); the records,
    the schema and the tensors' shapes it checks whole."""
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
    model_config = read_json(path / "config.json")
    sharded = is_sharded(path)
    if sharded:
        verify_digests(path, RECORD_FILES, share=share, listed_folder=SHARDED_DIR)
        check_train_state(train_state, meta, state_file, sharded=True)
        expected = expected_weights(model_config, meta, path)
        check_sharded_tensors(path, expected, train_state["optimizer"], share)
        return Checkpoint(path, meta, None, train_state)
    model_state = read_safetensors(path / MODEL_FILE)
    verify_digests(path, (MODEL_FILE, *RECORD_FILES))
    check_train_state(train_state, meta, state_file)
    expected = expected_weights(model_config, meta, path)
    check_weights(model_state, expected, path / MODEL_FILE)
    check_optimizer(train_state["optimizer"], expected, path / f"{STATE_STEM}.safetensors")
    return Checkpoint(path, meta, model_state, train_state)


def require_keys(record, keys: tuple[str, ...], path: Path) -> None:
    missing = [key for key in keys if not isinstance(record, dict) or key not in record]
    if missing:
        raise UserInputError(f"{path}: lacks {missing}; not a checkpoint file of this maefast version")


def newest_intact_checkpoint(out_dir, context: dist_utils.DistributedContext | None = None) -> Checkpoint | None:
    """The newest checkpoint whose files all read back (None when the run has none); warns about each newer
    one it skips, naming the damaged file. UserInputError listing every checkpoint when none reads back.
    Collective under torch.distributed (`context`): the ranks share the verification of sharded checkpoints'
    files and take the same checkpoint (one that any rank found damaged is skipped by all)."""
    context = context or dist_utils.DistributedContext()
    candidates = dist_utils.broadcast_object(checkpoint_dirs(out_dir), context)
    skipped = []
    for path in candidates:
        try:
            checkpoint, problem = read_checkpoint(path, (context.rank, context.world_size)), None
        except (UserInputError, FileNotFoundError) as error:
            checkpoint, problem = None, str(error)
        problems = [p for p in dist_utils.gather_objects(problem, context) if p]
        if problems:
            skipped.append(f"{path.name}: {problems[0]}")
            continue
        for reason in skipped:
            warnings.warn(f"resume: skipped the damaged checkpoint {reason}", stacklevel=2)
        return checkpoint
    if skipped:
        raise UserInputError(f"{checkpoint_root(out_dir)}: no intact checkpoint to resume from; " + "; ".join(skipped))
    return None


def restore_checkpoint(checkpoint: Checkpoint, model, optimizer) -> None:
    """Loads the weights and the optimizer state in place (collective under torch.distributed). The optimizer
    keeps the hyperparameters it was built with (the current config: the same unless a resume allowed a
    change), not the stored ones."""
    stored = checkpoint.train_state["optimizer"]
    if checkpoint.model_state is None:
        load_sharded(checkpoint.path, model, optimizer, stored["param_groups"])
        return
    try:
        set_model_state_dict(model, checkpoint.model_state, options=FULL)
    except RuntimeError as error:  # the checkpoint fits its own config.json (checked), not this run's model
        raise UserInputError(f"{checkpoint.path / MODEL_FILE}: does not fit the model of this run's config "
                             f"({' '.join(str(error).split())[:500]})") from None
    groups = with_configured_hyperparameters(stored["param_groups"], optimizer.param_groups)
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
