"""Triton kernels of maefast, installed as `maefast.kernels`.

Only @triton.jit kernels and their plain launchers live here: no nn.Module, no dispatch (that is in
maefast/ops). Importing this package does not import triton; each kernel module does.
"""
