"""Sharded training checkpoints through torch.distributed.checkpoint (DCP): every rank writes its own part.

A sharded checkpoint directory holds what a whole one does (maefast.train.state), except the weights and the
optimizer's tensors, which live in sharded/: one safetensors file per rank (DCP's Hugging Face storage:
each file's header records which slice of which tensor it holds), written by every rank in parallel, so no
rank gathers the whole model. Nothing in it is a pickle. Any world size reads it back: DCP reads, for each
rank's new shard of each tensor, the slices of the stored files that cover it (4 ranks -> 2 -> 3).

Writing is asynchronous under torch.distributed: the tensors are copied to CPU memory (the step waits for
that copy only), then a background thread writes them, coordinated with the other ranks over a gloo group of
its own whose collectives time out (MAEFAST_CHECKPOINT_TIMEOUT_S, default 1800 s) instead of waiting forever
for a rank that died. Once DCP's save has returned on every rank (every file is written), each rank hashes a
share of the shard files, rank 0 gathers the digests, writes digests.json and renames the directory into
place. A crash at any point before that rename leaves a `.step-N.partial` directory that is never read, and
the previous checkpoint whole. The thread is a daemon: a rank whose training fails exits without waiting for
a save that can no longer complete.

Reading checks it whole before anything is applied (check_sharded_tensors, with maefast.train.integrity):
every file's digest, the tensors' names, global shapes and dtypes against the model of config.json, that the
stored pieces cover each tensor exactly, and finite values; the ranks of a job share the files.
"""
from __future__ import annotations

import os
import threading
from datetime import timedelta
from pathlib import Path

import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from maefast import distributed as dist_utils
from maefast.errors import UserInputError
from maefast.io import check_finite
from maefast.train.integrity import (
    ExpectedWeights,
    check_optimizer_shape,
    check_parameter_groups,
    check_shapes,
    check_tensor_names,
    file_digests,
)

SHARDED_DIR = "sharded"
SHARD_SUFFIX = ".safetensors"
MODEL_KEY, OPTIMIZER_KEY = "model", "optimizer"  # the two parts of the state DCP writes (keys "model.<name>", ...)
TIMEOUT_VARIABLE = "MAEFAST_CHECKPOINT_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 1800.0


def is_sharded(path: Path) -> bool:
    return (Path(path) / SHARDED_DIR).is_dir()


def save_timeout() -> timedelta:
    """How long a collective of an asynchronous save waits for the other ranks (MAEFAST_CHECKPOINT_TIMEOUT_S)."""
    text = os.environ.get(TIMEOUT_VARIABLE, str(DEFAULT_TIMEOUT_S))
    try:
        seconds = float(text)
    except ValueError:
        seconds = float("nan")
    if not seconds > 0:
        raise UserInputError(f"{TIMEOUT_VARIABLE}={text!r} must be a positive number of seconds")
    return timedelta(seconds=seconds)


def split_optimizer_state(optimizer_state: dict) -> tuple[dict, list]:
    """(the tensors of a (sharded) optimizer state dict, its param_groups: hyperparameters and parameter names)."""
    return optimizer_state["state"], optimizer_state["param_groups"]


def with_configured_hyperparameters(stored_groups: list, configured_groups: list) -> list:
    """The stored param_groups' parameters with the hyperparameters of the optimizer as it is configured now."""
    return [{**{k: v for k, v in configured.items() if k != "params"}, "params": stored["params"]}
            for stored, configured in zip(stored_groups, configured_groups, strict=True)]


def sharded_state(model, optimizer) -> dict:
    """What a sharded checkpoint's files hold: this rank's shards of the weights and the optimizer's tensors."""
    return {MODEL_KEY: get_model_state_dict(model),
            OPTIMIZER_KEY: split_optimizer_state(get_optimizer_state_dict(model, optimizer))[0]}


class ShardedWriter:
    """Writes the tensors of sharded checkpoints, one save in flight at a time (every rank holds one)."""

    def __init__(self, context: dist_utils.DistributedContext):
        self.context = context
        # the background writes' collectives run on a group of their own, never interleaved with training's,
        # and give up after a timeout rather than wait forever for a rank that died
        self.group = dist.new_group(backend="gloo", timeout=save_timeout()) if context.enabled else None
        self.stager = None
        self.thread: threading.Thread | None = None
        self.error: BaseException | None = None

    def save(self, directory: Path, model, optimizer, commit) -> None:
        """Writes the model's and the optimizer's tensors into directory/sharded, in the background under
        torch.distributed (collective: every rank calls it); `commit(digests)` runs on rank 0 once every rank's
        files are written, with the digests of the shard files (names relative to `directory`)."""
        self.wait()
        state = sharded_state(model, optimizer)
        if not self.context.enabled:
            self.write(directory, state, commit)
            self.raise_failure()
            return
        staged = self.stage(state)  # a copy: the next steps change the parameters while the thread writes
        self.thread = threading.Thread(target=self.write, args=(directory, staged, commit), daemon=True,
                                       name=f"maefast-checkpoint-{directory.name}")
        self.thread.start()

    def stage(self, state: dict) -> dict:
        from torch.distributed.checkpoint.staging import DefaultStager, StagingOptions
        if self.stager is None:  # its CPU buffers are reused by the next save (the previous one is complete)
            cuda = self.context.device.type == "cuda"
            self.stager = DefaultStager(StagingOptions(use_pinned_memory=cuda, use_shared_memory=False,
                                                       use_async_staging=False, use_non_blocking_copy=False))
        return self.stager.stage(state)

    def write(self, directory: Path, state: dict, commit) -> None:
        """DCP's save, then each rank hashes its share of the files and rank 0 commits (errors kept for wait)."""
        try:
            folder = directory / SHARDED_DIR
            writer = HuggingFaceStorageWriter(str(folder), save_distributed=True)
            dcp.save(state, storage_writer=writer, process_group=self.group, no_dist=not self.context.enabled)
            # DCP's save returns once every rank's files are written: the ranks share the hashing
            names = sorted(f"{SHARDED_DIR}/{p.name}" for p in folder.glob(f"*{SHARD_SUFFIX}"))
            rank, ranks = self.context.rank, self.context.world_size
            mine = file_digests(directory, names[rank::ranks])
            digests = {}
            if self.context.enabled:
                gathered = [None] * ranks
                dist.all_gather_object(gathered, mine, group=self.group)
                for part in gathered:
                    digests.update(part)
            else:
                digests = mine
            if self.context.is_main:
                commit(digests)
        except BaseException as error:  # reported by wait(), in the training thread
            self.error = error

    def wait(self) -> None:
        """Blocks until the save in flight is written and committed (before the next save, and at exit);
        raises what made it fail."""
        if self.thread is not None:
            self.thread.join()
            self.thread = None
        self.raise_failure()

    def raise_failure(self) -> None:
        error, self.error = self.error, None
        if error is not None:
            raise RuntimeError(f"a sharded checkpoint could not be written ({type(error).__name__}: {error}); the "
                               f"previous checkpoint is whole") from error


