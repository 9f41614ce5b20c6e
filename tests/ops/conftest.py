"""Test setup for the ops: the interpreter fix for triton 3.6 (tests/conftest.py sets TRITON_INTERPRET=1
when there is no GPU) and a fixed seed per test.
"""
import os

import numpy as np
import pytest
import torch


def _numpy_refuses_array_to_int() -> bool:
    try:
        int(np.array([1]))
    except TypeError:
        return True
    return False


def _install_interpreter_index_fix() -> None:
    """triton 3.6's interpreter turns loop bounds into ints with int(array of shape (1,)), which numpy >= 2.4
    refuses (triton-lang/triton#9171, fixed upstream by #9172). Until the fixed triton is the pinned one,
    re-register tensor.__index__ the way the upstream fix does, inside the interpreter's own patch scope."""
    try:
        from triton.runtime import interpreter
    except ImportError:
        return
    original = interpreter._patch_lang_tensor
    if getattr(original, "maefast_index_fix", False):
        return

    def patch_lang_tensor(tensor, scope):
        original(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(-1)[0]))

    patch_lang_tensor.maefast_index_fix = True
    interpreter._patch_lang_tensor = patch_lang_tensor


if os.environ.get("TRITON_INTERPRET") == "1" and _numpy_refuses_array_to_int():
    _install_interpreter_index_fix()


@pytest.fixture(autouse=True)
def _seeded():
    torch.manual_seed(1234)
    yield
