"""maefast without its C++ extension (an install where maefast._C could not be built, as on a GPU image
without pybind11): it imports, the GPU paths (the Triton backends, interpreted here) train and embed, the
CPU ops fall back to their reference with a warning, and the image readers are built on first use (with the
pybind11 headers inside torch)."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from maefast.ops.backend import triton_installed

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = textwrap.dedent("""
    import os, sys, warnings
    sys.modules["maefast._C"] = None  # importing it fails, as when it was never built
    sys.modules["pybind11"] = None  # nor is pybind11 installed
    import tests.conftest  # noqa: F401  (the interpreter fix for numpy >= 2.4; run from the repository root)
    import torch
    import maefast
    from maefast.ops.backend import cpp_extension, select_backend
    from maefast.ops.tokenize import IMPLEMENTED
    assert cpp_extension() is None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert select_backend("tokenize", torch.device("cpu"), IMPLEMENTED) == "reference"
    assert any("maefast._C is not built" in str(w.message) for w in caught)
    model = maefast.create_model("mae_vit_debug_patch8_64", in_chans=3, img_size=32)
    maefast.configure_attention(model, "triton")
    pixels = torch.randint(0, 65536, (2, 3, 32, 32), dtype=torch.int32).to(torch.uint16)
    os.environ["MAEFAST_BACKEND"] = "triton"  # what a CUDA device gets
    loss, pred, mask = model(pixels)
    loss.backward()
    assert torch.isfinite(loss) and model.encoder.patch_embed.proj.weight.grad is not None
    with torch.no_grad():
        assert model.embed(pixels).shape == (2, 64)
    import numpy as np, tempfile, tifffile
    from maefast.data import ImageReadError, read_channel
    from maefast.data.decode import ImageSpec, readers
    image = np.arange(12 * 10, dtype=np.uint16).reshape(12, 10)
    path = tempfile.mkdtemp() + "/image.tiff"
    tifffile.imwrite(path, image, compression="zlib", predictor=True)
    assert np.array_equal(read_channel(path), image) and readers().__name__ == "maefast_readers"
    try:
        read_channel(path, spec=ImageSpec((12, 10), np.dtype(np.uint8)))
        raise AssertionError("an image of another dtype was read")
    except ImageReadError as error:
        assert error.kind == "format" and error.reason == "expected 12x10 uint8, one page, found 12x10 uint16"
    print("ok")
""")


@pytest.mark.skipif(not triton_installed(), reason="triton is not installed")
def test_the_gpu_paths_run_without_the_extension():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    result = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stdout + result.stderr