def optimizer_param_groups(model, optimizer) -> list:
    """The optimizer's param_groups with parameter names (what train_state.json keeps of a sharded optimizer)."""
    return split_optimizer_state(get_optimizer_state_dict(model, optimizer))[1]


def stored_tensors(path: Path) -> dict:
    """{flattened name: DCP's TensorStorageMetadata (global size, dtype, the stored pieces)} of the sharded
    checkpoint at `path`, from its files' headers; UserInputError naming a file that cannot be read."""
    from safetensors import SafetensorError
    try:
        return HuggingFaceStorageReader(str(path / SHARDED_DIR)).read_metadata().state_dict_metadata
    except (SafetensorError, OSError, ValueError, KeyError) as error:
        raise UserInputError(f"{path / SHARDED_DIR}: damaged or truncated shard file ({type(error).__name__}: "
                             f"{error})") from None


def check_sharded_tensors(path: Path, expected: ExpectedWeights, optimizer_record: dict,
                          share: tuple[int, int] = (0, 1)) -> None:
    """The shard files of the sharded checkpoint at `path` hold the model of config.json (`expected`) and an
    optimizer state of its parameters: every tensor's name, global shape and dtype, pieces that cover each
    tensor exactly once; and (of this process's `share` of the files) finite values."""
    folder = path / SHARDED_DIR
    stored = stored_tensors(path)
    weights, optimizer = {}, {}
    for name, info in stored.items():
        part, _, key = name.partition(".")
        if part == MODEL_KEY:
            weights[key] = info
        elif part == OPTIMIZER_KEY:
            optimizer[key] = info
        else:
            raise UserInputError(f"{folder}: a tensor {name!r}, neither of the model nor of the optimizer")
        covered = sum(chunk.sizes.numel() for chunk in info.chunks)
        if covered != info.size.numel():
            raise UserInputError(f"{folder}: the stored pieces of {name} hold {covered} of its {info.size.numel()} "
                                 f"values (a shard file is missing or was written by another save)")
    check_tensor_names(weights, expected, folder)
    check_shapes({k: (tuple(v.size), v.properties.dtype) for k, v in weights.items()}, expected, folder)
    check_parameter_groups(optimizer_record["param_groups"], expected, path / "train_state.json")
    for key, info in optimizer.items():
        parameter, _, statistic = key.rpartition(".")
        if parameter not in expected.tensors:
            raise UserInputError(f"{folder}: optimizer state of {parameter!r}, which the model does not have")
        check_optimizer_shape(parameter, statistic, tuple(info.size), expected, folder)
    from safetensors import safe_open
    rank, ranks = share
    for file in sorted(folder.glob(f"*{SHARD_SUFFIX}"))[rank::ranks]:
        with safe_open(str(file), framework="pt") as handle:
            for name in handle.keys():  # one tensor in memory at a time
                check_finite({name: handle.get_tensor(name)}, file)


def load_sharded(path: Path, model, optimizer, param_groups: list) -> None:
    """Loads the model's and the optimizer's tensors of the sharded checkpoint `path` into this rank's shards
    (collective under torch.distributed; any world size). The optimizer keeps the hyperparameters it was built
    with (the current config), as maefast.train.state.restore_checkpoint does."""
    state = sharded_state(model, optimizer)
    current_groups = split_optimizer_state(get_optimizer_state_dict(model, optimizer))[1]
    reader = HuggingFaceStorageReader(str(path / SHARDED_DIR))
    try:
        dcp.load(state, storage_reader=reader, no_dist=not dist.is_initialized())
    except Exception as error:  # DCP wraps every rank's failure (missing key, shape) in one CheckpointException
        raise UserInputError(f"{path / SHARDED_DIR}: does not load into this model and optimizer ({error})") from None
    set_model_state_dict(model, state[MODEL_KEY])
    groups = with_configured_hyperparameters(param_groups, current_groups)
    set_optimizer_state_dict(model, optimizer, {"state": state[OPTIMIZER_KEY], "param_groups": groups})


def load_sharded_weights(path: Path, model) -> None:
    """The weights of a sharded checkpoint into a whole (unsharded) model in this one process."""
    state = model.state_dict()
    try:
        dcp.load({MODEL_KEY: state}, storage_reader=HuggingFaceStorageReader(str(path / SHARDED_DIR)), no_dist=True)
    except Exception as error:
        raise UserInputError(f"{path / SHARDED_DIR}: does not load into {type(model).__name__} ({error})") from None
    model.load_state_dict(state)
