"""Optimizers and the learning-rate schedule of the papers: Lion (or AdamW), one-cycle cosine."""
from __future__ import annotations

import math

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
    warmup = max(1, int(total_steps * warmup_fraction))
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(optimizer, total_steps: int, warmup_fraction: float, min_ratio: float,
                    start_step: int = 0) -> LambdaLR:
    """The one-cycle schedule from `start_step` on (a resumed run): the learning rate is a function of the
    step and the config only, so a resumed run rebuilds it rather than storing it."""
    for group in optimizer.param_groups:
        group["initial_lr"] = group["lr"]
    return LambdaLR(optimizer, lambda step: one_cycle_factor(step, total_steps, warmup_fraction, min_ratio),
                    last_epoch=start_step - 1)
