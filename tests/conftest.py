"""Test setup shared by every test directory.

Without a GPU the Triton kernels run under TRITON_INTERPRET=1. It must be set before anything imports
triton.language (triton.jit reads it when it decorates, and importing torch._dynamo, which any compile test
does, imports triton.language), so it is set here, first.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import maefast  # noqa: E402
from maefast.data.synthetic import synth_screen  # noqa: E402


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


@pytest.fixture(scope="session")
def screen(tmp_path_factory):
    """A small synthetic RxRx-layout screen shared by the tests (6 channels, 128 px sites, 8-bit)."""
    path = tmp_path_factory.mktemp("screen")
    synth_screen(path, layout="rxrx", num_genes=6, replicates=1, num_plates=1, num_experiments=1,
                 controls_per_plate=2, sites_per_well=2, size=128, channels=6, seed=3, progress=False)
    return path


@pytest.fixture(scope="session")
def screen_encoder(tmp_path_factory):
    """A debug ViT encoder for the screen's 6 channels, saved as a maefast checkpoint folder (a test that changes
    its files works on a copy)."""
    path = tmp_path_factory.mktemp("screen_encoder")
    maefast.save_pretrained(maefast.create_model("vit_debug_patch8_64", in_chans=6), path)
    return path
