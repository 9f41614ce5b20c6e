"""Many devices through torch.distributed (torchrun): process group, DDP / FSDP2 wrapping, helpers.

Model code stays single-device math; everything parallel is applied here.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist

from maefast.errors import UserInputError
from maefast.processes import die_with_parent


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


def started_by_torchrun() -> bool:
    """Whether this process is a rank that torchrun's elastic agent started."""
    return "TORCHELASTIC_RUN_ID" in os.environ


def restarted_by_torchrun() -> bool:
    """Whether torchrun's elastic agent restarted this process group (--max-restarts) after a failure."""
    return int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0


def warn_of_shared_store() -> None:
    """torch 2.13's torchrun agent keeps the rendezvous store it shares with the ranks for every restart of the
    group: the keys the previous attempt's ranks wrote are still there, so a restarted group can connect to ranks
    that are gone (Gloo connectFullMesh: Connection refused, or a hang). A store per attempt avoids it."""
    if restarted_by_torchrun() and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        warnings.warn("torchrun restarted this job on the rendezvous store of its first attempt, whose stale keys "
                      "can make the restarted ranks connect to ranks that are gone (a Gloo or NCCL connection "
                      "refused, or a hang): launch torchrun with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1", stacklevel=2)


def resolve_device(preference: str, local_rank: int = 0) -> torch.device:
    if preference == "cuda" or (preference == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UserInputError("run.device=cuda but no CUDA device is visible")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def init_distributed(device_preference: str = "auto") -> DistributedContext:
    """Reads torchrun's environment; a single process without it. A rank torchrun started dies with torchrun's
    agent (which starts each rank in a session of its own): killed with it, it is not left waiting for ever in a
    collective with ranks that are gone."""
    if started_by_torchrun():
        die_with_parent()
        warn_of_shared_store()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_preference, local_rank)
    if world_size > 1 and not dist.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device)


# Activation checkpointing of a block: "full" recomputes its whole forward in the backward and keeps only its
# input; "selective" keeps the outputs of its matrix multiplications and attention (the costly ops) and recomputes
# the cheap ones (norms, GELU, residual adds, casts), about a third of a block's saved bytes for no extra matmul.
RECOMPUTE_MODES = ("full", "selective")
_SAVED_BY_SELECTIVE = ("aten.mm", "aten.addmm", "aten.bmm", "aten.linear", "aten._scaled_dot_product",
                       "maefast.flash_attention")


def recompute_mode(setting) -> str | None:
    """run.activation_checkpointing as a mode: False -> None, True or "full" -> "full", "selective"."""
    if setting is False:
        return None
    return "full" if setting is True else setting


def _keep_costly_outputs(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy
    name = str(op).replace("::", ".")
    saved = name.startswith(_SAVED_BY_SELECTIVE) and "backward" not in name
    return CheckpointPolicy.MUST_SAVE if saved else CheckpointPolicy.PREFER_RECOMPUTE


def _selective_context():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts
    return create_selective_checkpoint_contexts(_keep_costly_outputs)


def checkpoint_blocks(blocks: list, mode: str) -> list:
    """Activation checkpointing per block, full or selective, through torch's composable checkpoint: hooks
    around each block's call, so the blocks stay the same modules (their names, state dicts and the forwards
    maefast.models.regions compiled do not change) and the recomputation runs outside the compiled graphs.
    Returns the blocks, the units FSDP2 then shards."""
    if mode not in RECOMPUTE_MODES:
        raise UserInputError(f"activation checkpointing is one of {RECOMPUTE_MODES}, got {mode!r}")
    from torch.distributed._composable import checkpoint
    options = {} if mode == "full" else {"context_fn": _selective_context}
    for block in blocks:
        checkpoint(block, preserve_rng_state=True, **options)
    return list(blocks)


def fsdp_policies(precision: str) -> tuple:
    """(blocks' policy, root's policy) for fully_shard. bf16: the blocks' parameters are gathered in bf16 and
    their gradients reduced in fp32 (sharded master weights and gradients stay fp32); their inputs are not
    cast, so the residual stream keeps the dtype autocast gives it. The root's parameters (patch projection,
    tokens, positions, norms, heads: a small share) stay fp32, as under DDP."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    if precision != "bf16":
        return MixedPrecisionPolicy(), MixedPrecisionPolicy()
    blocks = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=False)
    return blocks, MixedPrecisionPolicy(reduce_dtype=torch.float32, cast_forward_inputs=False)


def wrap_model(model: torch.nn.Module, blocks: list, context: DistributedContext, parallel: str,
               precision: str = "fp32") -> torch.nn.Module:
    """DDP, or FSDP2 with one shard group per block of `blocks` (the model family's) and the rest at the root."""
    if not context.enabled:
        return model
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard
        block_policy, root_policy = fsdp_policies(precision)
        for block in blocks:
            fully_shard(block, mp_policy=block_policy)
        fully_shard(model, mp_policy=root_policy)
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
