"""Run under torchrun by test_distributed.py: two gloo ranks of the real trainer and loader."""
import json
import sys

import torch
import torch.distributed as dist

from maefast.train.config import load_config
from maefast.train.data import build_train_loader
from maefast.train.loop import Trainer


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor on every rank (FSDP2 shards parameters and gradients as DTensors)."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


def main(screen: str, out: str, report: str, parallel: str) -> None:
    config = load_config("debug", [f"data.path={screen}", "data.batch_size=3", "data.crops_per_image=2",
                                   "data.num_workers=1", "model.overrides.decoder_depth=1", "run.max_steps=3",
                                   f"run.parallel={parallel}", "run.log_every=1"])
    trainer = Trainer(config, out, show_progress=False)
    context = trainer.context
    # one epoch of this rank's images through a fresh loader
    loader = build_train_loader(config, out, context)
    images = sorted({image for batch in loader for image in batch["ids"]})
    # gradients after one backward on different data per rank
    batch = next(iter(trainer.loader))
    loss, _, _ = trainer.wrapped(batch["pixels"])
    loss.backward()
    grads = torch.cat([full(p.grad).flatten() for p in trainer.model.parameters() if p.grad is not None]).double()
    local_loss = loss.item()
    trainer.optimizer.zero_grad(set_to_none=True)
    summary = trainer.train()
    params = torch.cat([full(p.detach()).flatten() for p in trainer.model.parameters()]).double()
    gathered = [torch.zeros(2, dtype=torch.float64) for _ in range(context.world_size)]
    dist.all_gather(gathered, torch.stack([grads.sum(), params.sum()]))
    with open(f"{report}.{context.rank}.json", "w") as handle:
        json.dump({"rank": context.rank, "world": context.world_size, "images": images, "loss": local_loss,
                   "grad_and_param_sums": [g.tolist() for g in gathered], "step": summary["step"]}, handle)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
