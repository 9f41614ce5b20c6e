"""Backend choice for the fused ops (docs/architecture.md, "How a backend is chosen").

Each op names the backends it implements. The automatic choice is CUDA -> "triton", CPU -> "cpp", else
"reference"; `MAEFAST_BACKEND=reference|triton|cpp` (or `use_backend(name)`) forces one. A forced backend that
cannot run raises; an automatic one that cannot run falls back to the reference and warns once per
(op, backend).

The choice is a pure function of (op, device type, forced backend) and of what is installed, which is
looked up once, at import. So under torch.compile dynamo evaluates it while tracing and bakes the answer
into the graph as a constant (guarded by the environment variable): no import check or timing runs inside
the traced region, and the custom ops stay opaque to dynamo through their fake implementations.
"""
from __future__ import annotations

import os
import warnings
from contextlib import contextmanager

import torch

from maefast.errors import UserInputError, installed
from maefast.kernels import interpreting as triton_interpreting

try:
    from maefast import _C as _cpp_module
except ImportError:  # built by pip install; without it the CPU ops run their reference
    _cpp_module = None
_TRITON_INSTALLED = installed("triton")

BACKENDS = ("reference", "triton", "cpp")

_override: list[str] = []


@contextmanager
def use_backend(name: str):
    """Forces every op to `name` inside the block (like MAEFAST_BACKEND), e.g. for baselines."""
    if name not in BACKENDS:
        raise UserInputError(f"backend must be one of {BACKENDS}, got {name!r}")
    _override.append(name)
    try:
        yield
    finally:
        _override.pop()


def forced_backend() -> str | None:
    if _override:
        return _override[-1]
    value = os.environ.get("MAEFAST_BACKEND", "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise UserInputError(f"MAEFAST_BACKEND={value!r} is not a backend; expected one of {BACKENDS}")
    return value


def triton_installed() -> bool:
    return _TRITON_INSTALLED


def cpp_extension():
    """The compiled maefast._C module, or None when it was not built."""
    return _cpp_module


def why_unavailable(backend: str, device_type: str) -> str | None:
    """None when `backend` can run on tensors of `device_type`, else the reason it cannot."""
    if backend == "reference":
        return None
    if backend == "cpp":
        if device_type != "cpu":
            return f"the C++ backend runs on CPU tensors, these are on {device_type}"
        if cpp_extension() is None:
            return "maefast._C is not built (python -m pip install -e . builds it)"
        return None
    if backend == "triton":
        if not triton_installed():
            return "triton is not installed"
        if device_type == "cuda" or (device_type == "cpu" and triton_interpreting()):
            return None
        return f"triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), these are on {device_type}"
    raise UserInputError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


_warned: set[tuple[str, str]] = set()


def _choose(op_name: str, device_type: str, implemented: tuple[str, ...],
            forced: str | None) -> tuple[str, str | None]:
    """(backend of `op_name` on `device_type`, why the preferred backend was passed over or None)."""
    if forced is not None:
        if forced not in implemented:
            if forced == "cpp" and device_type == "cpu":
                return "reference"  # op has no C++ kernel because the reference is the fast CPU path
            raise RuntimeError(f"MAEFAST_BACKEND={forced} but op {op_name} implements only {implemented}")
        reason = why_unavailable(forced, device_type)
        if reason is not None:
            raise RuntimeError(f"MAEFAST_BACKEND={forced} cannot run {op_name}: {reason}")
        return forced, None
    preferred = {"cuda": "triton", "cpu": "cpp"}.get(device_type, "reference")
    if preferred not in implemented:
        return "reference", None
    reason = why_unavailable(preferred, device_type)
    if reason is None:
        return preferred, None
    return "reference", f"{preferred}: {reason}"


def select_backend(op_name: str, device: torch.device, implemented: tuple[str, ...]) -> str:
    """The backend that runs `op_name` on `device`, among the ones the op implements."""
    backend, passed_over = _choose(op_name, device.type, tuple(implemented), forced_backend())
    if passed_over is not None and not torch.compiler.is_compiling() and (op_name, passed_over) not in _warned:
        _warned.add((op_name, passed_over))  # once per op and reason, and never inside a traced region
        warnings.warn(f"maefast: {op_name} falls back to the reference ({passed_over})", RuntimeWarning, stacklevel=3)
    return backend
