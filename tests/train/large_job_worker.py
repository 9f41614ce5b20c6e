"""Run under torchrun by test_large_jobs.py (gloo, CPU).

`policy REPORT`: FSDP2's units on a tiny MAE: the bf16 parameter policy with fp32 reduction, activation
checkpointing (full, selective) and regional compilation against the plain sharded model.
`train SCREEN OUT REPORT [--set ...]`: the real trainer; each rank reports what it restored and what it saved
(sums of the whole weights and optimizer state, the loader position), to compare across world sizes.
MAEFAST_TEST_KILL_DURING_SAVE=RANK:STEP: in the group's first attempt, rank RANK kills itself (SIGKILL) during
the sharded save of step STEP, once its shard file is written and before the checkpoint is committed."""
import json
import os
import signal
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from maefast import distributed as dist_utils
from maefast.models.families import family_of
from maefast.models.regions import compile_regions
from maefast.models.registry import create_model
from maefast.train import sharded
from maefast.train.config import load_config
from maefast.train.loop import Trainer


def whole(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def gradients(recompute=None, compiled=False, precision="fp32") -> dict:
    torch.manual_seed(0)
    model = create_model("mae_vit_debug_patch8_64", in_chans=3, decoder_depth=1, drop_path_rate=0.1)
    blocks = family_of(model).blocks(model)
    if compiled:  # as the trainer: each block compiled, then wrapped for recomputation
        compile_regions(model, backend="aot_eager")  # dynamo + AOTAutograd; inductor is the same code
    if recompute:
        blocks = dist_utils.checkpoint_blocks(blocks, recompute)
    context = dist_utils.DistributedContext(dist.get_rank(), dist.get_world_size())
    wrapped = dist_utils.wrap_model(model, blocks, context, "fsdp", precision)
    generator = torch.Generator().manual_seed(1 + context.rank)
    pixels = torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8, generator=generator)
    torch.manual_seed(2 + context.rank)  # masks and drop path: the recomputation must replay them
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = wrapped(pixels, noise=torch.rand(2, 64, generator=generator))[0]
    loss.backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    names = list(grads)
    first_block = next(n for n in names if ".blocks.0." in n)
    return {"loss": loss.item(), "grads": {n: whole(g).double().sum().item() for n, g in grads.items()},
            "grad_dtypes": sorted({str(g.dtype) for g in grads.values()}),
            "sharded": isinstance(grads[first_block], torch.distributed.tensor.DTensor),
            "block_param_dtype": str(next(iter(blocks[0].parameters())).dtype)}


def policy(report: str) -> None:
    dist.init_process_group("gloo")
    results = {"plain": gradients(), "full": gradients("full"), "selective": gradients("selective"),
               "compiled": gradients("selective", compiled=True), "bf16": gradients(precision="bf16")}
    with open(f"{report}.{dist.get_rank()}.json", "w") as handle:
        json.dump(results, handle)
    dist.destroy_process_group()


class ReportingTrainer(Trainer):
    """The trainer, reporting the state it restored and each state it saved."""

    def snapshot(self) -> dict:
        params = sum(whole(p.detach()).double().sum().item() for p in self.model.parameters())
        moments = sum(whole(t).double().sum().item() for state in self.optimizer.state.values()
                      for t in state.values() if isinstance(t, torch.Tensor) and t.ndim > 0)
        return {"step": self.step, "params": params, "optimizer": moments, "position": self.loader.position,
                "epoch": self.loader.epoch}

    def restore(self, checkpoint) -> None:
        super().restore(checkpoint)
        self.restored = self.snapshot()

    def save(self) -> None:
        super().save()
        self.saved.append(self.snapshot())


def kill_during_save(rank: int, step: int) -> None:
    """Makes this process die (SIGKILL) in the sharded save of `step` once its files are written, if it is rank
    `rank` of the group's first attempt: the background writer hashes the shard files next."""
    hash_files = sharded.file_digests

    def file_digests(directory, names):
        if (directory.name == f".step-{step:08d}.partial" and dist.get_rank() == rank
                and os.environ.get("TORCHELASTIC_RESTART_COUNT") == "0"):
            print(f"rank {rank}: killed during the save of step {step}", flush=True)
            os.kill(os.getpid(), signal.SIGKILL)
        return hash_files(directory, names)

    sharded.file_digests = file_digests


def train(screen: str, out: str, report: str, *assignments: str) -> None:
    if "MAEFAST_TEST_KILL_DURING_SAVE" in os.environ:
        kill_during_save(*map(int, os.environ["MAEFAST_TEST_KILL_DURING_SAVE"].split(":")))
    config = load_config("debug", [f"data.path={screen}", "data.batch_size=2", "data.num_workers=0",
                                   "data.backend=torch", "model.overrides.decoder_depth=1", "run.log_every=1",
                                   "run.image_every=1000", *assignments])
    ReportingTrainer.saved = []
    resume = bool(list(Path(out).glob("checkpoints/step-*")))  # a later hop of the test continues the run
    trainer = ReportingTrainer(config, out, resume=resume, show_progress=False)
    try:
        summary = trainer.train()
    finally:
        trainer.close()
    rank, restarts = trainer.context.rank, os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    with open(f"{report}.{rank}.{restarts}.json", "w") as handle:
        json.dump({"world": trainer.context.world_size, "restored": getattr(trainer, "restored", None),
                   "saved": trainer.saved, "step": summary["step"]}, handle)
    dist_utils.shutdown(trainer.context)


if __name__ == "__main__":
    {"policy": policy, "train": train}[sys.argv[1]](*sys.argv[2:])
