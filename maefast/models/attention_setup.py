"""Which attention kernel each attention site of a model runs: chosen once, before training or embedding.

A model's attention sites (layers.AttentionSite: the encoder blocks, the decoder blocks, the CA-MAE
cross-attention) each hold an `attention_backend`. It is "auto" (a fixed rule: SDPA, PyTorch's own kernel
choice) until one of these sets it:

    configure_attention(model, "cudnn")                 # the user's choice, for every site
    configure_attention(model, {"encoder": "triton"})   # or per role
    tune_attention(model, step)                         # the fastest candidate per role, timed once

The choice never happens inside a forward, so a compiled model traces one fixed kernel per site, every rank
runs the same kernels (the trainer broadcasts rank 0's choice), and a resumed run reads the choice its
checkpoint recorded.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from maefast.errors import UserInputError
from maefast.models import layers
from maefast.ops.attention import ATTENTION_BACKENDS, available_backends, time_backend

ATTENTION_CHOICES = ("auto",) + ATTENTION_BACKENDS


def attention_sites(model: torch.nn.Module) -> dict[str, list[layers.AttentionSite]]:
    """role -> the model's attention sites of that role, in module order."""
    sites: dict[str, list[layers.AttentionSite]] = {}
    for module in model.modules():
        if isinstance(module, layers.AttentionSite):
            sites.setdefault(module.attention_role, []).append(module)
    return sites


def check_attention_choice(choice: str) -> str:
    if choice not in ATTENTION_CHOICES:
        raise UserInputError(f"attention backend {choice!r} is not one of {', '.join(ATTENTION_CHOICES)}")
    return choice


def configure_attention(model: torch.nn.Module, choice: str | dict[str, str]) -> dict[str, str]:
    """Sets the attention backend of every site (one name), or per role ({role: name}; roles left out keep
    theirs). Returns the backend of each role of the model afterwards."""
    sites = attention_sites(model)
    per_role = {role: choice for role in sites} if isinstance(choice, str) else dict(choice)
    unknown = sorted(set(per_role) - set(sites))
    if unknown:
        raise UserInputError(f"the model has no attention role(s) {unknown}; its roles are {sorted(sites)}")
    for role, name in per_role.items():
        check_attention_choice(name)
        for site in sites[role]:
            site.attention_backend = name
    return current_attention(model)


def current_attention(model: torch.nn.Module) -> dict[str, str]:
    """role -> backend of the model's attention sites (the first site of each role; configure_attention keeps
    a role uniform)."""
    return {role: modules[0].attention_backend for role, modules in attention_sites(model).items()}


@contextlib.contextmanager
def recording_attention_calls():
    """Inside: every attention call of an AttentionSite is recorded as (site, q, k, v, q_norm, k_norm)."""
    calls: list = []
    previous, layers._attention_calls = layers._attention_calls, calls
    try:
        yield calls
    finally:
        layers._attention_calls = previous


@dataclass
class AttentionTuning:
    """The outcome of tune_attention: the backend per role and what each candidate measured (ms per call,
    or the error that ruled it out)."""
    choice: dict[str, str]
    timings: dict[str, dict[str, float | str]] = field(default_factory=dict)


def tune_attention(model: torch.nn.Module, step: Callable[[], None], needs_grad: bool = True,
                   reps: int = 5) -> AttentionTuning:
    """Runs `step()` once (an eager forward, or forward and backward, of `model` at the shapes it will run),
    times every available backend at each role's recorded shape, and configures the fastest per role.

    Only CUDA devices are timed; elsewhere every role keeps "auto". The RNG state is restored and the
    gradients `step` left are cleared afterwards, so tuning does not change what the run computes next."""
    configure_attention(model, "auto")
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), recording_attention_calls() as calls:
        step()
    model.zero_grad(set_to_none=True)
    first_call: dict[str, tuple] = {}
    for site, *tensors in calls:
        first_call.setdefault(site.attention_role, tuple(tensors))
    choice, timings = {}, {}
    for role, (q, k, v, q_norm, k_norm) in first_call.items():
        if q.device.type != "cuda":
            choice[role] = "auto"
            continue
        measured: dict[str, float | str] = {}
        for name in available_backends(q.device, q.dtype, q.shape[-1]):
            try:
                measured[name] = time_backend(name, q, k, v, needs_grad=needs_grad, reps=reps, q_norm=q_norm,
                                              k_norm=k_norm)
            except Exception as error:  # noqa: BLE001 - a backend that cannot run this shape is no candidate
                measured[name] = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        speeds = {name: ms for name, ms in measured.items() if isinstance(ms, float)}
        choice[role] = min(speeds, key=speeds.get) if speeds else "sdpa"
        timings[role] = measured
    configure_attention(model, choice)
    return AttentionTuning(choice, timings)
