"""Test setup shared by every test directory.

Without a GPU the Triton kernels run under TRITON_INTERPRET=1. It must be set before anything imports
triton.language (triton.jit reads it when it decorates, and importing torch._dynamo, which any compile test
does, imports triton.language), so it is set here, first.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from maefast.data.synthetic import synth_screen  # noqa: E402


@pytest.fixture(scope="session")
def screen(tmp_path_factory):
    """A small synthetic RxRx-layout screen shared by the tests (6 channels, 128 px sites, 8-bit)."""
    path = tmp_path_factory.mktemp("screen")
    synth_screen(path, layout="rxrx", num_genes=6, replicates=1, num_plates=1, num_experiments=1,
                 controls_per_plate=2, sites_per_well=2, size=128, channels=6, seed=3, progress=False)
    return path
