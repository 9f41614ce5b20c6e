"""Backend choice for the fused ops (ARCHITECTURE §3, step 4).

Each op names the backends it implements. The automatic choice is CUDA -> "triton", CPU -> "cpp", else
"reference"; `MAEFAST_BACKEND=reference|triton|cpp` forces one. A forced backend that cannot run raises;
an automatic one that cannot run falls back to the reference and warns once per (op, backend).
"""
from __future__ import annotations

import importlib.util
import os
import warnings
from contextlib import contextmanager
from functools import lru_cache

import torch

from maefast.errors import UserInputError

BACKENDS = ("reference", "triton", "cpp")
_warned: set[tuple[str, str]] = set()


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


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


@lru_cache(maxsize=None)
def triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def cpp_extension():
    """The compiled maefast._C module, or None when it was not built."""
    try:
        from maefast import _C
    except ImportError:
        return None
    return _C


def why_unavailable(backend: str, device: torch.device) -> str | None:
    """None when `backend` can run on tensors of `device`, else the reason it cannot."""
    if backend == "reference":
        return None
    if backend == "cpp":
        if device.type != "cpu":
            return f"the C++ backend runs on CPU tensors, these are on {device}"
        if cpp_extension() is None:
            return "maefast._C is not built (pip install -e . builds it)"
        return None
    if backend == "triton":
        if not triton_installed():
            return "triton is not installed"
        if device.type == "cuda" or (device.type == "cpu" and triton_interpreting()):
            return None
        return f"triton needs CUDA tensors (or TRITON_INTERPRET=1 for CPU tensors), these are on {device}"
    raise UserInputError(f"unknown backend {backend!r}; expected one of {BACKENDS}")


def select_backend(op_name: str, device: torch.device, implemented: tuple[str, ...]) -> str:
    """The backend that runs `op_name` on `device`, among the ones the op implements."""
    forced = forced_backend()
    if forced is not None:
        if forced not in implemented:
            if forced == "cpp" and device.type == "cpu":
                return "reference"  # op has no C++ kernel because the reference is the fast CPU path
            raise RuntimeError(f"MAEFAST_BACKEND={forced} but op {op_name} implements only {implemented}")
        reason = why_unavailable(forced, device)
        if reason is not None:
            raise RuntimeError(f"MAEFAST_BACKEND={forced} cannot run {op_name}: {reason}")
        return forced
    preferred = "triton" if device.type == "cuda" else "cpp" if device.type == "cpu" else "reference"
    if preferred not in implemented:
        return "reference"
    reason = why_unavailable(preferred, device)
    if reason is None:
        return preferred
    if (op_name, preferred) not in _warned:
        _warned.add((op_name, preferred))
        warnings.warn(f"maefast: {op_name} falls back to the reference: {reason}", RuntimeWarning, stacklevel=3)
    return "reference"
