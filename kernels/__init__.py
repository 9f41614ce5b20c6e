"""Triton kernels of maefast, installed as `maefast.kernels`.

Only @triton.jit kernels and their plain launchers live here: no nn.Module, no dispatch (that is in
maefast/ops). Importing this package does not import triton; each kernel module does. `interpreting()` is
the one answer to "does Triton run on CPU tensors here" (TRITON_INTERPRET=1), for the kernels and the ops'
backend choice alike.
"""
import os


def interpreting() -> bool:
    """Whether Triton's interpreter runs the kernels, on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"
