"""Which attention kernel each attention site of a model runs: chosen once, before training or embedding.

A model's attention sites (layers.AttentionSite: the encoder blocks, the decoder blocks, the CA-MAE
cross-attention) each hold an `attention_backend`. It is "auto" (a fixed rule: SDPA, PyTorch's own kernel
choice) until one of these sets it:

    configure_attention(model, "cudnn")                 # the user's choice, for every site
    configure_attention(model, {"encoder": "triton"})   # or per role
    tune_attention(model, step)                         # the fastest candidate per role, timed once
                                                        # (at a sub-batch of the run's shapes)

The choice never happens inside a forward, so a compiled model traces one fixed kernel per site, every rank
runs the same kernels (the trainer broadcasts rank 0's choice), and a resumed run reads the choice its
checkpoint recorded.
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from maefast.choices import ATTENTION_CHOICES
from maefast.errors import UserInputError
from maefast.models import layers
from maefast.ops.attention import available_backends, prepare_backend, time_backend


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
        if name != "auto":
            prepare_backend(name)  # its imports happen here, at setup, never inside a forward
        for site in sites[role]:
            site.attention_backend = name
    return current_attention(model)


def current_attention(model: torch.nn.Module) -> dict[str, str]:
    """role -> backend of the model's attention sites (the first site of each role; configure_attention keeps
    a role uniform)."""
    return {role: modules[0].attention_backend for role, modules in attention_sites(model).items()}


@dataclass(frozen=True)
class TensorLayout:
    """Shape, strides and dtype of a tensor an attention site received: what tuning recreates, with fresh
    values, instead of keeping the step's tensors alive."""
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device

    @classmethod
    def of(cls, tensor: torch.Tensor) -> TensorLayout:
        return cls(tuple(tensor.shape), tuple(tensor.stride()), tensor.dtype, tensor.device)

    def random(self, batch: int) -> torch.Tensor:
        """Fresh N(0, 1) values in this layout (the same strides), with at most `batch` leading entries."""
        shape = (min(batch, self.shape[0]),) + self.shape[1:]
        return torch.empty_strided(shape, self.stride, dtype=self.dtype, device=self.device).normal_()


@dataclass(frozen=True)
class AttentionCall:
    """The first attention call of a role: the layouts of q, k, v and the site's qk-norm modules."""
    q: TensorLayout
    k: TensorLayout
    v: TensorLayout
    q_norm: object = None
    k_norm: object = None


@contextlib.contextmanager
def recording_attention_calls():
    """Inside, the first attention call of each role is recorded as {role: AttentionCall}; nothing else is
    kept (no tensor of the step stays alive)."""
    calls: dict[str, AttentionCall] = {}

    def record(site, q, k, v, q_norm, k_norm):
        if site.attention_role not in calls:
            calls[site.attention_role] = AttentionCall(TensorLayout.of(q), TensorLayout.of(k), TensorLayout.of(v),
                                                       q_norm, k_norm)

    previous, layers._attention_recorder = layers._attention_recorder, record
    try:
        yield calls
    finally:
        layers._attention_recorder = previous


@dataclass
class AttentionTuning:
    """The outcome of tune_attention: the backend per role and what each candidate measured (ms per call,
    or the error that ruled it out)."""
    choice: dict[str, str]
    timings: dict[str, dict[str, float | str]] = field(default_factory=dict)


# Tuning runs at a sub-batch of the run's shapes: enough crops to fill a GPU with attention work, few enough
# that the step which records the shapes and the timed candidates fit beside the run's own memory.
TUNING_CROPS = 32


def tuning_batch(batch: int) -> int:
    """The crops of the step that tune_attention records shapes from: the run's batch, at most TUNING_CROPS."""
    return max(1, min(batch, TUNING_CROPS))


def _describe(error: BaseException) -> str:
    text = str(error).splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def tune_attention(model: torch.nn.Module, step: Callable[[], None], needs_grad: bool = True, reps: int = 5,
                   candidates: tuple[str, ...] | None = None) -> AttentionTuning:
    """Runs `step()` once to record what each attention role of `model` receives, times every candidate
    backend per role, and configures the fastest.

    step: a forward of `model` at the run's shapes with a sub-batch of tuning_batch(batch) crops, under the
    run's autocast (only the first call of each role is recorded: shapes, strides, dtypes; the step needs no
    backward). Each candidate is then timed (forward, plus backward when needs_grad) on fresh random q, k, v
    in the recorded layout, which it frees before the next candidate; qk-norm sites are timed with their norm,
    as each backend runs it. candidates: the backends to time (default: available_backends on a CUDA device;
    elsewhere no timing, every role keeps "auto"). A candidate that fails is recorded with its error.
    The RNG state is restored and gradients cleared afterwards, so tuning changes nothing the run computes."""
    configure_attention(model, "auto")
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
    with torch.random.fork_rng(devices=devices), recording_attention_calls() as calls:
        step()
        model.zero_grad(set_to_none=True)
        choice, timings = {}, {}
        for role, call in calls.items():
            names = candidates
            if names is None:
                if call.q.device.type != "cuda":
                    choice[role] = "auto"
                    continue
                names = available_backends(call.q.device, call.q.dtype, call.q.shape[-1])
            measured: dict[str, float | str] = {}
            for name in names:
                try:
                    prepare_backend(name)
                    q, k, v = (layout.random(TUNING_CROPS) for layout in (call.q, call.k, call.v))
                    measured[name] = time_backend(name, q, k, v, needs_grad=needs_grad, reps=reps,
                                                  q_norm=call.q_norm, k_norm=call.k_norm)
                except Exception as error:  # noqa: BLE001 - a backend that cannot run this shape is no candidate
                    measured[name] = _describe(error)
                finally:
                    q = k = v = None  # this candidate's inputs go before the next one's are made
            speeds = {name: ms for name, ms in measured.items() if isinstance(ms, float)}
            choice[role] = min(speeds, key=speeds.get) if speeds else "sdpa"
            timings[role] = measured
    configure_attention(model, choice)
    return AttentionTuning(choice, timings)
