"""Optimizers and the learning-rate schedule of the papers: Lion (or AdamW), one-cycle cosine (and the cycles of a
run whose max_steps a resume changed)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

from maefast.errors import UserInputError


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms").

    update = sign(beta1 * m + (1 - beta1) * g); p <- p * (1 - lr * wd) - lr * update;
    m <- beta2 * m + (1 - beta2) * g. Decoupled weight decay, one state tensor per parameter.

    foreach=True updates each group's tensors of one device and dtype with torch's multi-tensor
    `_foreach_*` ops (a few kernel launches per group instead of seven per parameter); foreach=False loops
    over the parameters one by one. The default (None) is torch's choice: foreach on CUDA, the loop
    elsewhere (on a CPU the multi-tensor ops are loops themselves: no faster, measured). Both do the same
    arithmetic in the same order: bitwise equal results in float32 and float64 (bfloat16 kernels may round
    an intermediate differently by one unit in the last place).
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                 foreach: bool | None = None):
        if lr <= 0:
            raise UserInputError(f"Lion lr must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise UserInputError(f"Lion betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach))

    def __setstate__(self, state):  # optimizer state saved before the foreach option existed
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("foreach", None)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if any(p.grad.is_sparse for p in params):
                raise RuntimeError("Lion does not support sparse gradients")
            for param in params:
                if not self.state[param]:
                    self.state[param]["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
            grads = [p.grad for p in params]
            moments = [self.state[p]["exp_avg"] for p in params]
            foreach = group["foreach"]
            if foreach is None:
                foreach = all(p.device.type == "cuda" for p in params)
            update = lion_foreach if foreach else lion_single_tensor
            beta1, beta2 = group["betas"]
            update(params, grads, moments, group["lr"], beta1, beta2, group["weight_decay"])
        return loss


def lion_single_tensor(params, grads, moments, lr: float, beta1: float, beta2: float, decay: float) -> None:
    for param, grad, momentum in zip(params, grads, moments):
        if decay:
            param.mul_(1.0 - lr * decay)
        update = momentum.mul(beta1).add_(grad, alpha=1.0 - beta1).sign_()
        param.add_(update, alpha=-lr)
        momentum.mul_(beta2).add_(grad, alpha=1.0 - beta2)


def lion_foreach(params, grads, moments, lr: float, beta1: float, beta2: float, decay: float) -> None:
    if not params:
        return
    grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, moments])
    for (device_params, device_grads, device_moments), _ in grouped.values():
        if decay:
            torch._foreach_mul_(device_params, 1.0 - lr * decay)
        updates = torch._foreach_mul(device_moments, beta1)
        torch._foreach_add_(updates, device_grads, alpha=1.0 - beta1)
        torch._foreach_sign_(updates)
        torch._foreach_add_(device_params, updates, alpha=-lr)
        torch._foreach_mul_(device_moments, beta2)
        torch._foreach_add_(device_moments, device_grads, alpha=1.0 - beta2)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, LayerScale, tokens and other 1-D parameters (as in MAE)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(("cls_token", "mask_token")) or "modality_tokens" in name
         else decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def build_optimizer(model, name: str, lr: float, weight_decay: float, betas) -> Optimizer:
    groups = parameter_groups(model, weight_decay)
    if name == "lion":
        return Lion(groups, lr=lr, betas=betas)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas))
    raise UserInputError(f"optimizer must be 'lion' or 'adamw', got {name!r}")


def one_cycle_factor(step: int, total_steps: int, warmup_fraction: float, min_ratio: float = 0.0) -> float:
    """Linear warm-up over warmup_fraction of the steps, then cosine decay to min_ratio."""
    return first_cycle(total_steps, warmup_fraction, min_ratio).factor(step)


@dataclass(frozen=True)
class Cycle:
    """One cycle of the learning-rate factor over the steps [start, end): a linear warm-up from 0 to `peak` over
    `warmup` steps, then a cosine decay from `peak` to `min_ratio` at `end` (min_ratio after it)."""
    start: int
    end: int
    warmup: int
    peak: float = 1.0
    min_ratio: float = 0.0

    def factor(self, step: int) -> float:
        local = step - self.start
        if local < self.warmup:
            return self.peak * (local + 1) / self.warmup
        progress = min(1.0, (local - self.warmup) / max(1, self.end - self.start - self.warmup))
        return self.min_ratio + (self.peak - self.min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def first_cycle(total_steps: int, warmup_fraction: float, min_ratio: float = 0.0) -> Cycle:
    """The papers' one-cycle schedule over a whole run: warm-up over warmup_fraction of the steps (at least one)."""
    return Cycle(0, total_steps, max(1, int(total_steps * warmup_fraction)), 1.0, min_ratio)


def schedule_factor(cycles: list[Cycle], step: int) -> float:
    """The factor at `step` of a schedule of cycles, each in force from its start until the next one starts."""
    return next(cycle for cycle in reversed(cycles) if cycle.start <= step or cycle is cycles[0]).factor(step)


def rescheduled(cycles: list[Cycle], step: int, total_steps: int, warmup_fraction: float,
                min_ratio: float) -> tuple[list[Cycle], str]:
    """The schedule of a run resumed at `step` with run.max_steps = total_steps (other than its cycles' end), and
    what it is, in words. The steps taken keep their learning rates, and the rate never jumps:
      - the last cycle had ended (a finished run extended): a new cycle over the added steps, warm-up over
        warmup_fraction of them, then cosine decay to min_ratio;
      - it is still warming up, and the warm-up ends before the new last step: the warm-up goes on as it was, the
        decay then ends at the new last step;
      - otherwise: the decay continues (or begins) from today's factor down to min_ratio at the new last step.
    """
    last = cycles[-1]
    if step >= last.end:
        added = total_steps - step
        cycle = Cycle(step, total_steps, max(1, int(added * warmup_fraction)), 1.0, min_ratio)
        return [*cycles, cycle], (f"the learning-rate cycle ended at step {last.end}; a new one runs over the "
                                  f"{steps(added)} added: warm-up over {steps(cycle.warmup)} to optim.lr, then "
                                  f"cosine decay to {min_ratio:g} x optim.lr at step {total_steps}")
    if step < last.start + last.warmup < total_steps:
        cycle = Cycle(last.start, total_steps, last.warmup, last.peak, min_ratio)
        return [*cycles[:-1], cycle], (f"the warm-up continues to step {last.start + last.warmup}, then the cosine "
                                       f"decay ends at step {total_steps} instead of {last.end}")
    factor = last.factor(step)
    cycle = Cycle(step, total_steps, 0, factor, min_ratio)
    return [*cycles, cycle], (f"the cosine decay continues from {factor:.4g} x optim.lr at step {step} to "
                              f"{min_ratio:g} x optim.lr at step {total_steps} instead of {last.end}")


def steps(count: int) -> str:
    return f"{count} step" if count == 1 else f"{count} steps"


def build_scheduler(optimizer, cycles: list[Cycle], start_step: int = 0) -> LambdaLR:
    """The schedule of `cycles` (first_cycle for a new run) from `start_step` on (a resumed run): the learning
    rate is a function of the step and the cycles, which the checkpoints record."""
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return LambdaLR(optimizer, lambda step: schedule_factor(cycles, step), last_epoch=start_step - 1)
