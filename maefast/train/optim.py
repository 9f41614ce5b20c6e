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

    Three ways to run the same update, by group:
      fused=True     lion_fused: the update compiled by torch.compile, so that each tensor is read and written
                     once (parameter, gradient, moment in; parameter, moment out) instead of once per eager op;
                     the learning rate is a device tensor, filled each step without a host synchronization, so
                     a schedule does not recompile it. The default (None) on CUDA.
      foreach=True   torch's multi-tensor `_foreach_*` ops, eager (a few kernel launches per group instead of
                     seven per parameter).
      otherwise      the parameters one by one (lion_single_tensor, the reference; on a CPU the multi-tensor
                     ops are loops themselves: no faster, measured).
    foreach and the loop do the same arithmetic in the same order: bitwise equal results in float32 and
    float64 (bfloat16 kernels may round an intermediate differently by one unit in the last place); the fused
    update may round the decayed parameter differently by one unit (tests/train/test_lion.py).

    Skipping a step without a host synchronization: like torch's fused Adam / AdamW, the step reads an optional
    `found_inf` attribute (a tensor, nonzero when the step's gradients must not be applied, e.g. after a
    non-finite loss; the trainer sets it). The fused update then leaves every parameter and moment as it was,
    on the device; the other two ways read the flag on the host (a synchronization: they are the CPU ways).
    """

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0,
                 foreach: bool | None = None, fused: bool | None = None):
        if lr <= 0:
            raise UserInputError(f"Lion lr must be positive, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise UserInputError(f"Lion betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay, foreach=foreach,
                                      fused=fused))
        self._lr_tensors: dict[torch.device, torch.Tensor] = {}
        self.found_inf: torch.Tensor | None = None

    def __setstate__(self, state):  # optimizer state saved before the foreach / fused options existed
        super().__setstate__(state)
        self.__dict__.setdefault("_lr_tensors", {})
        self.__dict__.setdefault("found_inf", None)
        for group in self.param_groups:
            group.setdefault("foreach", None)
            group.setdefault("fused", None)

    def lr_tensor(self, lr: float, device: torch.device) -> torch.Tensor:
        """A 0-d float32 tensor on `device` holding `lr`, refilled in place (a kernel, no host synchronization)."""
        tensor = self._lr_tensors.get(device)
        if tensor is None:
            tensor = self._lr_tensors[device] = torch.empty((), dtype=torch.float32, device=device)
        return tensor.fill_(lr)

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
            if not params:
                continue
            grads = [p.grad for p in params]
            moments = [self.state[p]["exp_avg"] for p in params]
            on_cuda = all(p.device.type == "cuda" for p in params)
            fused = on_cuda if group["fused"] is None else group["fused"]
            foreach = on_cuda if group["foreach"] is None else group["foreach"]
            beta1, beta2 = group["betas"]
            if fused:
                grouped = Optimizer._group_tensors_by_device_and_dtype([params, grads, moments])
                for (device, _), ((device_params, device_grads, device_moments), _) in grouped.items():
                    keep = (torch.ones((), dtype=torch.bool, device=device) if self.found_inf is None
                            else self.found_inf.to(device, non_blocking=True) == 0)
                    lion_fused(device_params, device_grads, device_moments, self.lr_tensor(group["lr"], device),
                               keep, beta1, beta2, group["weight_decay"])
                continue
            if self.found_inf is not None and self.found_inf.item():
                continue
            update = lion_foreach if foreach else lion_single_tensor
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


def _lion_update(params, grads, moments, lr: torch.Tensor, keep: torch.Tensor, beta1: float, beta2: float,
                 decay: float) -> None:
    """Lion's update of one device's tensors (what lion_fused compiles: one pass over each), applied where the
    0-d bool `keep` is true and leaving every tensor as it was otherwise; lr a 0-d tensor."""
    for param, grad, moment in zip(params, grads, moments):
        update = (moment * beta1 + grad * (1.0 - beta1)).sign()
        stepped = param * (1.0 - lr * decay) - lr * update
        param.copy_(torch.where(keep, stepped, param))
        moment.copy_(torch.where(keep, moment * beta2 + grad * (1.0 - beta2), moment))


_lion_compiled = None


def lion_fused(params, grads, moments, lr: torch.Tensor, keep: torch.Tensor, beta1: float, beta2: float,
               decay: float) -> None:
    """Lion's update compiled once per (betas, decay, tensor shapes): inductor fuses each tensor's arithmetic
    into one pass. lr, keep: 0-d tensors on the parameters' device (new values do not recompile)."""
    global _lion_compiled
    if _lion_compiled is None:  # compiled on first use, not at import: importing maefast compiles nothing
        _lion_compiled = torch.compile(_lion_update, fullgraph=True)
    _lion_compiled(params, grads, moments, lr, keep, beta1, beta2, decay)


def parameter_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """No weight decay on biases, norms, LayerScale, tokens and other 1-D parameters (as in MAE)."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (no_decay if param.ndim <= 1 or name.endswith(("cls_token", "mask_token")) or "modality_tokens" in name
         else decay).append(param)
    return [dict(params=decay, weight_decay=weight_decay), dict(params=no_decay, weight_decay=0.0)]


def build_optimizer(model, name: str, lr: float, weight_decay: float, betas, fused: bool | None = None) -> Optimizer:
    """Lion or AdamW over `model`'s parameter groups, each able to skip a step on the device (the `found_inf`
    attribute). fused: one pass over each tensor per step; default: Lion on CUDA (lion_fused; on a CPU its
    loop, the compile would outweigh short runs), AdamW on CUDA and CPU (torch's fused kernel, which the loop
    ignores `found_inf` without)."""
    groups = parameter_groups(model, weight_decay)
    if name == "lion":
        return Lion(groups, lr=lr, betas=betas, fused=fused)
    if name == "adamw":
        if fused is None:
            fused = all(p.device.type in ("cuda", "cpu") for group in groups for p in group["params"])
        return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), fused=fused or None)
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
