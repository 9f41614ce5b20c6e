"""Shared checks of the op tests: which backends run here, poisoned allocations, the bf16 tolerance rule."""
from __future__ import annotations

import contextlib

import pytest
import torch

from maefast.ops.backend import cpp_extension, triton_installed, triton_interpreting


def kernel_backends(*names: str) -> list:
    """pytest params for the fused backends; the ones that cannot run here are skipped, with the reason."""
    params = []
    for name in names:
        if name == "cpp":
            reason = None if cpp_extension() is not None else "maefast._C is not built"
        else:
            ok = triton_installed() and (torch.cuda.is_available() or triton_interpreting())
            reason = None if ok else "triton needs a GPU or TRITON_INTERPRET=1"
        params.append(pytest.param(name, marks=pytest.mark.skipif(reason is not None, reason=reason or "")))
    return params


def device_for(backend: str) -> torch.device:
    if backend == "triton" and torch.cuda.is_available():
        return torch.device("cuda")
    return torch.device("cpu")


@contextlib.contextmanager
def poisoned_allocations():
    """Every torch.empty inside is filled with NaN (floats) or the largest value (integers), so an element a
    kernel forgets to write shows up in the comparison."""
    previous = torch.are_deterministic_algorithms_enabled()
    previous_fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)
        torch.utils.deterministic.fill_uninitialized_memory = previous_fill


def max_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    assert value.shape == exact.shape, (value.shape, exact.shape)
    diff = (value.double() - exact.double()).abs()
    assert not torch.isnan(diff).any(), "NaN in the result (an unwritten or poisoned element)"
    return diff.max().item() if diff.numel() else 0.0


def assert_close_to(value, exact, *, low_precision_reference=None, atol: float = 1e-5, rtol: float = 1e-5,
                    what: str = "") -> None:
    """fp32: |value - exact| <= atol + rtol * |exact|. 16-bit: the error against the fp32 `exact` is at most twice
    the error of `low_precision_reference` (the reference run in the same 16-bit dtype), plus atol."""
    if low_precision_reference is None:
        error = max_error(value, exact)
        bound = atol + rtol * (exact.double().abs().max().item() if exact.numel() else 0.0)
        assert error <= bound, f"{what}: max error {error:.3g} > {bound:.3g}"
        return
    error = max_error(value, exact)
    reference_error = max_error(low_precision_reference, exact)
    bound = 2.0 * reference_error + atol
    assert error <= bound, f"{what}: max error {error:.3g} > 2 x reference's {reference_error:.3g} + {atol:g}"
