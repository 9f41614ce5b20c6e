"""Many devices through torch.distributed (torchrun): process group, DDP / FSDP2 wrapping, helpers.

Model code stays single-device math; everything parallel is applied here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from maefast.errors import UserInputError


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserInputError("run.device=cuda but no CUDA device is visible")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistributedContext:
    """Reads torchrun's environment; a single process without it."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device)


def wrap_model(model: torch.nn.Module, blocks: list, context: DistributedContext, parallel: str) -> torch.nn.Module:
    """DDP, or FSDP2 with one shard group per block of `blocks` (the model family's) and the rest at the root."""
    if not context.enabled:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        for block in blocks:
            fully_shard(block)
        fully_shard(model)
        return model
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [context.device.index] if context.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def any_rank(flag: bool, context: DistributedContext) -> bool:
    """True when `flag` is true on any rank (every rank gets the same answer)."""
    if not context.enabled:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=context.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return bool(value.item() > 0)


def all_true(flag: torch.Tensor, context: DistributedContext) -> torch.Tensor:
    """A 0-d bool device tensor: `flag` (0-d bool) and-ed over the ranks, without waiting for the device."""
    if not context.enabled:
        return flag
    value = flag.to(torch.int32)
    dist.all_reduce(value, op=dist.ReduceOp.MIN)
    return value.bool()


def run_on_main(function, context: DistributedContext):
    """`function()` on rank 0 only (None elsewhere). Every rank learns whether it raised, so that no rank
    waits in a collective for a rank 0 that stopped: rank 0 re-raises its error, the others raise one that
    points to it."""
    result, error = None, None
    if context.is_main:
        try:
            result = function()
        except Exception as caught:  # re-raised below, once every rank knows
            error = caught
    if any_rank(error is not None, context):
        if error is not None:
            raise error
        raise UserInputError(f"rank {context.rank}: stopping because rank 0 stopped (its output says why)")
    return result


def mean_over_ranks(value: float, context: DistributedContext) -> float:
    if not context.enabled:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tensor.item() / context.world_size


def gather_objects(obj, context: DistributedContext) -> list:
    if not context.enabled:
        return [obj]
    out = [None] * context.world_size
    dist.all_gather_object(out, obj)
    return out


def broadcast_object(obj, context: DistributedContext):
    """Rank 0's `obj` on every rank (every rank calls it)."""
    if not context.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(context: DistributedContext) -> None:
    if context.enabled:
        dist.barrier()


def shutdown(context: DistributedContext) -> None:
    if context.enabled and dist.is_initialized():
        dist.destroy_process_group()
