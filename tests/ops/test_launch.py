"""kernels/_common.launch without autotuning (MAEFAST_AUTOTUNE=0): the preferred configuration is launched, so a
kernel compiles once, and the next one only when the device refuses a configuration for its resources.

The launcher's choices are checked with a kernel stand-in that a device refuses at the large block (what
Triton's OutOfResources reports on a GPU); the real kernels' resources are checked for sm_90 by
sm90_check.py (shared memory, and ptxas's spills for the default configurations)."""
import pytest
import torch

pytest.importorskip("triton")
from triton.runtime.errors import OutOfResources  # noqa: E402

from maefast.kernels import _common  # noqa: E402


class KernelStandIn:
    """kernel[grid](*args, **kwargs): records each launch's BLOCK; a device refuses BLOCK > `fits`."""

    def __init__(self, fits: int):
        self.fits, self.launched = fits, []

    def __getitem__(self, grid):
        def run(*args, BLOCK, **kwargs):
            self.launched.append(BLOCK)
            if BLOCK > self.fits:
                raise OutOfResources(BLOCK * 1024, self.fits * 1024, "shared memory")
        return run


def spec_for(kernel, dtype=torch.float32) -> _common.Launch:
    x = torch.empty(4, dtype=dtype)
    return _common.Launch(kernel, lambda meta: (1,), (x,), {"FLAG": True},
                          [_common.config(BLOCK=256), _common.config(BLOCK=128), _common.config(BLOCK=64)],
                          name="stand_in")


@pytest.fixture
def without_autotuning(monkeypatch):
    monkeypatch.setenv("MAEFAST_AUTOTUNE", "0")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    monkeypatch.setattr(_common, "_launched_config", {})


def test_the_preferred_configuration_launches_alone(without_autotuning):
    kernel = KernelStandIn(fits=1024)
    for _ in range(3):
        _common.launch(spec_for(kernel))
    assert kernel.launched == [256, 256, 256]


def test_a_refused_configuration_falls_back_once_and_is_remembered(without_autotuning):
    kernel = KernelStandIn(fits=128)
    _common.launch(spec_for(kernel))
    _common.launch(spec_for(kernel))
    assert kernel.launched == [256, 128, 128]  # the refused one is not tried again
    _common.launch(spec_for(kernel, torch.bfloat16))  # another specialization starts from the preferred one
    assert kernel.launched[3:] == [256, 128]


def test_no_configuration_that_fits_is_named(without_autotuning):
    with pytest.raises(RuntimeError, match="no launch configuration of stand_in fits"):
        _common.launch(spec_for(KernelStandIn(fits=32)))
